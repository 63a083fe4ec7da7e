"""`madapt embed --engine ray`: the local embed's per-request path in a Ray actor pool.

The driver runs the local engine's planning (:func:`plan_jobs`: every input validated, bad
input refused before anything is dispatched) and its resume filter (a row whose id and
content key are stored is not sent), then hands the remaining rows to Ray Data in blocks.
Each actor builds the provider once (a local model loads once per actor; an API client gets
its share of ``--rpm``/``--tpm``) and runs each block through the local engine's own code:
:func:`plan_requests` and :func:`_run_requests` (batching within the provider's limits,
concurrent API requests), then :class:`_TableWriter` (the vector check, normalisation, the
row schema and its metadata, and with ``--adaptor`` the adapted ``vector_<d>`` columns:
each actor holds the adaptor too). The finished rows come back to the driver, which appends them
with :meth:`Store.append` (under the store's lock, one atomic file or version per block).

A worker killed mid-run is restarted by Ray and its block done again; the driver only ever
sees a finished block once, so nothing is lost or stored twice. A driver killed mid-run keeps
every block it appended; the rerun sends only the rest. After a complete run the table
mirrors the source (:meth:`Store.retain`), as with the local engine.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from madapt_cli.data import TextItem
from madapt_cli.errors import InputError
from madapt_cli.pipelines import embed as local
from madapt_cli.pipelines.embed_plan import (
    EVERY_REQUEST,
    EmbedJob,
    EmbedPlan,
    SourceOptions,
    VectorOptions,
    limited,
    plan_jobs,
    plan_requests,
    row_key,
)
from madapt_cli.pipelines.ray_engine import RayOptions, ray_session, run_waves
from madapt_cli.providers.base import BadVectors, EmbeddingProvider, Role, build_provider
from madapt_cli.store.base import Store, open_store
from madapt_cli.util.progress import Progress

__all__ = ["ProviderSpec", "run_embed_ray"]

#: the columns of a block sent to a worker
_BLOCK = pa.schema(
    [("id", pa.string()), ("text", pa.string()), ("title", pa.string()), ("key", pa.string())]
)

#: client-side rate limits, divided among the actors so that together they keep to them
_SPLIT_LIMITS = ("rpm", "tpm")


@dataclass(frozen=True)
class ProviderSpec:
    """How each worker builds its own provider: :func:`build_provider`'s arguments."""

    name: str
    model: str | None
    values: Mapping[str, Any] = field(default_factory=dict)

    def for_workers(self, workers: int) -> ProviderSpec:
        """This spec with the rate limits split among ``workers`` actors."""
        values = dict(self.values)
        for name in _SPLIT_LIMITS:
            if values.get(name):
                values[name] = values[name] / workers
        return ProviderSpec(self.name, self.model, values)


