"""Planning an embed run: which tables a SOURCE fills, what each will embed, what it may cost.

Nothing here writes or calls a provider's API: :func:`plan_jobs` validates every input against
the store (if there is one yet) before :func:`madapt_cli.pipelines.embed.run_embed` writes
anything, and :func:`estimate_embedding` is ``madapt embed --dry-run``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import cached_property
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from madapt_cli.data import BeirDataset, TextItem, TextSource
from madapt_cli.errors import InputError
from madapt_cli.providers.base import EmbeddingProvider, Role
from madapt_cli.providers.remote import RemoteProvider
from madapt_cli.store.base import MARKER, Store, open_store, validate_table_name

if TYPE_CHECKING:  # only an annotation here; importing it would load torch for `--help`
    from madapt_cli.methods.adaptor import Adaptor


@dataclass
class EmbedPlan:
    """What a run will do, known after the validation pass."""

    table: str
    rows: int
    to_embed: int
    reused: int
    skipped_empty: int
    estimated_tokens: int


def row_key(provider: EmbeddingProvider, item: TextItem, role: Role, adaptation: str = "") -> str:
    """The content key stored with a row: the provider's (:meth:`EmbeddingProvider.content_key`),
    covering also ``adaptation`` (the adaptor's fingerprint and sizes of ``embed --adaptor``)
    when there is one, so a row is embedded again when the adaptor changes."""
    key = provider.content_key(item, role)
    if not adaptation:
        return key
    return hashlib.sha256(f"{key}\0{adaptation}".encode()).hexdigest()


def limited(source: Iterable[TextItem], limit: int | None) -> Iterator[TextItem]:
    """The first ``limit`` items of ``source`` (all of them when None)."""
    return iter(source) if limit is None else islice(source, limit)


def plan_embedding(
    source: TextSource,
    provider: EmbeddingProvider,
    store: Store | None,
    table: str,
    role: Role,
    limit: int | None = None,
    adaptation: str = "",
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
        if not stored or stored.get(item.id) != row_key(provider, item, role, adaptation):
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


#: rows a local model's run orders by length at a time (their texts are held in memory)
LENGTH_WINDOW = 65_536


def longest_first(items: Iterable[TextItem], window: int = LENGTH_WINDOW) -> Iterator[TextItem]:
    """``items`` longest text first, ``window`` rows at a time. A local model pads each batch
    to its longest text: whole tables in length order make batches of like lengths, where a
    request sorted on its own (sentence-transformers sorts each) still mixes lengths at the
    edges of every request."""
    iterator = iter(items)
    while chunk := list(islice(iterator, window)):
        chunk.sort(key=lambda item: -len(item.joined))
        yield from chunk


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
    """One table to fill, with the role its texts are embedded as, from one source."""

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


def plan_jobs(
    source: Path,
    out: Path,
    provider: EmbeddingProvider,
    options: SourceOptions,
    store_format: str | None,
    limit: int | None,
    adaptation: str = "",
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
        plan_embedding(job.source, provider, existing, job.table, job.role, limit, adaptation)
        for job in jobs
    ]
    for job, plan in zip(jobs, plans, strict=True):
        if plan.rows == 0:
            skipped = f" ({plan.skipped_empty} empty ones skipped)" if plan.skipped_empty else ""
            raise InputError(
                f"{job.source.path}: no rows to embed into table '{job.table}'{skipped}"
            )
    return existing, jobs, plans


# --- --dry-run ---------------------------------------------------------------------------
@dataclass
class EmbedEstimate:
    """What a run would embed and cost (``--dry-run``)."""

    provider: str
    model: str
    plans: list[EmbedPlan]
    price_per_million_tokens: float | None
    estimated_cost_usd: float | None

    @property
    def rows_to_embed(self) -> int:
        return sum(p.to_embed for p in self.plans)

    @property
    def estimated_tokens(self) -> int:
        return sum(p.estimated_tokens for p in self.plans)

    def to_dict(self) -> dict[str, Any]:
        """The ``--dry-run --json`` document."""
        return {
            "dry_run": True,
            "provider": self.provider,
            "model": self.model,
            "rows": sum(p.rows for p in self.plans),
            "rows_to_embed": self.rows_to_embed,
            "rows_reused": sum(p.reused for p in self.plans),
            "estimated_tokens": self.estimated_tokens,
            "price_per_million_tokens": self.price_per_million_tokens,
            "estimated_cost_usd": self.estimated_cost_usd,
            "tables": [asdict(p) for p in self.plans],
        }


def estimate_embedding(
    source: Path,
    out: Path,
    provider: EmbeddingProvider,
    options: SourceOptions | None = None,
    *,
    store_format: str | None = None,
    limit: int | None = None,
    adaptation: str = "",
) -> EmbedEstimate:
    """What a run would embed and cost (``--dry-run``), without calling the API or writing.
    ``adaptation``: :attr:`VectorOptions.adaptation` of an ``--adaptor`` run (its content
    keys cover the adaptor, so rows stored by it count as stored)."""
    from madapt_cli.providers.pricing import price_per_million

    _, _, plans = plan_jobs(
        source, out, provider, options or SourceOptions(), store_format, limit, adaptation
    )
    price = price_per_million(provider.name, provider.model)
    tokens = sum(p.estimated_tokens for p in plans)
    return EmbedEstimate(
        provider=provider.name,
        model=provider.model,
        plans=plans,
        price_per_million_tokens=price,
        estimated_cost_usd=None if price is None else round(tokens / 1_000_000 * price, 6),
    )


# --- how a run stores what it embeds -------------------------------------------------------
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


def default_backend(out: Path, device: str) -> tuple[str, str]:
    """``madapt embed``'s local backend and precision without ``--backend``/``--precision``:
    those of the store at ``out`` (so a rerun reuses its rows: tables without them were made
    by torch at fp32), else torch at fp32 (docs/benchmarks.md has the measurements behind
    it; ``device`` is kept for a GPU rule)."""
    del device
    if out.is_dir() and (out / MARKER).is_file():
        store = open_store(out)
        for table in store.tables():
            metadata = store.metadata(table)
            if metadata.get("provider") == "local":
                return str(metadata.get("backend", "torch")), str(metadata.get("precision", "fp32"))
    return "torch", "fp32"


@dataclass(frozen=True)
class VectorOptions:
    """How the vectors of a run are stored. With an ``adaptor`` (``embed --adaptor``), each
    row also gets ``vector_<d>`` for each of ``dims`` (as `madapt apply` writes them), and
    the raw ``vector`` only when ``raw``."""

    normalize: bool = True  # L2-normalise each vector
    dtype: str = "float32"  # or float16
    store_text: bool = False  # keep the embedded text in a column
    adaptor: Adaptor | None = None
    dims: tuple[int, ...] = ()
    raw: bool = True

    @cached_property
    def adaptation(self) -> str:
        """What the content keys cover besides the provider's: the adaptor's fingerprint,
        the sizes and whether the raw vector is kept ("" without an adaptor)."""
        if self.adaptor is None:
            return ""
        return json.dumps(
            {"adaptor": self.adaptor.fingerprint, "dims": list(self.dims), "raw": self.raw},
            sort_keys=True,
        )
