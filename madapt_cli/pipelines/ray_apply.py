"""`madapt apply --engine ray`: the local apply's per-batch function in a Ray actor pool.

Every check of the local engine runs first, on the driver, before any work is dispatched
(the output, the adaptor, the sizes, each table's vectors and metadata). Each table is then
read through the store layer (which resolves superseded rows), cut into blocks, sent to an
actor pool where each actor holds the adaptor, and transformed by the local engine's own
per-batch code (:func:`madapt_cli.pipelines.apply.adapted_batches`: the vector check, the
transform, the columns); the adapted blocks come back in order and are written by
:meth:`Store.write_table` into the staged output, published atomically at the end, exactly
as the local engine does. A run that is killed leaves no output; rerun it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from madapt_cli.errors import InputError
from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.pipelines import apply as local
from madapt_cli.pipelines.ray_engine import RayOptions, blocks_of, ray_session, run_waves
from madapt_cli.store.base import VECTOR_COLUMN
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
            local.adapted_batches(  # the local engine's per-batch path, unchanged
                _OneBatch(block), "", self.adaptor, self.dims, self.schema, 1 << 62, self.where
            )
        )
        return pa.Table.from_batches(batches, schema=self.schema)


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
    precision: str | Sequence[str] = "float32",
    calibration: str = "minmax",
    calibration_from: str | Path | None = None,
) -> local.ApplySummary:
    """:func:`madapt_cli.pipelines.apply.apply_adaptor` on Ray: the same plan (checks and
    int8 ranges, on the driver), the same per-batch code, the same output and errors.
    ``chunk_rows`` (default ``ray_options.batch_rows``, else :data:`BLOCK_ROWS`): rows per
    block sent to an actor."""
    ray_options.check()
    if chunk_rows is not None and chunk_rows < 1:
        raise InputError(f"--chunk-rows {chunk_rows}: must be at least 1 row")
    rows_per_block = chunk_rows or ray_options.batch_rows or BLOCK_ROWS
    plan = local.plan_apply(
        adaptor_path,
        store_path,
        dims,
        out,
        format=format,
        tables=tables,
        chunk_rows=rows_per_block,
        overwrite=overwrite,
        dtype=dtype,
        precision=precision,
        calibration=calibration,
        calibration_from=calibration_from,
    )
    with ray_session(ray_options) as ray:
        return plan.write(
            lambda name, schema: _adapted_on_ray(
                ray, plan, name, schema, ray_options, rows_per_block
            ),
            progress,
        )


def _adapted_on_ray(
    ray: Any,
    plan: local.ApplyPlan,
    name: str,
    schema: pa.Schema,
    ray_options: RayOptions,
    rows_per_block: int,
) -> Iterator[pa.RecordBatch]:
    """Table ``name`` read through the store layer, in blocks, adapted by the actor pool."""
    kept = [c for c in local.KEPT_COLUMNS if c in schema.names]
    read = plan.source.iter_batches(
        name, columns=["id", *kept, VECTOR_COLUMN], batch_rows=rows_per_block
    )
    kwargs = {
        "adaptor": plan.adaptor,
        "dims": plan.sizes,
        "schema": schema,
        "where": plan.where(name),
    }
    tables_out = run_waves(ray, blocks_of(read, rows_per_block), ray_options, ApplyWorker, kwargs)
    return (b for t in tables_out for b in t.cast(schema).to_batches())