class _Rows:
    """A stand-in store for a worker's :class:`_TableWriter`: keeps the rows it would append
    (the driver appends them to the real store)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.rows: list[pa.Table] = []

    def has_table(self, name: str) -> bool:
        return False  # the driver checked the real table before dispatching

    def append(self, name: str, rows: pa.Table) -> None:
        self.rows.append(rows)


class EmbedWorker:
    """One actor: builds the provider once; each call embeds one block of rows."""

    def __init__(
        self, spec: ProviderSpec, table: str, role: Role, vectors: VectorOptions, store: str
    ) -> None:
        self.provider = build_provider(spec.name, spec.model, spec.values)
        self.job = EmbedJob(table, role, None)  # type: ignore[arg-type] - no source here
        self.vectors, self.store = vectors, store

    def __call__(self, block: pa.Table) -> pa.Table:
        columns = block.to_pydict()
        items = [
            TextItem(i, t, title)
            for i, t, title in zip(columns["id"], columns["text"], columns["title"], strict=True)
        ]
        rows = _Rows(self.store)
        writer = local._TableWriter(self.job, self.provider, rows, self.vectors, EVERY_REQUEST)  # type: ignore[arg-type]
        writer.pending_keys = dict(zip(columns["id"], columns["key"], strict=True))
        try:
            requests = plan_requests(items, self.provider)
            local._run_requests(requests, self.provider, self.job.role, writer.write, _ignore)
        except BadVectors as error:  # found by the provider: add the table, as locally
            raise InputError(f"{writer.where}: {error}") from None
        writer.flush()
        if not rows.rows:  # every row rejected by the API (--skip-bad)
            return pa.table({"id": pa.array([], pa.string())})
        return pa.concat_tables(rows.rows)


def block_rows(provider: EmbeddingProvider) -> int:
    """Rows per block (one actor call, one append): two rounds of the requests the provider
    keeps in flight, so an API actor keeps its ``--concurrency`` busy and a local model gets
    two full requests; a killed driver loses at most the blocks in flight."""
    return provider.limits.max_inputs * max(1, provider.concurrency) * 2


def _ignore(rows: int) -> None:
    """Progress inside a worker: the driver counts finished blocks instead."""


def _pending_blocks(
    job: EmbedJob,
    provider: EmbeddingProvider,
    stored: dict[str, str],
    limit: int | None,
    block_rows: int,
    adaptation: str,
    source_ids: set[str],
) -> Iterator[pa.Table]:
    """The rows to embed (new, or changed since stored), ``block_rows`` at a time; fills
    ``source_ids`` with every id of the source as it goes (for the retention after)."""
    columns: dict[str, list[Any]] = {name: [] for name in _BLOCK.names}
    for item in limited(job.source, limit):
        source_ids.add(item.id)
        key = row_key(provider, item, job.role, adaptation)
        if stored.get(item.id) == key:
            continue
        for name, value in zip(_BLOCK.names, (item.id, item.text, item.title, key), strict=True):
            columns[name].append(value)
        if len(columns["id"]) >= block_rows:
            yield pa.Table.from_pydict(columns, schema=_BLOCK)
            columns = {name: [] for name in _BLOCK.names}
    if columns["id"]:
        yield pa.Table.from_pydict(columns, schema=_BLOCK)


def _embed_table(  # noqa: PLR0913 - one table of a run: the run's pieces
    ray: Any,
    job: EmbedJob,
    plan: EmbedPlan,
    provider: EmbeddingProvider,
    spec: ProviderSpec,
    store: Store,
    vectors: VectorOptions,
    limit: int | None,
    progress: Progress | None,
    options: RayOptions,
) -> local.EmbedSummary:
    started = time.perf_counter()
    tally = local._Tally(progress, f"embed {job.table}", plan.to_embed)
    source_ids: set[str] = set()
    embedded = 0
    blocks = _pending_blocks(
        job, provider, store.read_keys(job.table), limit,
        options.batch_rows or block_rows(provider), vectors.adaptation, source_ids,
    )  # fmt: skip
    if plan.to_embed:
        local._TableWriter(job, provider, store, vectors, EVERY_REQUEST).check_table()
        kwargs = {
            "spec": spec.for_workers(options.workers),
            "table": job.table,
            "role": job.role,
            "vectors": vectors,
            "store": str(store.path),
        }
        for rows in run_waves(ray, blocks, options, EmbedWorker, kwargs):
            if rows.num_rows:
                store.append(job.table, rows)
                embedded += rows.num_rows
                tally.advance(rows.num_rows)
    for _ in blocks:  # nothing to embed: still collect the ids, for the retention below
        pass
    tally.finish()
    dropped = 0
    if store.has_table(job.table):
        dropped = store.retain(job.table, None if limit is not None else source_ids)
    skipped_bad = plan.to_embed - embedded
    return local.EmbedSummary(
        table=job.table,
        rows=plan.rows,
        embedded=embedded,
        reused=plan.rows - plan.to_embed,
        skipped_empty=plan.skipped_empty,
        dropped=dropped,
        seconds=round(time.perf_counter() - started, 3),
        skipped_bad=skipped_bad,
    )


def run_embed_ray(  # noqa: PLR0913 - run_embed's keywords, plus the engine's
    source: Path,
    out: Path,
    provider: EmbeddingProvider,
    options: SourceOptions | None = None,
    *,
    spec: ProviderSpec,
    ray_options: RayOptions,
    store_format: str | None = None,
    vectors: VectorOptions = VectorOptions(),
    limit: int | None = None,
    progress: Progress | None = None,
) -> local.EmbedRun:
    """:func:`madapt_cli.pipelines.embed.run_embed` on Ray: validate every input here, then
    embed on the workers, each building its provider from ``spec`` (``provider`` is the
    driver's copy, for content keys and metadata; a local model is not loaded by it unless
    the table exists and its metadata must be compared)."""
    ray_options.check()
    existing, jobs, plans = plan_jobs(
        source, out, provider, options or SourceOptions(), store_format, limit, vectors.adaptation
    )
    new_folder = not out.exists()
    summaries = []
    with ray_session(ray_options) as ray:
        store = existing or open_store(out, store_format, create=True)
        try:
            for job, plan in zip(jobs, plans, strict=True):
                summaries.append(
                    _embed_table(
                        ray,
                        job,
                        plan,
                        provider,
                        spec,
                        store,
                        vectors,
                        limit,
                        progress,
                        ray_options,
                    )
                )
        except BaseException:
            if existing is None:
                local._remove_if_unused(out, new_folder)
            raise
    return local.EmbedRun(
        store=str(out),
        format=store.format,
        provider=provider.name,
        model=provider.model,
        tables=summaries,
        provider_stats={},
    )
