"""`madapt apply`: write a store's tables through an adaptor, one column per size.

Each table is streamed (``Store.iter_batches`` -> transform -> ``Store.write_table``), so
memory does not grow with the table. The output store is built in a temporary sibling
directory and renamed into place at the end: a failed run leaves no partial OUT. OUT is
checked before anything is read (:func:`madapt_cli.util.files.check_output`): it may not be, hold or
lie inside the adaptor or the store, and only a store madapt wrote is replaced, with
``overwrite``. Every vector read is checked (finite, non-zero) before it is transformed.

``precision`` chooses what each size stores (:mod:`madapt_cli.store.precision`): float32
``vector_<d>`` (the default), float16 ``vector_<d>_float16``, int8 codes ``vector_<d>_int8``
or packed sign bits ``vector_<d>_binary``. int8 needs per-dimension ranges: they are fitted
once, before anything is written, on the adapted prefixes of the source's corpus table (or
read from ``calibration_from``), and recorded in every table's metadata, so the queries
table and `madapt encode` code queries with the corpus' ranges.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from madapt_cli.errors import InputError, StoreError
from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.retrieval.int2 import Int2Calibration, fit_int2_calibration
from madapt_cli.retrieval.quantize import Int8Calibration, fit_int8_calibration
from madapt_cli.store.base import (
    FORMATS,
    METADATA_KEY,
    VECTOR_COLUMN,
    arrow_to_vectors,
    open_store,
    require_raw_vectors,
    vectors_to_arrow,
)
from madapt_cli.store.precision import (
    CALIBRATION_KEY,
    INT2_CALIBRATION_KEY,
    bytes_per_vector,
    calibration_record,
    check_calibration_for,
    check_precision_sizes,
    codes_to_arrow,
    column_type,
    encode_prefix,
    load_calibration,
    parse_precisions,
    read_calibration,
)
from madapt_cli.store.precision import column_name as precision_column
from madapt_cli.util.dims import parse_dims
from madapt_cli.util.files import check_output, staged_output
from madapt_cli.util.progress import Progress, ProgressEvent, report
from madapt_cli.util.vectors import check_vectors

#: columns copied from the input as they are, when it has them
KEPT_COLUMNS = ("text_sha256", "text")
DTYPES = ("float32", "float16")
#: at most this many corpus rows (evenly spaced) fit the int8 ranges
CALIBRATION_ROWS = 200_000


def column_name(dim: int, precision: str = "float32") -> str:
    """``vector_<d>`` (float32, or ``--dtype float16``), else ``vector_<d>_<precision>``."""
    return precision_column(dim, precision)


def transform_sizes(
    adaptor: Adaptor, vectors: np.ndarray, dims: Sequence[int]
) -> dict[int, np.ndarray]:
    """f applied once (and the start once, for sizes the adaptor gives from its start: see
    :meth:`Adaptor.keeps_start`), then each prefix re-normalised: dim -> (N, dim) float32.
    Each prefix is cut from the unnormalised vectors, as :meth:`Adaptor.transform` cuts it,
    so the two agree to the bit (int8/int2 ranges fitted on either are the same)."""
    tensor = torch.tensor(np.asarray(vectors, np.float32))
    full: dict[bool, torch.Tensor] = {}
    with torch.no_grad():
        for d in dims:
            kind = adaptor.keeps_start(d)
            if kind not in full:
                full[kind] = adaptor.full_vectors(tensor, d)
        return {
            d: torch.nn.functional.normalize(full[adaptor.keeps_start(d)][:, :d], dim=-1).numpy()
            for d in dims
        }


@dataclass
class ApplySummary:
    """What `madapt apply` wrote: the store, the sizes, the adaptor and rows per table."""

    out: str
    dims: list[int]
    adaptor: str
    tables: dict[str, int] = field(default_factory=dict)
    precisions: list[str] = field(default_factory=lambda: ["float32"])
    #: column -> exact bytes of one stored vector
    bytes_per_vector: dict[str, int] = field(default_factory=dict)
    #: where the int8 ranges come from (None without int8)
    calibration: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ApplyPlan:
    """What `madapt apply` checked and decided before writing anything (see
    :func:`plan_apply`); the local engine and ``--engine ray`` write from the same plan."""

    adaptor: Adaptor
    source: Any
    sizes: list[int]
    names: list[str]
    codes: Coding
    summary: ApplySummary
    out: Path
    overwrite: bool
    format: str | None
    inputs: tuple[str | Path, ...]

    def schema(self, name: str) -> pa.Schema:
        """Table ``name``'s output schema (its metadata holds the adaptor and the ranges)."""
        return output_schema(
            self.source.schema(name),
            self.source.metadata(name),
            self.adaptor,
            self.sizes,
            self.codes.dtype,
            self.codes,
        )

    def where(self, name: str) -> str:
        return f"table '{name}' of {self.source.path}"

    def write(
        self,
        batches: Callable[[str, pa.Schema], Iterator[pa.RecordBatch]],
        progress: Progress | None = None,
    ) -> ApplySummary:
        """Each table's ``batches(name, schema)`` into the staged output, published whole at
        the end (a killed run leaves no output)."""
        inputs = self.inputs
        with staged_output(self.out, "store", overwrite=self.overwrite, inputs=inputs) as staging:
            target = open_store(staging, format=self.format or self.source.format, create=True)
            for name in self.names:
                schema = self.schema(name)
                written = batches(name, schema)
                if progress is not None:
                    total = self.source.num_rows(name)
                    written = reported(written, progress, f"apply {name}", total)
                self.summary.tables[name] = target.write_table(name, schema, written)
        return self.summary


