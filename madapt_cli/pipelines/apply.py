"""`madapt apply`: write a store's tables through an adaptor, one column per size.

Each table is streamed (``Store.iter_batches`` -> transform -> ``Store.write_table``), so
memory does not grow with the table. The output store is built in a temporary sibling
directory and renamed into place at the end: a failed run leaves no partial OUT. OUT is
checked before anything is read (:func:`madapt_cli.util.files.check_output`): it may not be, hold or
lie inside the adaptor or the store, and only a store madapt wrote is replaced, with
``overwrite``. Every vector read is checked (finite, non-zero) before it is transformed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from madapt_cli.errors import InputError, StoreError
from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.store.base import (
    FORMATS,
    METADATA_KEY,
    VECTOR_COLUMN,
    arrow_to_vectors,
    open_store,
    require_raw_vectors,
    vector_type,
    vectors_to_arrow,
)
from madapt_cli.util.dims import parse_dims
from madapt_cli.util.files import check_output, staged_output
from madapt_cli.util.progress import Progress, ProgressEvent, report
from madapt_cli.util.vectors import check_vectors

#: columns copied from the input as they are, when it has them
KEPT_COLUMNS = ("text_sha256", "text")
DTYPES = ("float32", "float16")


def column_name(dim: int) -> str:
    return f"{VECTOR_COLUMN}_{dim}"


def transform_sizes(
    adaptor: Adaptor, vectors: np.ndarray, dims: Sequence[int]
) -> dict[int, np.ndarray]:
    """f applied once, then each prefix re-normalised: dim -> (N, dim) float32."""
    with torch.no_grad():
        adapted = adaptor.module(
            torch.nn.functional.normalize(torch.tensor(np.asarray(vectors, np.float32)), dim=-1)
        )
        return {d: torch.nn.functional.normalize(adapted[:, :d], dim=-1).numpy() for d in dims}


@dataclass
class ApplySummary:
    """What `madapt apply` wrote: the store, the sizes, the adaptor and rows per table."""

    out: str
    dims: list[int]
    adaptor: str
    tables: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
) -> ApplySummary:
    """Write every table (or ``tables``) of ``store_path`` into a new store ``out`` with
    columns ``id``, ``text_sha256`` and ``text`` (when present) and ``vector_<d>`` for each
    size, stored as ``dtype`` (float32 or float16; computed in float32 either way).
    ``progress`` gets ProgressEvent(task="apply <table>", unit="rows") per chunk."""
    out = Path(out)
    inputs = (adaptor_path, store_path)
    check_output(out, "store", overwrite=overwrite, inputs=inputs)
    adaptor = Adaptor.load(adaptor_path)
    source = open_store(store_path)
    sizes = parse_dims(dims, adaptor.dimension)
    if format is not None and format not in FORMATS:
        raise InputError(f"unknown --format {format!r}: use {', '.join(FORMATS)}")
    if chunk_rows < 1:
        raise InputError(f"--chunk-rows {chunk_rows}: must be at least 1 row")
    if dtype not in DTYPES:
        raise InputError(f"--dtype must be float32 or float16, not {dtype!r}")
    names = list(tables) if tables else source.tables()
    if not names:
        raise StoreError(f"store {store_path} has no tables")
    for name in names:  # check everything before writing anything
        source.require_table(name)
        require_raw_vectors(source, name, "`madapt apply`")
        adaptor.check_vectors_metadata(source.metadata(name), f"table '{name}' of {store_path}")
    summary = ApplySummary(out=str(out), dims=sizes, adaptor=adaptor.name)
    with staged_output(out, "store", overwrite=overwrite, inputs=inputs) as staging:
        target = open_store(staging, format=format or source.format, create=True)
        for name in names:
            schema = output_schema(
                source.schema(name), source.metadata(name), adaptor, sizes, dtype
            )
            where = f"table '{name}' of {store_path}"
            batches = _adapted_batches(source, name, adaptor, sizes, schema, chunk_rows, where)
            if progress is not None:
                batches = _reported(batches, progress, f"apply {name}", source.num_rows(name))
            summary.tables[name] = target.write_table(name, schema, batches)
    return summary


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
    metadata: dict[str, Any], adaptor: Adaptor, dims: list[int], dtype: str = "float32"
) -> dict[str, Any]:
    """A table's metadata once its vectors went through ``adaptor`` at sizes ``dims``."""
    return {
        **metadata,
        "dimension": max(dims),
        "source_dimension": adaptor.dimension,
        "dims": dims,
        "normalized": True,
        "dtype": dtype,
        "vector_columns": {column_name(d): d for d in dims},
        "adaptor": adaptor_metadata(adaptor),
    }


def output_schema(
    source: pa.Schema,
    metadata: dict[str, Any],
    adaptor: Adaptor,
    dims: list[int],
    dtype: str = "float32",
) -> pa.Schema:
    fields = [pa.field("id", pa.string(), nullable=False)]
    fields += [pa.field(name, pa.string()) for name in KEPT_COLUMNS if name in source.names]
    fields += [pa.field(column_name(d), vector_type(d, dtype)) for d in dims]
    extended = adapted_metadata(metadata, adaptor, dims, dtype)
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(extended, sort_keys=True).encode()})


def _adapted_batches(
    source: Any,
    name: str,
    adaptor: Adaptor,
    dims: list[int],
    schema: pa.Schema,
    chunk_rows: int,
    where: str,
) -> Iterator[pa.RecordBatch]:
    kept = [column for column in KEPT_COLUMNS if column in schema.names]
    float16 = schema.field(column_name(dims[0])).type.value_type == pa.float16()
    dtype = "float16" if float16 else "float32"
    for batch in source.iter_batches(
        name, columns=["id", *kept, VECTOR_COLUMN], batch_rows=chunk_rows
    ):
        vectors = arrow_to_vectors(batch.column(VECTOR_COLUMN))
        check_vectors(vectors, _Ids(batch.column("id")), where)
        sized = transform_sizes(adaptor, vectors, dims)
        arrays = [batch.column("id"), *(batch.column(k) for k in kept)]
        arrays += [vectors_to_arrow(sized[d], dtype) for d in dims]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def _reported(
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
