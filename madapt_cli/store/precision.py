"""Stored precisions of adapted vectors: column names and types, codes, int8 calibration.

`madapt apply --precision` writes each size m in one or more precisions:

==========  ===========================  =========================  ==================
precision   column                       Arrow type                 bytes per vector
==========  ===========================  =========================  ==================
float32     ``vector_<m>``               FixedSizeList<float32>[m]  4 m
float16     ``vector_<m>_float16``       FixedSizeList<float16>[m]  2 m
int8        ``vector_<m>_int8``          FixedSizeList<int8>[m]     m
int2        ``vector_<m>_int2``          FixedSizeList<uint8>[m/4]  m / 4
binary      ``vector_<m>_binary``        FixedSizeList<uint8>[m/8]  m / 8
==========  ===========================  =========================  ==================

Every code is made from the unit prefix ``v_m`` (the first m adapted coordinates,
re-normalised): binary as its sign bits (``quantize.pack_binary``: bit 1 where v > 0, packed
big-endian, 8 to a byte, so m must be a multiple of 8); int8 as
``quantize.quantize_int8(v_m, calibration_m)`` with per-dimension ranges fitted once on the
corpus table's ``v_m`` and recorded in the table metadata (``int8_calibration``), so the
queries of every table, and those `madapt encode` makes later, get the corpus' codes. int2
likewise (``retrieval/int2.py``: per-coordinate Lloyd-Max levels fitted on the corpus'
``v_m``, recorded as ``int2_calibration``; 4 codes a byte, so m must be a multiple of 4).
``vector_<m>`` keeps its name (and ``--dtype``) from earlier releases.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from madapt_cli.errors import InputError
from madapt_cli.retrieval import int2, quantize

PRECISIONS: tuple[str, ...] = quantize.PRECISIONS
_SUFFIX = {
    "float32": "",
    "float16": "_float16",
    "int8": "_int8",
    "int2": "_int2",
    "binary": "_binary",
}
_VALUE_TYPES = {
    "float32": pa.float32(),
    "float16": pa.float16(),
    "int8": pa.int8(),
    "int2": pa.uint8(),
    "binary": pa.uint8(),
}
#: the metadata key of the int8 calibration
CALIBRATION_KEY = "int8_calibration"
#: the metadata key of the int2 calibration
INT2_CALIBRATION_KEY = "int2_calibration"
#: values per byte of the packed precisions
_PER_BYTE = {"binary": 8, "int2": 4}


def parse_precisions(spec: str | Sequence[str], option: str = "--precision") -> list[str]:
    """``"int8,binary"`` (or a list) -> ["int8", "binary"]: known, none twice, in order."""
    names = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec)]
    chosen: list[str] = []
    for name in names:
        if name not in PRECISIONS:
            raise InputError(f"{option} {name!r}: use {', '.join(PRECISIONS)}")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise InputError(f"{option}: name at least one of {', '.join(PRECISIONS)}")
    return chosen


def check_precision_sizes(precisions: Sequence[str], dims: Sequence[int], option: str) -> None:
    """Binary codes pack 8 signs a byte, int2 4 codes: every size must be a multiple."""
    for precision, count in _PER_BYTE.items():
        if precision in precisions:
            odd = [d for d in dims if d % count]
            if odd:
                raise InputError(
                    f"{option} {precision} packs {count} dimensions a byte: size {odd[0]} is "
                    f"not a multiple of {count} (choose sizes such as 64, 128, 256)"
                )


def column_name(dim: int, precision: str = "float32") -> str:
    return f"vector_{dim}{_SUFFIX[precision]}"


def column_type(dim: int, precision: str = "float32", dtype: str = "float32") -> pa.DataType:
    """The column of size ``dim`` in ``precision`` (``dtype``: the float32 column's type)."""
    if precision == "float32":
        precision = dtype
    width = dim // _PER_BYTE.get(precision, 1)
    return pa.list_(_VALUE_TYPES[precision], width)


def bytes_per_vector(precision: str, dim: int) -> int:
    return quantize.bytes_per_vector(precision, dim)


def encode_prefix(
    prefix: np.ndarray,
    precision: str,
    calibration: quantize.Int8Calibration | int2.Int2Calibration | None = None,
) -> np.ndarray:
    """Unit prefixes (N, m) float32 -> what a ``precision`` column stores: float32/float16
    values, int8 codes or packed int2 codes (N, m/4) (each needs the size's
    ``calibration``), or packed sign bits (N, m/8)."""
    if precision == "float32":
        return np.asarray(prefix, np.float32)
    if precision == "float16":
        return np.asarray(prefix, np.float16)
    if precision == "binary":
        return quantize.pack_binary(prefix)
    if precision == "int2":
        if not isinstance(calibration, int2.Int2Calibration):
            raise InputError("int2 codes need the corpus calibration (--calibration-from)")
        return int2.quantize_int2(prefix, calibration)
    if not isinstance(calibration, quantize.Int8Calibration):
        raise InputError("int8 codes need the corpus calibration (--calibration-from)")
    return quantize.quantize_int8(prefix, calibration)


def codes_to_arrow(values: np.ndarray) -> pa.FixedSizeListArray:
    """An (N, w) array of any numeric dtype as a FixedSizeList column of that dtype."""
    flat = np.ascontiguousarray(values).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), values.shape[1])


