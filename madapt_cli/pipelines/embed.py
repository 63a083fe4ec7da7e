"""The embed pipeline: texts from a source -> vectors in a store table, cached and resumable.

1. Validate the whole source first (bad input fails before anything is written) and compare
   each row's content key (:meth:`EmbeddingProvider.content_key`) with what the table holds:
   a row with the same id and key is reused, anything else is embedded.
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

Concurrent runs into one store are safe (see :mod:`madapt_cli.stores`): each stores all its
rows. Step 3 makes a table mirror the source of the run that *finishes* last, so two runs of
the same source into one table keep every row; two runs of *different* sources into one
table end with the rows of the later one (as if they had run one after the other); use one
table per source, or ``--limit``, which keeps other rows.

A store this run creates appears with its first stored rows: a run that fails before any
leaves no store behind. ``--out`` must be new, empty or a madapt store.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from madapt_cli import console
from madapt_cli.data import BeirDataset, TextSource
from madapt_cli.errors import InputError
from madapt_cli.providers.base import BadVectors, EmbeddingProvider, Role, TextItem
from madapt_cli.providers.resilience import RemoteProvider
from madapt_cli.store.base import (
    LOCK_FILE,
    MARKER,
    Store,
    check_appendable,
    embedding_schema,
    new_table_metadata,
    open_store,
    validate_table_name,
    vectors_to_arrow,
)
from madapt_cli.util.vectors import check_vectors, normalize_rows

#: called with the number of rows just finished (embedded, or rejected and skipped)
ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class FlushPolicy:
    """When finished rows are written to the store: one append (one Parquet part file, one
    Lance version) once ``max_rows`` rows are waiting or ``max_seconds`` have passed since
    the last append (checked as each request finishes), and always at the end of a run, on
    an error and on Ctrl-C.

    Each append costs a file, an fsync and a directory listing on the main thread; an API
    run at thousands of texts a second would spend its time there instead of keeping
    requests in flight. A SIGKILL loses the unflushed rows only: they are not in the store,
    so a rerun requests them again (never twice in the store, never lost once stored).
    """

    max_rows: int = 4096
    max_seconds: float = 2.0

    def due(self, rows: int, seconds_since_flush: float) -> bool:
        return rows >= self.max_rows or seconds_since_flush >= self.max_seconds


#: store every finished request at once (a local model: its batches cost more than a write)
EVERY_REQUEST = FlushPolicy(max_rows=1, max_seconds=0.0)


def flush_policy_for(provider: EmbeddingProvider) -> FlushPolicy:
    """API providers coalesce their many cheap requests; a local model stores each batch."""
    return FlushPolicy() if isinstance(provider, RemoteProvider) else EVERY_REQUEST


@dataclass
class EmbedPlan:
    """What a run will do, known after the validation pass."""

    table: str
    rows: int
    to_embed: int
    reused: int
    skipped_empty: int
    estimated_tokens: int


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


def _limited(source: Iterable[TextItem], limit: int | None) -> Iterator[TextItem]:
    return iter(source) if limit is None else islice(source, limit)


def plan_embedding(
    source: TextSource,
    provider: EmbeddingProvider,
    store: Store | None,
    table: str,
    role: Role,
    limit: int | None = None,
) -> EmbedPlan:
    """Validate ``source`` and count what is to embed (all of it if there is no store yet);
    writes nothing."""
    stored = store.read_keys(table) if store is not None else {}
    counts = {"rows": 0, "to_embed": 0, "tokens": 0}

    def count(item: TextItem) -> None:
        if limit is not None and counts["rows"] >= limit:
            return
        counts["rows"] += 1
        # with nothing stored every row is to embed: no content key needed (~6 us a row)
        if not stored or stored.get(item.id) != provider.content_key(item, role):
            counts["to_embed"] += 1
            counts["tokens"] += provider.estimate_tokens(item)

    source.validate(on_item=count)
    return EmbedPlan(
        table=table,
        rows=counts["rows"],
        to_embed=counts["to_embed"],
        reused=counts["rows"] - counts["to_embed"],
        skipped_empty=source.skipped_empty,
        estimated_tokens=counts["tokens"],
    )


def plan_requests(
    items: Iterable[TextItem], provider: EmbeddingProvider
) -> Iterator[list[TextItem]]:
    """Group items into requests within ``provider.limits`` (count and total tokens)."""
    limits = provider.limits
    batch: list[TextItem] = []
    batch_tokens = 0
    for item in items:
        tokens = provider.estimate_tokens(item)
        if limits.max_input_tokens is not None:
            tokens = min(tokens, limits.max_input_tokens)  # the provider truncates longer ones
        too_many = len(batch) >= limits.max_inputs
        too_long = (
            limits.max_total_tokens is not None
            and batch
            and batch_tokens + tokens > limits.max_total_tokens
        )
        if too_many or too_long:
            yield batch
            batch, batch_tokens = [], 0
        batch.append(item)
        batch_tokens += tokens
    if batch:
        yield batch


def embed_source(
    source: TextSource,
    provider: EmbeddingProvider,
    store: Store,
    table: str,
    role: Role,
    *,
    normalize: bool = True,
    dtype: str = "float32",
    store_text: bool = False,
    limit: int | None = None,
    plan: EmbedPlan | None = None,
    on_progress: ProgressCallback | None = None,
    flush_policy: FlushPolicy | None = None,
) -> EmbedSummary:
    """Embed ``source`` into ``store[table]``, reusing stored rows (see the module docstring).

    ``flush_policy``: when finished rows are appended (default: :func:`flush_policy_for`).
    """
    started = time.perf_counter()
    plan = plan or plan_embedding(source, provider, store, table, role, limit)
    stored = store.read_keys(table)
    source_ids: set[str] = set()
    pending_keys: dict[str, str] = {}  # id -> content key of the rows sent, until stored

    def pending() -> Iterator[TextItem]:
        for item in _limited(source, limit):
            source_ids.add(item.id)
            key = provider.content_key(item, role)
            if stored.get(item.id) != key:
                pending_keys[item.id] = key
                yield item

    schema: pa.Schema | None = None
    embedded = 0
    skipped_bad = 0
    policy = flush_policy or flush_policy_for(provider)
    where = f"embedding table '{table}' of {store.path} with {provider.name} ({provider.model})"
    buffered: list[pa.Table] = []  # finished rows not yet in the store
    buffered_rows = 0
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal embedded, buffered, buffered_rows, last_flush
        if buffered:
            # Taken out of the buffer first: if the append fails they are simply not stored
            # (and requested again by a rerun), never written twice.
            rows, buffered, buffered_rows = pa.concat_tables(buffered), [], 0
            store.append(table, rows)
            embedded += rows.num_rows
        last_flush = time.monotonic()

    def finished(items: list[TextItem], vectors: np.ndarray) -> None:
        nonlocal schema, skipped_bad, buffered_rows
        if vectors.shape != (len(items), provider.dimension):
            raise RuntimeError(
                f"provider returned {vectors.shape} for {len(items)} inputs"
            )  # providers validate responses; this guards the store
        if on_progress:
            on_progress(len(items))
        # An all-NaN row is an input the API rejected and the provider skipped (--skip-bad):
        # it is not stored, so a rerun tries it again. (Providers check the vectors they
        # receive first, so a NaN from the model itself never passes for a skipped input.)
        if getattr(provider, "skip_bad", False):
            rejected = np.isnan(vectors).all(axis=1)
        else:
            rejected = np.zeros(len(items), dtype=bool)
        if rejected.any():
            skipped_bad += int(rejected.sum())
            for item, bad in zip(items, rejected, strict=True):
                if bad:
                    del pending_keys[item.id]
            items = [item for item, bad in zip(items, rejected, strict=True) if not bad]
            vectors = vectors[~rejected]
        if items:
            check_vectors(vectors, [i.id for i in items], where)
            if normalize:
                vectors = normalize_rows(vectors)
            if schema is None:
                metadata = new_table_metadata(**provider.metadata(role, normalize), dtype=dtype)
                if store.has_table(table):
                    check_appendable(table, store.metadata(table), metadata)
                schema = embedding_schema(provider.dimension, dtype, store_text, metadata)
            columns = [
                pa.array([i.id for i in items], pa.string()),
                vectors_to_arrow(vectors, dtype),
                pa.array([pending_keys.pop(i.id) for i in items], pa.string()),
            ]
            if store_text:
                columns.append(pa.array([_joined(i) for i in items], pa.string()))
            buffered.append(pa.Table.from_arrays(columns, schema=schema))
            buffered_rows += len(items)
        if policy.due(buffered_rows, time.monotonic() - last_flush):
            flush()

    if plan.to_embed:
        if store.has_table(table):  # fail before any work if the table holds another model
            probe = new_table_metadata(**provider.metadata(role, normalize), dtype=dtype)
            check_appendable(table, store.metadata(table), probe)
        try:
            _run_requests(plan_requests(pending(), provider), provider, role, finished)
        except BadVectors as error:  # found by the provider: add the table
            raise InputError(f"{where}: {error}") from None
        finally:  # the end, an error or Ctrl-C: keep every finished row
            flush()
    else:
        for _ in pending():  # still collect the ids, for the retention below
            pass

    dropped = 0
    if store.has_table(table):
        # A run over part of the source (--limit) keeps the other rows; a full run mirrors it.
        dropped = store.retain(table, None if limit is not None else source_ids)
    return EmbedSummary(
        table=table,
        rows=plan.rows,
        embedded=embedded,
        reused=plan.rows - embedded - skipped_bad,
        skipped_empty=plan.skipped_empty,
        dropped=dropped,
        seconds=round(time.perf_counter() - started, 3),
        skipped_bad=skipped_bad,
    )


def _joined(item: TextItem) -> str:
    return item.text if item.title is None else f"{item.title} {item.text}"


def _run_requests(
    requests: Iterator[list[TextItem]],
    provider: EmbeddingProvider,
    role: Role,
    write: Callable[[list[TextItem], np.ndarray], None],
) -> None:
    """Run requests, ``provider.concurrency`` at a time; hand each to ``write`` as it finishes."""
    workers = max(1, provider.concurrency)
    if workers == 1:
        for items in requests:
            write(items, provider.embed_batch(items, role))
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="madapt-embed") as pool:
        in_flight: dict[Future, list[TextItem]] = {}
        try:
            for items in requests:
                in_flight[pool.submit(provider.embed_batch, items, role)] = items
                while len(in_flight) >= workers * 2:
                    _drain(in_flight, write, return_when=FIRST_COMPLETED)
            while in_flight:
                _drain(in_flight, write, return_when=FIRST_COMPLETED)
        except BaseException:
            for future in in_flight:
                future.cancel()
            raise


def _drain(
    in_flight: dict[Future, list[TextItem]],
    write: Callable[[list[TextItem], np.ndarray], None],
    return_when: str,
) -> None:
    done, _ = wait(list(in_flight), return_when=return_when)
    for future in done:
        items = in_flight.pop(future)
        write(items, future.result())


# --- whole inputs: a BEIR folder or a file into a store ---------------------------------
@dataclass(frozen=True)
class SourceOptions:
    """How to read a SOURCE: its fields, and the table and role a single file fills."""

    table: str | None = None  # a single file only; default "corpus"
    role: Role = "document"  # a single file only
    id_field: str = "id"
    text_field: str = "text"
    title_field: str | None = "title"
    file_format: str | None = None  # jsonl, csv, parquet; default: by the file's name
    skip_empty: bool = False
    use_titles: bool = True


@dataclass(frozen=True)
class EmbedJob:
    table: str
    role: Role
    source: TextSource


def embed_jobs(source: Path, options: SourceOptions) -> list[EmbedJob]:
    """The tables to fill: ``corpus`` and ``queries`` for a BEIR folder, one for a file."""
    if source.is_dir():
        if not BeirDataset.is_beir(source):
            raise InputError(f"{source}: a folder must be a BEIR dataset (corpus.jsonl[.gz])")
        if options.table is not None:
            raise InputError(
                "--table applies to a single file; a BEIR folder fills 'corpus' and 'queries'"
            )
        beir = BeirDataset(source)
        jobs = [EmbedJob("corpus", "document", beir.corpus(options.skip_empty, options.use_titles))]
        queries = beir.queries(options.skip_empty)
        if queries is not None:
            jobs.append(EmbedJob("queries", "query", queries))
        return jobs
    if not source.exists():
        raise InputError(f"{source}: no such file or folder")
    text_source = TextSource(
        source,
        options.id_field,
        options.text_field,
        options.title_field if options.use_titles else None,
        options.file_format,
        options.skip_empty,
    )
    return [EmbedJob(validate_table_name(options.table or "corpus"), options.role, text_source)]


def _plan_jobs(
    source: Path,
    out: Path,
    provider: EmbeddingProvider,
    options: SourceOptions,
    store_format: str | None,
    limit: int | None,
) -> tuple[Store | None, list[EmbedJob], list[EmbedPlan]]:
    """Validate every input against the store (if there is one yet); writes nothing."""
    jobs = embed_jobs(source, options)
    existing = None
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise InputError(
                f"--out {out} exists, is not empty and is not a madapt store (no {MARKER}): "
                "choose a new or empty directory"
            )
        existing = open_store(out, store_format)
    plans = [
        plan_embedding(job.source, provider, existing, job.table, job.role, limit) for job in jobs
    ]
    for job, plan in zip(jobs, plans, strict=True):
        if plan.rows == 0:
            skipped = f" ({plan.skipped_empty} empty ones skipped)" if plan.skipped_empty else ""
            raise InputError(
                f"{job.source.path}: no rows to embed into table '{job.table}'{skipped}"
            )
    return existing, jobs, plans


def run_embed(
    source: Path,
    out: Path,
    provider: EmbeddingProvider,
    options: SourceOptions | None = None,
    *,
    store_format: str | None = None,
    normalize: bool = True,
    dtype: str = "float32",
    store_text: bool = False,
    limit: int | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Validate every input, then embed each into its table; returns the JSON summary."""
    existing, jobs, plans = _plan_jobs(
        source, out, provider, options or SourceOptions(), store_format, limit
    )
    new_folder = not out.exists()
    store = existing or open_store(out, store_format, create=True)
    summaries = []
    try:
        with console.progress(console.RowsPerSecond(), quiet=quiet) as bar:
            for job, plan in zip(jobs, plans, strict=True):
                task = bar.add_task(job.table, total=plan.to_embed)
                summary = embed_source(
                    job.source,
                    provider,
                    store,
                    job.table,
                    job.role,
                    normalize=normalize,
                    dtype=dtype,
                    store_text=store_text,
                    limit=limit,
                    plan=plan,
                    on_progress=lambda n, task=task: bar.advance(task, n),
                )
                summaries.append(summary.to_dict())
    except BaseException:
        if existing is None:
            _remove_if_unused(out, new_folder)
        raise
    stats = provider.stats()
    return {
        "store": str(out),
        "format": store.format,
        "provider": provider.name,
        "model": provider.model,
        "rows_embedded": sum(s["embedded"] for s in summaries),
        "rows_reused": sum(s["reused"] for s in summaries),
        "seconds": round(sum(s["seconds"] for s in summaries), 3),
        "tables": summaries,
        **({"provider_stats": stats} if stats else {}),
    }


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


def estimate_embedding(
    source: Path,
    out: Path,
    provider: EmbeddingProvider,
    options: SourceOptions | None = None,
    *,
    store_format: str | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """What a run would embed and cost (``--dry-run``), without calling the API or writing."""
    from madapt_cli.providers.pricing import estimate_cost, price_per_million

    _, _, plans = _plan_jobs(source, out, provider, options or SourceOptions(), store_format, limit)
    tokens = sum(p.estimated_tokens for p in plans)
    cost = estimate_cost(provider.name, provider.model, tokens)
    return {
        "dry_run": True,
        "provider": provider.name,
        "model": provider.model,
        "rows": sum(p.rows for p in plans),
        "rows_to_embed": sum(p.to_embed for p in plans),
        "rows_reused": sum(p.reused for p in plans),
        "estimated_tokens": tokens,
        "price_per_million_tokens": price_per_million(provider.name, provider.model),
        "estimated_cost_usd": None if cost is None else round(cost, 6),
        "tables": [
            {
                "table": p.table,
                "rows": p.rows,
                "to_embed": p.to_embed,
                "reused": p.reused,
                "skipped_empty": p.skipped_empty,
                "estimated_tokens": p.estimated_tokens,
            }
            for p in plans
        ],
    }