def plan_apply(  # noqa: PLR0913 - the keyword API behind `madapt apply`
    adaptor_path: str | Path,
    store_path: str | Path,
    dims: str | Sequence[int],
    out: str | Path,
    *,
    format: str | None = None,
    tables: Sequence[str] | None = None,
    chunk_rows: int = 65_536,
    overwrite: bool = False,
    dtype: str = "float32",
    precision: str | Sequence[str] = "float32",
    calibration: str = "minmax",
    calibration_from: str | Path | None = None,
) -> ApplyPlan:
    """Every check of :func:`apply_adaptor`, in its order, and the int8 ranges: raises
    before anything is written or dispatched."""
    check_output(Path(out), "store", overwrite=overwrite, inputs=(adaptor_path, store_path))
    adaptor = Adaptor.load(adaptor_path)
    source = open_store(store_path)
    sizes = parse_dims(dims, adaptor.dimension)
    precisions = parse_precisions(precision)
    check_precision_sizes(precisions, sizes, "--precision")
    _check_options(format, chunk_rows, dtype)
    if "int8" in precisions and calibration_from is None:
        try:  # a bad method fails before the corpus is read
            fit_int8_calibration(np.zeros((1, 1), np.float32), calibration)
        except InputError as error:
            raise InputError(f"--calibration: {error}") from None
    names = list(tables) if tables else source.tables()
    if not names:
        raise StoreError(f"store {store_path} has no tables")
    for name in names:  # check everything before writing anything
        source.require_table(name)
        require_raw_vectors(source, name, "`madapt apply`")
        adaptor.check_vectors_metadata(source.metadata(name), f"table '{name}' of {store_path}")
    codes = Coding(precisions, dtype)
    if "int8" in precisions or "int2" in precisions:
        codes.calibrate(adaptor, source, sizes, calibration, calibration_from, chunk_rows)
    summary = ApplySummary(
        out=str(out),
        dims=sizes,
        adaptor=adaptor.name,
        precisions=precisions,
        bytes_per_vector={
            column_name(d, p): bytes_per_vector(p if p != "float32" else dtype, d)
            for d in sizes
            for p in precisions
        },
        calibration=codes.source,
    )
    inputs = (adaptor_path, store_path)
    return ApplyPlan(
        adaptor, source, sizes, names, codes, summary, Path(out), overwrite, format, inputs
    )


def apply_adaptor(  # noqa: PLR0913 - the keyword API behind `madapt apply`
    adaptor_path: str | Path,
    store_path: str | Path,
    dims: str | Sequence[int],
    out: str | Path,
    *,
    format: str | None = None,
    tables: Sequence[str] | None = None,
    chunk_rows: int = 65_536,
    overwrite: bool = False,
    progress: Progress | None = None,
    dtype: str = "float32",
    precision: str | Sequence[str] = "float32",
    calibration: str = "minmax",
    calibration_from: str | Path | None = None,
) -> ApplySummary:
    """Write every table (or ``tables``) of ``store_path`` into a new store ``out`` with
    columns ``id``, ``text_sha256`` and ``text`` (when present) and, for each size and each
    of ``precision`` (one name or a list: float32, float16, int8, binary), its column; the
    float32 column stored as ``dtype`` (float32 or float16; computed in float32 either way).
    int8 ranges: fitted with ``calibration`` ("minmax" or "percentile:P") on the source's
    corpus table, or read from ``calibration_from`` (an applied store or a JSON file).
    ``progress`` gets ProgressEvent(task="apply <table>", unit="rows") per chunk."""
    plan = plan_apply(
        adaptor_path,
        store_path,
        dims,
        out,
        format=format,
        tables=tables,
        chunk_rows=chunk_rows,
        overwrite=overwrite,
        dtype=dtype,
        precision=precision,
        calibration=calibration,
        calibration_from=calibration_from,
    )
    return plan.write(
        lambda name, schema: adapted_batches(
            plan.source, name, plan.adaptor, plan.sizes, schema, chunk_rows, plan.where(name)
        ),
        progress,
    )


