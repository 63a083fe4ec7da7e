"""The embed pipeline: texts from a source -> vectors in a store table, cached and resumable.

1. Validate the whole source first (bad input fails before anything is written;
   :mod:`madapt_cli.pipelines.embed_plan`) and compare each row's content key
   (:meth:`EmbeddingProvider.content_key`) with what the table holds: a row with the same id
   and key is reused, anything else is embedded.
2. Group the rows to embed into requests within the provider's limits, run them (several at
   once for API providers), normalise, and store finished rows by atomic appends
   (:class:`FlushPolicy`: an API run gathers its many small requests into one append every
   few thousand rows or seconds; a local model's batches are stored one by one). A killed
   run loses at most the requests in flight and the rows not yet flushed; a rerun embeds
   only what is missing or changed.
3. After a complete run, drop rows that a changed text superseded and ids that left the
   source, so the table mirrors the source.

Every vector a provider returns is checked before it is stored: a NaN, an infinity or an
all-zero vector stops the run (exit 2) naming the table and the input's id.

Concurrent runs into one store are safe (see :mod:`madapt_cli.store.base`): each stores all its
rows. Step 3 makes a table mirror the source of the run that *finishes* last, so two runs of
the same source into one table keep every row; two runs of *different* sources into one
table end with the rows of the later one (as if they had run one after the other); use one
table per source, or ``--limit``, which keeps other rows.

Progress goes to a :class:`~madapt_cli.util.progress.Progress` callback, one task per table
("embed corpus", "embed queries"): an event with ``done=0`` when the table starts, one as each
model batch (a local model) or request (an API) finishes, cumulative in rows (embedded, or
rejected and skipped), and a last one with ``finished=True``. Nothing here prints.

A store this run creates appears with its first stored rows: a run that fails before any
leaves no store behind. ``--out`` must be new, empty or a madapt store.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from madapt_cli.data import TextItem
from madapt_cli.errors import InputError, StoreError
from madapt_cli.pipelines.embed_plan import (
    EVERY_REQUEST,
    EmbedEstimate,
    EmbedJob,
    EmbedPlan,
    FlushPolicy,
    SourceOptions,
    VectorOptions,
    embed_jobs,
    estimate_embedding,
    flush_policy_for,
    limited,
    longest_first,
    plan_embedding,
    plan_jobs,
    plan_requests,
    row_key,
)
from madapt_cli.providers.base import BadVectors, EmbeddingProvider, Role
from madapt_cli.providers.local_onnx import check_same_backend
from madapt_cli.providers.remote import RemoteProvider
from madapt_cli.store.base import (
    LOCK_FILE,
    MARKER,
    VECTOR_COLUMN,
    Store,
    check_appendable,
    embedding_schema,
    new_table_metadata,
    open_store,
    vector_type,
    vectors_to_arrow,
)
from madapt_cli.util.progress import Progress, ProgressEvent, report
from madapt_cli.util.vectors import check_vectors, normalize_rows

__all__ = [
    "EVERY_REQUEST",
    "EmbedEstimate",
    "EmbedJob",
    "EmbedPlan",
    "EmbedRun",
    "EmbedSummary",
    "FlushPolicy",
    "SourceOptions",
    "VectorOptions",
    "embed_jobs",
    "embed_source",
    "estimate_embedding",
    "flush_policy_for",
    "plan_embedding",
    "plan_requests",
    "run_embed",
]

#: a finished request: its items and their vectors, in the main thread
Write = Callable[[list[TextItem], np.ndarray], None]


@dataclass
class EmbedSummary:
    table: str
    rows: int
    embedded: int
    reused: int
    skipped_empty: int
    dropped: int
    seconds: float
    skipped_bad: int = 0  # inputs the API rejected, skipped with --skip-bad (not stored)

    def to_dict(self) -> dict:
        return asdict(self)


class _TableWriter:
    """Finished requests -> checked (and normalised) Arrow rows -> appended to one table as
    the :class:`FlushPolicy` says. ``pending_keys`` holds the content key of each row sent
    until it is stored (or skipped)."""

    def __init__(
        self,
        job: EmbedJob,
        provider: EmbeddingProvider,
        store: Store,
        options: VectorOptions,
        policy: FlushPolicy,
    ) -> None:
        self.table, self.role = job.table, job.role
        self.provider, self.store, self.options, self.policy = provider, store, options, policy
        self.where = (
            f"embedding table '{job.table}' of {store.path} with {provider.name} ({provider.model})"
        )
        self.pending_keys: dict[str, str] = {}
        self.schema: pa.Schema | None = None
        self.embedded = 0
        self.skipped_bad = 0
        self.buffered: list[pa.Table] = []  # finished rows not yet in the store
        self.buffered_rows = 0
        self.last_flush = time.monotonic()

    def _metadata(self) -> dict[str, Any]:
        options = self.options
        metadata = self.provider.metadata(self.role, options.normalize)
        if options.adaptor is not None:
            from madapt_cli.pipelines.apply import adapted_metadata

            dims = list(options.dims)
            metadata = adapted_metadata(metadata, options.adaptor, dims, options.dtype)
            metadata["raw"] = options.raw
            if options.raw:  # `vector` is the raw one, as in a store `madapt embed` wrote
                metadata.update(dimension=options.adaptor.dimension, normalized=options.normalize)
        return new_table_metadata(**{**metadata, "dtype": options.dtype})

    def check_table(self) -> None:
        """Fail before any work if the table holds another model's vectors, or other
        adapted columns than this run writes."""
        if self.store.has_table(self.table):
            existing, incoming = self.store.metadata(self.table), self._metadata()
            check_appendable(self.table, existing, incoming)
            check_same_backend(self.table, existing, incoming)
            _check_same_adaptation(self.table, existing, incoming)

    def flush(self) -> None:
        if self.buffered:
            # Taken out of the buffer first: if the append fails they are simply not stored
            # (and requested again by a rerun), never written twice.
            rows = pa.concat_tables(self.buffered)
            self.buffered, self.buffered_rows = [], 0
            self.store.append(self.table, rows)
            self.embedded += rows.num_rows
        self.last_flush = time.monotonic()

    def write(self, items: list[TextItem], vectors: np.ndarray) -> None:
        """Buffer one finished request (and flush when due)."""
        if vectors.shape != (len(items), self.provider.dimension):
            raise RuntimeError(
                f"provider returned {vectors.shape} for {len(items)} inputs"
            )  # providers validate responses; this guards the store
        items, vectors = self._without_rejected(items, vectors)
        if items:
            check_vectors(vectors, [i.id for i in items], self.where)
            if self.options.normalize:
                vectors = normalize_rows(vectors)
            self.buffered.append(self._rows(items, vectors))
            self.buffered_rows += len(items)
        if self.policy.due(self.buffered_rows, time.monotonic() - self.last_flush):
            self.flush()

    def _without_rejected(
        self, items: list[TextItem], vectors: np.ndarray
    ) -> tuple[list[TextItem], np.ndarray]:
        """An all-NaN row is an input the API rejected and the provider skipped (--skip-bad):
        it is not stored, so a rerun tries it again. (Providers check the vectors they
        receive first, so a NaN from the model itself never passes for a skipped input.)"""
        if not getattr(self.provider, "skip_bad", False):
            return items, vectors
        rejected = np.isnan(vectors).all(axis=1)
        if not rejected.any():
            return items, vectors
        self.skipped_bad += int(rejected.sum())
        for item, bad in zip(items, rejected, strict=True):
            if bad:
                del self.pending_keys[item.id]
        kept = [item for item, bad in zip(items, rejected, strict=True) if not bad]
        return kept, vectors[~rejected]

    def _rows(self, items: list[TextItem], vectors: np.ndarray) -> pa.Table:
        options = self.options
        if self.schema is None:
            metadata = self._metadata()
            if self.store.has_table(self.table):
                existing = self.store.metadata(self.table)
                check_appendable(self.table, existing, metadata)
                check_same_backend(self.table, existing, metadata)
                _check_same_adaptation(self.table, existing, metadata)
            self.schema = _table_schema(self.provider.dimension, options, metadata)
        columns = {
            "id": pa.array([i.id for i in items], pa.string()),
            VECTOR_COLUMN: vectors_to_arrow(vectors, options.dtype),
            "text_sha256": pa.array([self.pending_keys.pop(i.id) for i in items], pa.string()),
        }
        if options.store_text:
            columns["text"] = pa.array([i.joined for i in items], pa.string())
        if options.adaptor is not None:
            from madapt_cli.pipelines.apply import column_name, transform_sizes

            sized = transform_sizes(options.adaptor, vectors, options.dims)
            for dim in options.dims:
                columns[column_name(dim)] = vectors_to_arrow(sized[dim], options.dtype)
        return pa.Table.from_arrays(
            [columns[name] for name in self.schema.names], schema=self.schema
        )


def _table_schema(dimension: int, options: VectorOptions, metadata: dict[str, Any]) -> pa.Schema:
    """The rows' schema: `madapt embed`'s, plus ``vector_<d>`` columns with an adaptor (and
    without ``vector`` when the raw vector is not kept)."""
    schema = embedding_schema(dimension, options.dtype, options.store_text, metadata)
    if options.adaptor is None:
        return schema
    from madapt_cli.pipelines.apply import column_name

    for dim in options.dims:
        schema = schema.append(pa.field(column_name(dim), vector_type(dim, options.dtype)))
    if not options.raw:
        schema = schema.remove(schema.get_field_index(VECTOR_COLUMN))
    return schema


def _check_same_adaptation(table: str, existing: dict[str, Any], incoming: dict[str, Any]) -> None:
    """Refuse rows adapted otherwise (another adaptor, other sizes, raw kept or not, or none)
    than those the table holds: their columns would not line up."""

    def adaptation(metadata: dict[str, Any]) -> tuple[Any, ...]:
        adaptor = metadata.get("adaptor") or {}
        return adaptor.get("fingerprint"), metadata.get("dims"), metadata.get("raw")

    if adaptation(existing) != adaptation(incoming):
        held = existing.get("adaptor") or {}
        what = (
            f"vectors adapted by '{held.get('name')}' at sizes {existing.get('dims')}"
            if held
            else "vectors without an adaptor"
        )
        raise StoreError(
            f"table '{table}' holds {what}; this run would write other columns: write to "
            "another --table or --out store"
        )


class _Tally:
    """The progress events of one table: cumulative rows of ``total``."""

    def __init__(self, progress: Progress | None, task: str, total: int) -> None:
        self.progress, self.task, self.total, self.done = progress, task, total, 0
        if total:
            report(progress, ProgressEvent(task, 0, total))

    def advance(self, rows: int) -> None:
        self.done += rows
        report(self.progress, ProgressEvent(self.task, self.done, self.total))

    def finish(self) -> None:
        report(self.progress, ProgressEvent(self.task, self.done, self.total, finished=True))


def embed_source(
    job: EmbedJob,
    provider: EmbeddingProvider,
    store: Store,
    *,
    vectors: VectorOptions = VectorOptions(),
    limit: int | None = None,
    plan: EmbedPlan | None = None,
    progress: Progress | None = None,
    flush_policy: FlushPolicy | None = None,
) -> EmbedSummary:
    """Embed ``job.source`` into ``store[job.table]``, reusing stored rows (see the module
    docstring); reports to ``progress`` as the task ``"embed <table>"``.

    ``flush_policy``: when finished rows are appended (default: :func:`flush_policy_for`).
    """
    started = time.perf_counter()
    table = job.table
    adaptation = vectors.adaptation
    plan = plan or plan_embedding(job.source, provider, store, table, job.role, limit, adaptation)
    writer = _TableWriter(job, provider, store, vectors, flush_policy or flush_policy_for(provider))
    stored = store.read_keys(table)
    source_ids: set[str] = set()

    def pending() -> Iterator[TextItem]:
        for item in limited(job.source, limit):
            source_ids.add(item.id)
            key = row_key(provider, item, job.role, adaptation)
            if stored.get(item.id) != key:
                writer.pending_keys[item.id] = key
                yield item

    tally = _Tally(progress, f"embed {table}", plan.to_embed)
    if plan.to_embed:
        writer.check_table()
        try:
            rows = pending() if isinstance(provider, RemoteProvider) else longest_first(pending())
            requests = plan_requests(rows, provider)
            _run_requests(requests, provider, job.role, writer.write, tally.advance)
        except BadVectors as error:  # found by the provider: add the table
            raise InputError(f"{writer.where}: {error}") from None
        finally:  # the end, an error or Ctrl-C: keep every finished row
            writer.flush()
    else:
        for _ in pending():  # still collect the ids, for the retention below
            pass
    tally.finish()

    dropped = 0
    if store.has_table(table):
        # A run over part of the source (--limit) keeps the other rows; a full run mirrors it.
        dropped = store.retain(table, None if limit is not None else source_ids)
    return EmbedSummary(
        table=table,
        rows=plan.rows,
        embedded=writer.embedded,
        reused=plan.rows - writer.embedded - writer.skipped_bad,
        skipped_empty=plan.skipped_empty,
        dropped=dropped,
        seconds=round(time.perf_counter() - started, 3),
        skipped_bad=writer.skipped_bad,
    )


def _run_requests(
    requests: Iterator[list[TextItem]],
    provider: EmbeddingProvider,
    role: Role,
    write: Write,
    advance: Callable[[int], None],
) -> None:
    """Run requests, ``provider.concurrency`` at a time; hand each to ``write`` as it finishes.

    ``advance(rows)`` is called in this thread as rows finish: after each model batch when
    requests run one at a time (:meth:`EmbeddingProvider.embed_request`), after each request
    when several are in flight."""
    workers = max(1, provider.concurrency)
    if workers == 1:
        for items in requests:
            write(items, provider.embed_request(items, role, advance))
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="madapt-embed") as pool:
        in_flight: dict[Future, list[TextItem]] = {}
        try:
            for items in requests:
                in_flight[pool.submit(provider.embed_batch, items, role)] = items
                while len(in_flight) >= workers * 2:
                    _drain(in_flight, write, advance)
            while in_flight:
                _drain(in_flight, write, advance)
        except BaseException:
            for future in in_flight:
                future.cancel()
            raise


def _drain(
    in_flight: dict[Future, list[TextItem]], write: Write, advance: Callable[[int], None]
) -> None:
    done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
    for future in done:
        items = in_flight.pop(future)
        vectors = future.result()
        advance(len(items))
        write(items, vectors)


# --- whole inputs: a BEIR folder or a file into a store ---------------------------------
@dataclass
class EmbedRun:
    """What ``madapt embed`` did: one :class:`EmbedSummary` per table."""

    store: str
    format: str
    provider: str
    model: str
    tables: list[EmbedSummary]
    provider_stats: dict[str, Any]

    @property
    def rows_embedded(self) -> int:
        return sum(t.embedded for t in self.tables)

    @property
    def rows_reused(self) -> int:
        return sum(t.reused for t in self.tables)

    @property
    def seconds(self) -> float:
        return round(sum(t.seconds for t in self.tables), 3)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` summary."""
        return {
            "store": self.store,
            "format": self.format,
            "provider": self.provider,
            "model": self.model,
            "rows_embedded": self.rows_embedded,
            "rows_reused": self.rows_reused,
            "seconds": self.seconds,
            "tables": [t.to_dict() for t in self.tables],
            **({"provider_stats": self.provider_stats} if self.provider_stats else {}),
        }


