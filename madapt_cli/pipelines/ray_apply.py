"""`madapt apply --engine ray`: the local apply's per-batch function in a Ray actor pool.

Every check of the local engine runs first, on the driver, before any work is dispatched
(the output, the adaptor, the sizes, each table's vectors and metadata). Each table is then
read through the store layer (which resolves superseded rows), cut into blocks, sent to an
actor pool where each actor holds the adaptor, and transformed by the local engine's own
per-batch code (:func:`madapt_cli.pipelines.apply._adapted_batches`: the vector check, the
transform, the columns); the adapted blocks come back in order and are written by
:meth:`Store.write_table` into the staged output, published atomically at the end, exactly
as the local engine does. A run that is killed leaves no output; rerun it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from madapt_cli.errors import InputError, StoreError
from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.pipelines import apply as local
from madapt_cli.pipelines.ray_engine import RayOptions, blocks_of, ray_session, run_waves
from madapt_cli.store.base import FORMATS, VECTOR_COLUMN, open_store, require_raw_vectors
from madapt_cli.util.dims import parse_dims
from madapt_cli.util.files import check_output, staged_output
from madapt_cli.util.progress import Progress

__all__ = ["apply_adaptor_ray"]

#: rows per block sent to an actor when neither --chunk-rows nor RayOptions.batch_rows says
BLOCK_ROWS = 16_384


class _OneBatch:
    """A store of one batch, so the local engine's per-batch generator runs on it as is."""

    def __init__(self, batch: pa.Table) -> None:
        self.batch = batch

    def iter_batches(self, name: str, columns: list[str], batch_rows: int) -> Iterator[Any]:
        yield from self.batch.select(columns).combine_chunks().to_batches()


class ApplyWorker:
    """One actor: holds the adaptor; each call adapts one block as the local engine does."""

    def __init__(self, adaptor: Adaptor, dims: list[int], schema: pa.Schema, where: str) -> None:
        # torch's threads: Ray sets OMP_NUM_THREADS to the actor's CPUs (--cpus-per-worker)
        self.adaptor, self.dims, self.schema, self.where = adaptor, dims, schema, where

    def __call__(self, block: pa.Table) -> pa.Table:
        batches = list(
            local._adapted_batches(  # the local engine's per-batch path, unchanged
                _OneBatch(block), "", self.adaptor, self.dims, self.schema, 1 << 62, self.where
            )
        )
        return pa.Table.from_batches(batches, schema=self.schema)


def _check(
    adaptor_path: str | Path, store_path: str | Path, dims: Any, format: str | None,
    tables: Sequence[str] | None, dtype: str,
) -> tuple[Adaptor, Any, list[int], list[str]]:  # fmt: skip
    """The local engine's checks, in its order; returns what the run needs."""
    adaptor = Adaptor.load(adaptor_path)
    source = open_store(store_path)
    sizes = parse_dims(dims, adaptor.dimension)
    if format is not None and format not in FORMATS:
        raise InputError(f"unknown --format {format!r}: use {', '.join(FORMATS)}")
    if dtype not in local.DTYPES:
        raise InputError(f"--dtype must be float32 or float16, not {dtype!r}")
    names = list(tables) if tables else source.tables()
    if not names:
        raise StoreError(f"store {store_path} has no tables")
    for name in names:
        source.require_table(name)
        require_raw_vectors(source, name, "`madapt apply`")
        adaptor.check_vectors_metadata(source.metadata(name), f"table '{name}' of {store_path}")
    return adaptor, source, sizes, names


def apply_adaptor_ray(  # noqa: PLR0913 - the keyword API of `madapt apply`, plus the engine's
    adaptor_path: str | Path,
    store_path: str | Path,
    dims: str | Sequence[int],
    out: str | Path,
    *,
    ray_options: RayOptions,
    format: str | None = None,
    tables: Sequence[str] | None = None,
    chunk_rows: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    dtype: str = "float32",
) -> local.ApplySummary:
    """:func:`madapt_cli.pipelines.apply.apply_adaptor` on Ray: the same output, the same
    errors. ``chunk_rows`` (default ``ray_options.batch_rows``, else :data:`BLOCK_ROWS`):
    rows per block sent to an actor."""
    out = Path(out)
    inputs = (adaptor_path, store_path)
    ray_options.check()
    check_output(out, "store", overwrite=overwrite, inputs=inputs)
    if chunk_rows is not None and chunk_rows < 1:
        raise InputError(f"--chunk-rows {chunk_rows}: must be at least 1 row")
    rows_per_block = chunk_rows or ray_options.batch_rows or BLOCK_ROWS
    adaptor, source, sizes, names = _check(adaptor_path, store_path, dims, format, tables, dtype)
    summary = local.ApplySummary(out=str(out), dims=sizes, adaptor=adaptor.name)
    with (
        ray_session(ray_options) as ray,
        staged_output(out, "store", overwrite=overwrite, inputs=inputs) as staging,
    ):
        target = open_store(staging, format=format or source.format, create=True)
        for name in names:
            schema = local.output_schema(
                source.schema(name), source.metadata(name), adaptor, sizes, dtype
            )
            kept = [c for c in local.KEPT_COLUMNS if c in schema.names]
            read = source.iter_batches(
                name, columns=["id", *kept, VECTOR_COLUMN], batch_rows=rows_per_block
            )
            kwargs = {
                "adaptor": adaptor,
                "dims": sizes,
                "schema": schema,
                "where": f"table '{name}' of {store_path}",
            }
            tables_out = run_waves(
                ray, blocks_of(read, rows_per_block), ray_options, ApplyWorker, kwargs
            )
            batches = (b for t in tables_out for b in t.cast(schema).to_batches())
            if progress is not None:
                batches = local._reported(batches, progress, f"apply {name}", source.num_rows(name))
            summary.tables[name] = target.write_table(name, schema, batches)
    return summary
