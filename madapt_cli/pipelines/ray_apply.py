"""`madapt apply --engine ray`: the local apply's per-batch function in a Ray actor pool.

Every check of the local engine runs first, on the driver, before any work is dispatched
(the output, the adaptor, the sizes, each table's vectors and metadata). Each table is then
listed in fragments (:mod:`madapt_cli.store.fragments`: a Parquet row group with its
superseded rows masked, or a Lance range); each actor holds the adaptor, reads the
fragments it is given itself and transforms them block by block with the local engine's own
per-batch code (:func:`madapt_cli.pipelines.apply.adapted_batches`: the vector check, the
transform, the columns). The adapted blocks come back in order and are written by
:meth:`Store.write_table` into the staged output, published atomically at the end, exactly
as the local engine does. A run that is killed leaves no output; rerun it. The workers need
the source store at the same path (a shared file system on a cluster); only the driver
writes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from madapt_cli.errors import InputError
from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.pipelines import apply as local
from madapt_cli.pipelines.ray_engine import RayOptions, ray_session, run_fragments
from madapt_cli.store.base import VECTOR_COLUMN
from madapt_cli.store.fragments import Fragment, read_fragment
from madapt_cli.util.progress import Progress

__all__ = ["apply_adaptor_ray"]

#: rows per block sent to an actor when neither --chunk-rows nor RayOptions.batch_rows says
BLOCK_ROWS = 16_384


class _OneBatch:
    """A store of one batch, so the local engine's per-batch generator runs on it as is."""

    def __init__(self, batch: pa.RecordBatch) -> None:
        self.batch = batch

    def iter_batches(self, name: str, columns: list[str], batch_rows: int) -> Iterator[Any]:
        yield self.batch.select(columns)


class ApplyWorker:
    """One actor: holds the adaptor; each call reads one fragment of the source table itself
    and adapts it block by block, as the local engine does."""

    def __init__(
        self,
        adaptor: Adaptor,
        dims: list[int],
        schema: pa.Schema,
        where: str,
        columns: list[str],
        block_rows: int,
    ) -> None:
        # torch's threads: Ray sets OMP_NUM_THREADS to the actor's CPUs (--cpus-per-worker)
        self.adaptor, self.dims, self.schema, self.where = adaptor, dims, schema, where
        self.columns, self.block_rows = columns, block_rows

    def __call__(self, fragments: pa.Table) -> Iterator[pa.Table]:
        for item in fragments.to_pylist():
            fragment = Fragment.from_item(item)
            for block in read_fragment(fragment, self.columns, self.block_rows):
                batches = local.adapted_batches(  # the local engine's per-batch path
                    _OneBatch(block), "", self.adaptor, self.dims, self.schema, 1 << 62,
                    self.where,
                )  # fmt: skip
                yield pa.Table.from_batches(list(batches), schema=self.schema)


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
    """Table ``name``, listed in fragments the actors read and adapt themselves."""
    kept = [c for c in local.KEPT_COLUMNS if c in schema.names]
    fragments = plan.source.fragments(name, rows_per_block)
    kwargs = {
        "adaptor": plan.adaptor,
        "dims": plan.sizes,
        "schema": schema,
        "where": plan.where(name),
        "columns": ["id", *kept, VECTOR_COLUMN],
        "block_rows": rows_per_block,
    }
    items = [fragment.to_item() for fragment in fragments]
    tables_out = run_fragments(ray, items, ray_options, ApplyWorker, kwargs)
    return (b for t in tables_out for b in t.cast(schema).to_batches())