# --- calibration ---------------------------------------------------------------------------
def calibration_record(
    calibrations: Mapping[int, quantize.Int8Calibration | int2.Int2Calibration],
    source: str | None,
    rows: int,
) -> dict[str, Any]:
    """The metadata entry: per size its per-dimension ranges, where they were fitted."""
    return {
        "fitted_on": source,
        "rows": rows,
        "sizes": {str(m): c.to_dict() for m, c in sorted(calibrations.items())},
    }


def read_calibration(
    record: Mapping[str, Any], where: str, key: str = CALIBRATION_KEY
) -> dict[int, Any]:
    """size -> calibration from a :func:`calibration_record` stored under ``key`` (int8's
    or int2's; an InputError naming ``where``)."""
    kind = int2.Int2Calibration if key == INT2_CALIBRATION_KEY else quantize.Int8Calibration
    try:
        sizes = record["sizes"]
        return {int(m): kind.from_dict(c) for m, c in sizes.items()}
    except InputError as error:
        raise InputError(f"{where}: {error}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        name = "int2" if key == INT2_CALIBRATION_KEY else "int8"
        raise InputError(f"{where}: unreadable {name} calibration ({error})") from None


def load_calibration(
    path: str | Path, table: str | None = None, key: str = CALIBRATION_KEY
) -> tuple[dict[int, Any], dict[str, Any]]:
    """(size -> calibration, the metadata it came with) from an applied store (its ``table``,
    by default the first table holding one, ``corpus`` first) or a JSON file: a table's
    metadata (``madapt info --json``'s ``metadata``) or its ``int8_calibration`` alone.
    ``key``: :data:`CALIBRATION_KEY` (int8) or :data:`INT2_CALIBRATION_KEY`."""
    name = "int2" if key == INT2_CALIBRATION_KEY else "int8"
    path = Path(path)
    if path.is_dir():
        from madapt_cli.store.base import open_store

        store = open_store(path)
        names = [table] if table else sorted(store.tables(), key=lambda n: n != "corpus")
        for table_name in names:
            store.require_table(table_name)
            metadata = store.metadata(table_name)
            if key in metadata:
                where = f"table '{table_name}' of {path}"
                return read_calibration(metadata[key], where, key), metadata
        raise InputError(f"{path} holds no {name} calibration: apply with --precision {name}")
    loaded = _json_calibration(path)
    metadata = loaded if key in loaded else {key: loaded}
    return read_calibration(metadata[key], str(path), key), metadata


def calibration_keys(path: str | Path) -> list[str]:
    """Which calibrations (:data:`CALIBRATION_KEY`, :data:`INT2_CALIBRATION_KEY`) the applied
    store or JSON file ``path`` holds, for :func:`load_calibration`; a JSON object holding
    neither key is an int8 calibration alone."""
    keys = (CALIBRATION_KEY, INT2_CALIBRATION_KEY)
    path = Path(path)
    if path.is_dir():
        from madapt_cli.store.base import open_store

        store = open_store(path)
        held = {key for name in store.tables() for key in keys if key in store.metadata(name)}
        return [key for key in keys if key in held]
    loaded = _json_calibration(path)
    return [key for key in keys if key in loaded] or [CALIBRATION_KEY]


def _json_calibration(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"--calibration-from {path}: no such store or file")
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a JSON calibration ({error})") from None
    if not isinstance(loaded, dict):
        raise InputError(f"{path}: not a JSON calibration (expected an object)")
    return loaded


def check_calibration_for(
    calibrations: Mapping[int, Any],
    metadata: Mapping[str, Any],
    fingerprint: str,
    dims: Sequence[int],
    where: str,
) -> None:
    """Refuse a calibration of another adaptor (when it records one) or without a size."""
    recorded = (metadata.get("adaptor") or {}).get("fingerprint")
    if recorded is not None and recorded != fingerprint:
        raise InputError(
            f"{where}: its {_kind(calibrations)} calibration was fitted for another adaptor "
            f"(fingerprint {recorded[:12]}, not {fingerprint[:12]})"
        )
    missing = [d for d in dims if d not in calibrations]
    if missing:
        have = ", ".join(str(m) for m in sorted(calibrations)) or "none"
        raise InputError(
            f"{where}: no {_kind(calibrations)} calibration for size {missing[0]} (it has {have})"
        )


def _kind(calibrations: Mapping[int, Any]) -> str:
    first = next(iter(calibrations.values()), None)
    return "int2" if isinstance(first, int2.Int2Calibration) else "int8"


def code_columns(metadata: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """An applied table's columns (from its metadata) -> {"dim", "precision", "bytes"}."""
    columns = metadata.get("columns")
    if isinstance(columns, dict):
        return {str(k): dict(v) for k, v in columns.items() if isinstance(v, dict)}
    return {}