def run_embed(
    source: Path,
    out: Path,
    provider: EmbeddingProvider,
    options: SourceOptions | None = None,
    *,
    store_format: str | None = None,
    vectors: VectorOptions = VectorOptions(),
    limit: int | None = None,
    progress: Progress | None = None,
) -> EmbedRun:
    """Validate every input, then embed each into its table."""
    existing, jobs, plans = plan_jobs(
        source, out, provider, options or SourceOptions(), store_format, limit, vectors.adaptation
    )
    new_folder = not out.exists()
    store = existing or open_store(out, store_format, create=True)
    summaries = []
    try:
        for job, plan in zip(jobs, plans, strict=True):
            summaries.append(
                embed_source(
                    job, provider, store, vectors=vectors, limit=limit, plan=plan, progress=progress
                )
            )
    except BaseException:
        if existing is None:
            _remove_if_unused(out, new_folder)
        raise
    return EmbedRun(
        store=str(out),
        format=store.format,
        provider=provider.name,
        model=provider.model,
        tables=summaries,
        provider_stats=provider.stats(),
    )


def _remove_if_unused(out: Path, new_folder: bool) -> None:
    """After a failed run that created the store: remove what it made if no row was stored
    (the marker, the lock file, empty table folders), so no empty store is left behind."""
    try:
        entries = list(out.iterdir())
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                if any(not child.name.startswith(".tmp-") for child in entry.iterdir()):
                    return  # rows were stored
            elif entry.name not in (MARKER, LOCK_FILE):
                return
        for entry in entries:
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        if new_folder:
            out.rmdir()
    except OSError:
        pass  # best effort: the failure being reported matters more