def _check_options(format: str | None, chunk_rows: int, dtype: str) -> None:
    if format is not None and format not in FORMATS:
        raise InputError(f"unknown --format {format!r}: use {', '.join(FORMATS)}")
    if chunk_rows < 1:
        raise InputError(f"--chunk-rows {chunk_rows}: must be at least 1 row")
    if dtype not in DTYPES:
        raise InputError(f"--dtype must be float32 or float16, not {dtype!r}")


@dataclass
class Coding:
    """The precisions one apply writes, with the int8 ranges (and int2 levels) per size when
    int8 (int2) is one."""

    precisions: list[str]
    dtype: str = "float32"
    calibrations: dict[int, Int8Calibration] = field(default_factory=dict)
    source: str | None = None
    rows: int = 0
    int2: dict[int, Int2Calibration] = field(default_factory=dict)

    def calibrate(
        self,
        adaptor: Adaptor,
        store: Any,
        dims: list[int],
        method: str,
        calibration_from: str | Path | None,
        chunk_rows: int,
    ) -> None:
        """Read the ranges (levels) from ``calibration_from``, or fit them on ``store``'s
        corpus."""
        if calibration_from is not None:
            where = f"--calibration-from {calibration_from}"
            for precision, key in (("int8", CALIBRATION_KEY), ("int2", INT2_CALIBRATION_KEY)):
                if precision not in self.precisions:
                    continue
                found, metadata = load_calibration(calibration_from, key=key)
                check_calibration_for(found, metadata, adaptor.fingerprint, dims, where)
                record = metadata[key]
                if precision == "int8":
                    self.calibrations = {d: found[d] for d in dims}
                else:
                    self.int2 = {d: found[d] for d in dims}
                self.source = str(record.get("fitted_on", calibration_from))
                self.rows = int(record.get("rows") or 0)
            return
        coded = " and ".join(p for p in ("int8", "int2") if p in self.precisions)
        if not store.has_table("corpus"):
            raise InputError(
                f"--precision {coded} fits its ranges on the corpus table, and {store.path} "
                "has none: pass --calibration-from an applied store or a calibration file"
            )
        require_raw_vectors(store, "corpus", f"`madapt apply --precision {coded}`")
        prefixes = _calibration_sample(adaptor, store, dims, chunk_rows)
        if "int8" in self.precisions:
            self.calibrations = {d: fit_int8_calibration(prefixes[d], method) for d in dims}
        if "int2" in self.precisions:
            self.int2 = {d: fit_int2_calibration(prefixes[d]) for d in dims}
        self.source = f"table 'corpus' of {store.path}"
        self.rows = len(prefixes[dims[0]])

    def metadata(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.calibrations:
            found[CALIBRATION_KEY] = calibration_record(self.calibrations, self.source, self.rows)
        if self.int2:
            found[INT2_CALIBRATION_KEY] = calibration_record(self.int2, self.source, self.rows)
        return found

    def arrays(self, sized: dict[int, np.ndarray], dims: list[int]) -> list[pa.Array]:
        """The columns of one batch, in :func:`output_schema`'s order."""
        arrays = []
        for d in dims:
            for p in self.precisions:
                if p == "float32":
                    arrays.append(vectors_to_arrow(sized[d], self.dtype))
                else:
                    calibration = (self.int2 if p == "int2" else self.calibrations).get(d)
                    arrays.append(codes_to_arrow(encode_prefix(sized[d], p, calibration)))
        return arrays


def _calibration_sample(
    adaptor: Adaptor, store: Any, dims: list[int], chunk_rows: int
) -> dict[int, np.ndarray]:
    """The adapted unit prefixes of the corpus table (every row, or at most
    :data:`CALIBRATION_ROWS` evenly spaced ones), per size."""
    total = store.num_rows("corpus")
    stride = max(1, -(-total // CALIBRATION_ROWS))
    parts: dict[int, list[np.ndarray]] = {d: [] for d in dims}
    seen = 0
    where = f"table 'corpus' of {store.path}"
    for ids, vectors in store.iter_vectors("corpus", batch_rows=chunk_rows):
        del ids
        keep = np.arange((-seen) % stride, len(vectors), stride)
        seen += len(vectors)
        if len(keep):
            for d, prefix in transform_sizes(adaptor, vectors[keep], dims).items():
                parts[d].append(prefix)
    if not seen:
        raise InputError(f"{where} is empty: no rows to fit the int8 ranges on")
    return {d: np.concatenate(p) for d, p in parts.items()}


def adaptor_metadata(adaptor: Adaptor) -> dict[str, Any]:
    """What a table of adapted vectors records about the adaptor that made them."""
    return {
        "name": adaptor.name,
        "method": adaptor.method,
        "fingerprint": adaptor.fingerprint,  # config + weights
        "training_data_sha256": adaptor.training_data_sha256,
        "madapt_version": adaptor.config.get("madapt_version"),
    }


def adapted_metadata(
    metadata: dict[str, Any],
    adaptor: Adaptor,
    dims: list[int],
    dtype: str = "float32",
    codes: Coding | None = None,
) -> dict[str, Any]:
    """A table's metadata once its vectors went through ``adaptor`` at sizes ``dims``
    (and, with ``codes``, in its precisions, with the int8 ranges)."""
    codes = codes or Coding(["float32"], dtype)
    columns = {
        column_name(d, p): {
            "dim": d,
            "precision": dtype if p == "float32" else p,
            "bytes": bytes_per_vector(dtype if p == "float32" else p, d),
        }
        for d in dims
        for p in codes.precisions
    }
    return {
        **metadata,
        "dimension": max(dims),
        "source_dimension": adaptor.dimension,
        "dims": dims,
        "normalized": True,
        "dtype": dtype,
        "precisions": codes.precisions,
        "vector_columns": {name: column["dim"] for name, column in columns.items()},
        "columns": columns,
        **codes.metadata(),
        "adaptor": adaptor_metadata(adaptor),
    }


def output_schema(
    source: pa.Schema,
    metadata: dict[str, Any],
    adaptor: Adaptor,
    dims: list[int],
    dtype: str = "float32",
    codes: Coding | None = None,
) -> pa.Schema:
    codes = codes or Coding(["float32"], dtype)
    fields = [pa.field("id", pa.string(), nullable=False)]
    fields += [pa.field(name, pa.string()) for name in KEPT_COLUMNS if name in source.names]
    fields += [
        pa.field(column_name(d, p), column_type(d, p, dtype))
        for d in dims
        for p in codes.precisions
    ]
    extended = adapted_metadata(metadata, adaptor, dims, dtype, codes)
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(extended, sort_keys=True).encode()})


def _coding_of(schema: pa.Schema) -> Coding:
    """The Coding an :func:`output_schema` describes (its metadata holds the ranges)."""
    metadata = json.loads(schema.metadata[METADATA_KEY])
    codes = Coding(
        list(metadata.get("precisions") or ["float32"]), metadata.get("dtype", "float32")
    )
    if CALIBRATION_KEY in metadata:
        codes.calibrations = read_calibration(metadata[CALIBRATION_KEY], "apply")
    if INT2_CALIBRATION_KEY in metadata:
        codes.int2 = read_calibration(metadata[INT2_CALIBRATION_KEY], "apply", INT2_CALIBRATION_KEY)
    return codes


def adapted_batches(
    source: Any,
    name: str,
    adaptor: Adaptor,
    dims: list[int],
    schema: pa.Schema,
    chunk_rows: int,
    where: str,
) -> Iterator[pa.RecordBatch]:
    """Table ``name`` of ``source`` adapted batch by batch into ``schema``: the vector check,
    the transform, the columns of every size and precision. The one per-batch path of both
    engines (``--engine ray`` runs it in its actors)."""
    kept = [column for column in KEPT_COLUMNS if column in schema.names]
    codes = _coding_of(schema)
    for batch in source.iter_batches(
        name, columns=["id", *kept, VECTOR_COLUMN], batch_rows=chunk_rows
    ):
        vectors = arrow_to_vectors(batch.column(VECTOR_COLUMN))
        check_vectors(vectors, _Ids(batch.column("id")), where)
        sized = transform_sizes(adaptor, vectors, dims)
        arrays = [batch.column("id"), *(batch.column(k) for k in kept)]
        arrays += codes.arrays(sized, dims)
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def reported(
    batches: Iterator[pa.RecordBatch], progress: Progress, task: str, total: int
) -> Iterator[pa.RecordBatch]:
    """``batches``, reporting the rows written so far after each (and a last, finished
    event once they are all written)."""
    done = 0
    for batch in batches:
        yield batch
        done += batch.num_rows
        report(progress, ProgressEvent(task, done, total))
    report(progress, ProgressEvent(task, done, total, finished=True))


class _Ids(Sequence[str]):
    """A batch's id column read one value at a time: only the id of a bad row is needed."""

    def __init__(self, column: pa.Array) -> None:
        self._column = column

    def __len__(self) -> int:
        return len(self._column)

    def __getitem__(self, index):  # type: ignore[override]
        return self._column[index].as_py()
