"""`madapt apply`: write a store's tables through an adaptor, one column per size.

Each table is streamed (``Store.iter_batches`` -> transform -> ``Store.write_table``), so
memory does not grow with the table. The output store is built in a temporary sibling
directory and renamed into place at the end: a failed run leaves no partial OUT.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from madapt_cli.adaptor import Adaptor
from madapt_cli.errors import InputError, StoreError
from madapt_cli.evaluation import parse_dims
from madapt_cli.files import replace_directory
from madapt_cli.stores import (
    FORMATS,
    METADATA_KEY,
    VECTOR_COLUMN,
    arrow_to_vectors,
    open_store,
    vector_type,
    vectors_to_arrow,
)

ProgressCallback = Callable[[str, int], None]


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


def apply_adaptor(
    adaptor_path: str | Path,
    store_path: str | Path,
    dims: str | Sequence[int],
    out: str | Path,
    *,
    format: str | None = None,
    tables: Sequence[str] | None = None,
    chunk_rows: int = 65_536,
    overwrite: bool = False,
    on_progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Write every table (or ``tables``) of ``store_path`` into a new store ``out`` with
    columns ``id``, ``text_sha256`` (when present) and ``vector_<d>`` for each size."""
    adaptor = Adaptor.load(adaptor_path)
    source = open_store(store_path)
    sizes = parse_dims(dims, adaptor.dimension)
    if format is not None and format not in FORMATS:
        raise InputError(f"unknown --format {format!r}: use {', '.join(FORMATS)}")
    if chunk_rows < 1:
        raise InputError("chunk size must be at least 1 row")
    names = list(tables) if tables else source.tables()
    if not names:
        raise StoreError(f"store {store_path} has no tables")
    for name in names:  # check everything before writing anything
        source.require_table(name)
        if VECTOR_COLUMN not in source.schema(name).names:
            raise StoreError(f"table '{name}' of {store_path} has no '{VECTOR_COLUMN}' column")
        adaptor.check_compatible(source.metadata(name), f"table '{name}' of {store_path}")
    out = Path(out)
    if out.resolve() == Path(store_path).resolve():
        raise InputError("--out must differ from the input store")
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; remove it or pass --overwrite")

    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"
    summary: dict[str, Any] = {
        "out": str(out),
        "dims": sizes,
        "adaptor": adaptor.name,
        "tables": {},
    }
    try:
        target = open_store(staging, format=format or source.format, create=True)
        for name in names:
            schema = _output_schema(source.schema(name), source.metadata(name), adaptor, sizes)
            batches = _adapted_batches(
                source, name, adaptor, sizes, schema, chunk_rows, on_progress
            )
            summary["tables"][name] = target.write_table(name, schema, batches)
        replace_directory(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _output_schema(
    source: pa.Schema, metadata: dict[str, Any], adaptor: Adaptor, dims: list[int]
) -> pa.Schema:
    fields = [pa.field("id", pa.string(), nullable=False)]
    if "text_sha256" in source.names:
        fields.append(pa.field("text_sha256", pa.string()))
    fields += [pa.field(column_name(d), vector_type(d)) for d in dims]
    extended = {
        **metadata,
        "dimension": max(dims),
        "source_dimension": adaptor.dimension,
        "dims": dims,
        "normalized": True,
        "dtype": "float32",
        "vector_columns": {column_name(d): d for d in dims},
        "adaptor": {
            "name": adaptor.name,
            "method": adaptor.method,
            "fingerprint": adaptor.fingerprint,
            "madapt_version": adaptor.config.get("madapt_version"),
        },
    }
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(extended, sort_keys=True).encode()})


def _adapted_batches(
    source: Any,
    name: str,
    adaptor: Adaptor,
    dims: list[int],
    schema: pa.Schema,
    chunk_rows: int,
    on_progress: ProgressCallback | None,
) -> Iterator[pa.RecordBatch]:
    columns = ["id", *(["text_sha256"] if "text_sha256" in schema.names else []), VECTOR_COLUMN]
    for batch in source.iter_batches(name, columns=columns, batch_rows=chunk_rows):
        sized = transform_sizes(adaptor, arrow_to_vectors(batch.column(VECTOR_COLUMN)), dims)
        arrays = [batch.column("id")]
        if "text_sha256" in schema.names:
            arrays.append(batch.column("text_sha256"))
        arrays += [vectors_to_arrow(sized[d]) for d in dims]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        if on_progress:
            on_progress(name, batch.num_rows)
