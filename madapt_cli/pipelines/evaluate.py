"""`madapt eval`: every method at every size over a store, as a report."""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from madapt_cli.errors import InputError, StoreError
from madapt_cli.retrieval.metrics import (
    DEFAULT_METRICS,
    RELEVANCE_LEVEL,
    Judgments,
    _parsed,
    score_indices,
    trec_tie_order,
)
from madapt_cli.retrieval.search import ArrayLike, PrefixTopK, _as_tensor, identical_id_exclusions
from madapt_cli.util.device import resolve_device
from madapt_cli.util.dims import parse_dims
from madapt_cli.util.hashing import file_fingerprint

# --- `madapt eval`: methods x sizes over a store ---------------------------------------------
BASELINES = ("truncate", "pca")


DEFAULT_DIMS = (64, 128, 256)


@dataclass
class ResultRow:
    """One method at one size."""

    method: str
    dim: int
    metrics: dict[str, float]
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "dim": self.dim, "metrics": self.metrics}


@dataclass
class EvaluationReport:
    """What `madapt eval` measured, and with what (for reports)."""

    store: str
    qrels: str
    num_queries: int
    dimension: int
    dims: list[int]
    metrics: list[str]
    results: list[ResultRow]
    methods: list[dict[str, Any]]  # name, kind (baseline|adaptor), path, fingerprint
    settings: dict[str, Any]
    fingerprints: dict[str, str]
    warnings: list[str]
    seconds: dict[str, float]

    def summary(self) -> dict[str, Any]:
        """The ``--json`` document (a stable shape scripts rely on)."""
        return {
            "store": self.store,
            "qrels": self.qrels,
            "num_queries": self.num_queries,
            "results": [row.to_json() for row in self.results],
        }

    def to_json(self) -> dict[str, Any]:
        """:meth:`summary` plus settings, methods, fingerprints, warnings and timings."""
        return {
            **self.summary(),
            "dimension": self.dimension,
            "dims": self.dims,
            "metrics": self.metrics,
            "methods": self.methods,
            "settings": self.settings,
            "fingerprints": self.fingerprints,
            "warnings": self.warnings,
            "seconds": self.seconds,
        }

    def value(self, method: str, dim: int, metric: str) -> float | None:
        for row in self.results:
            if row.method == method and row.dim == dim:
                return row.metrics.get(metric)
        return None


def table_fingerprint(store: Any, table: str) -> str:
    """sha256 over a table's model identity and its (id, text_sha256) rows: changes when the
    texts, their ids or the embedding model change, without hashing gigabytes of vectors."""
    metadata = store.metadata(table)
    digest = hashlib.sha256()
    identity = {k: metadata.get(k) for k in ("provider", "model", "dimension", "normalized")}
    digest.update(json.dumps(identity, sort_keys=True).encode())
    columns = ["id", "text_sha256"] if "text_sha256" in store.schema(table).names else ["id"]
    for batch in store.iter_batches(table, columns=columns):
        for values in zip(*(batch.column(i).to_pylist() for i in range(len(columns))), strict=True):
            digest.update("\t".join(str(v) for v in values).encode("utf-8") + b"\n")
    return digest.hexdigest()


PCA_FIT_ROWS = 200_000


def _pca_baseline(corpus: ArrayLike, dimension: int, max_rows: int | None = PCA_FIT_ROWS) -> Any:
    """The PCA map of :func:`madapt_cli.adaptor.fit_pca` (as `madapt fit --method pca` makes
    it), fitted on the whole corpus or, above ``max_rows`` rows, on ``max_rows`` evenly spaced
    ones: the principal axes of 768-d vectors are settled long before that, and the fit's
    float64 products would otherwise cost more than the searches. A tensor is reduced on its
    own device."""
    from madapt_cli.methods.adaptor import Adaptor
    from madapt_cli.methods.pca import fit_pca

    if max_rows is not None and len(corpus) > max_rows:
        rows = np.linspace(0, len(corpus) - 1, max_rows).round().astype(np.int64)
        corpus = (
            corpus[torch.from_numpy(rows).to(corpus.device)]
            if isinstance(corpus, torch.Tensor)
            else corpus[rows]
        )
    batches = (corpus[start : start + 65_536] for start in range(0, len(corpus), 65_536))
    config = {"name": "pca", "method": "pca", "dimension": dimension}
    return Adaptor(fit_pca(batches, dimension), config)


def _has_relevant(judged: Mapping[str, int]) -> bool:
    return any(grade >= RELEVANCE_LEVEL for grade in judged.values())


def _read_ids(store: Any, table: str) -> list[str]:
    ids: list[str] = []
    for batch in store.iter_batches(table, columns=["id"]):
        ids.extend(batch.column(0).to_pylist())
    return ids


def _vector_batches(store: Any, table: str) -> Iterator[tuple[list[str], np.ndarray]]:
    """(ids, float32 vectors) of each stored batch of ``table``, in row order; a NaN,
    infinite or all-zero vector stops the read (:meth:`Store.iter_vectors` checks them)."""
    yield from store.iter_vectors(table)


def _read_ahead(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """``items``, produced by a thread that runs up to ``depth`` items ahead of the consumer.

    Decoding Parquet releases the GIL, so the reading overlaps the searches of the batches
    already read. The producer's exception is raised in the consumer; if the consumer stops
    early, the producer stops at its next item.
    """
    done = object()
    buffer: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    failure: list[BaseException] = []

    def hand_over(item: Any) -> bool:
        """Wait for room, unless the consumer has stopped; False if it has."""
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not hand_over(item):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            failure.append(error)
        finally:
            hand_over(done)

    producer = threading.Thread(target=produce, name="madapt-read-ahead", daemon=True)
    producer.start()
    try:
        while (item := buffer.get()) is not done:
            yield item
        if failure:
            raise failure[0]
    finally:
        stop.set()
        producer.join(timeout=5)


ProgressCallback = Callable[[str, int], None]


def run_evaluation(
    store_path: str | Path,
    qrels_path: str | Path,
    dims: str | Iterable[int] | None = None,
    *,
    adaptors: Sequence[str | Path] = (),
    baselines: Sequence[str] | None = None,
    metrics: str | Sequence[str] = DEFAULT_METRICS,
    ignore_identical_ids: bool = False,
    device: str = "auto",
    corpus_table: str = "corpus",
    queries_table: str = "queries",
    fingerprints: bool = False,
    pca_fit_rows: int | None = PCA_FIT_ROWS,
    on_start: Callable[[int], None] | None = None,
    on_progress: ProgressCallback | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> EvaluationReport:
    """Exact cosine search of the qrels' queries against the corpus for every method and size.

    Methods: the ``baselines`` (``truncate``: the first m coordinates; ``pca``: the corpus'
    principal axes, fitted here with :func:`madapt_cli.adaptor.fit_pca` on at most
    ``pca_fit_rows`` evenly spaced rows; default both) and each adaptor directory. Each
    method maps the corpus once at full size; each size m then takes the first m coordinates
    and re-normalises (all sizes in one pass: :class:`PrefixTopK`). ``truncate`` at
    the full dimension D is always included: the original vectors, the reference row.

    The corpus is read batch by batch in a thread that runs ahead, and truncation and the
    adaptors search each batch as it arrives, so their searches overlap the read. PCA is fitted
    once the whole corpus is in memory (on the device), then searched.

    ``dims``: sizes (default: those of 64, 128, 256 below D). ``metrics``: names like
    ``ndcg@10``. ``device``: ``auto`` takes the GPU when there is one. ``fingerprints``:
    also hash the qrels file, tables and adaptor files (for reports).
    ``on_start(n)`` once the n (method, size) rows to compute are known;
    ``on_progress(method, dim)`` after each size; ``on_warning(message)`` for each warning
    (also kept in the report).
    """
    from madapt_cli.data import read_qrels
    from madapt_cli.methods.adaptor import CONFIG_FILE, WEIGHTS_FILE, Adaptor
    from madapt_cli.store.base import open_store

    started = time.perf_counter()
    warning_lines: list[str] = []

    def warn(message: str) -> None:
        warning_lines.append(message)
        if on_warning is not None:
            on_warning(message)

    parsed_metrics = _parsed(metrics)
    chosen_baselines = list(dict.fromkeys(baselines or ["truncate", "pca"]))
    for baseline in chosen_baselines:
        if baseline not in BASELINES:
            raise InputError(f"unknown --baseline {baseline!r}: use {' or '.join(BASELINES)}")
    torch_device = resolve_device(device)
    qrels = read_qrels(qrels_path)
    store = open_store(store_path)
    store.require_table(corpus_table)
    store.require_table(queries_table)
    corpus_meta, query_meta = store.metadata(corpus_table), store.metadata(queries_table)
    for key in ("model", "dimension"):
        if key in corpus_meta and key in query_meta and corpus_meta[key] != query_meta[key]:
            raise InputError(
                f"tables '{queries_table}' and '{corpus_table}' differ in {key}: "
                f"{query_meta[key]!r} vs {corpus_meta[key]!r}"
            )
    dimension = store.schema(corpus_table).field("vector").type.list_size
    sizes = parse_dims(
        dims if dims is not None else [d for d in DEFAULT_DIMS if d < dimension] or [dimension],
        dimension,
    )

    loaded: list[Any] = []
    for path in adaptors:
        adaptor = Adaptor.load(path)
        adaptor.check_vectors_metadata(corpus_meta, what=f"the vectors of table '{corpus_table}'")
        adaptor.check_vectors_metadata(query_meta, what=f"the vectors of table '{queries_table}'")
        loaded.append((Path(path), adaptor))

    read_started = time.perf_counter()
    all_query_ids, all_queries = store.read_vectors(queries_table)
    position = {query_id: row for row, query_id in enumerate(all_query_ids)}
    query_ids = [q for q in qrels if q in position]
    missing_queries = len(qrels) - len(query_ids)
    if not query_ids:
        raise InputError(
            f"none of the {len(qrels):,} queries in {qrels_path} has a vector in table "
            f"'{queries_table}' of {store_path} (is it the right qrels file or store?)"
        )
    if missing_queries:
        warn(
            f"{missing_queries:,} of {len(qrels):,} qrels queries have no vector in table "
            f"'{queries_table}'; evaluating the other {len(query_ids):,}"
        )
    unjudged = [q for q in query_ids if not _has_relevant(qrels[q])]
    if unjudged:
        warn(
            f"{len(unjudged):,} of {len(query_ids):,} queries (e.g. {unjudged[0]!r}) have no "
            f"judgement of relevance >= {RELEVANCE_LEVEL}: they score 0 on every metric and "
            "count in the means, as in trec_eval"
        )
    queries = all_queries[[position[q] for q in query_ids]]
    del all_queries
    num_docs = store.num_rows(corpus_table)
    if not num_docs:
        raise InputError(f"table '{corpus_table}' of {store_path} is empty")
    depth = max(m.k for m in parsed_metrics)
    exclude = None
    if ignore_identical_ids:  # needs the corpus rows of the ids before the search starts
        exclude = identical_id_exclusions(query_ids, _read_ids(store, corpus_table))

    methods: list[tuple[str, dict[str, Any], Any]] = []
    names: set[str] = set()
    # truncate always runs: at least at full size, the reference row
    for baseline in ["truncate", *(b for b in chosen_baselines if b != "truncate")]:
        methods.append((baseline, {"name": baseline, "kind": "baseline"}, baseline))
        names.add(baseline)
    for path, adaptor in loaded:
        name = adaptor.name if adaptor.name not in names else str(path)
        if name in names:
            raise InputError(f"adaptor {path} is given twice")
        names.add(name)
        entry: dict[str, Any] = {"name": name, "kind": "adaptor", "path": str(path)}
        entry["method"] = adaptor.method
        if fingerprints:
            entry["fingerprint"] = file_fingerprint(path / CONFIG_FILE, path / WEIGHTS_FILE)
        methods.append((name, entry, adaptor))

    truncate_sizes = sorted({*sizes, dimension} if "truncate" in chosen_baselines else {dimension})
    sizes_of = {name: truncate_sizes if how == "truncate" else sizes for name, _, how in methods}
    if on_start is not None:
        on_start(sum(len(s) for s in sizes_of.values()))
    query_tensor = _as_tensor(queries, torch_device)
    seconds_of: dict[str, float] = dict.fromkeys(sizes_of, 0.0)

    def start_search(name: str, mapped_queries: torch.Tensor) -> PrefixTopK:
        return PrefixTopK(mapped_queries, depth, num_docs, sizes_of[name], exclude=exclude)

    # Truncation and the adaptors search each corpus batch as it is read (the reading runs
    # ahead in a thread), so their searches overlap the read; PCA must see the corpus first.
    searches: dict[str, PrefixTopK] = {}
    streamed: list[tuple[str, Any]] = []
    for name, _entry, how in methods:
        if how == "pca":
            continue
        if how != "truncate":
            how.to(torch_device)
        searches[name] = start_search(
            name, query_tensor if how == "truncate" else how.transform(query_tensor)
        )
        streamed.append((name, how))
    kept_corpus = (
        torch.empty((num_docs, dimension), device=torch_device)
        if "pca" in chosen_baselines
        else None
    )
    corpus_ids: list[str] = []
    for ids, vectors in _read_ahead(_vector_batches(store, corpus_table)):
        if len(corpus_ids) + len(ids) > num_docs:
            raise StoreError(f"table '{corpus_table}' of {store_path} changed while being read")
        chunk = _as_tensor(vectors, torch_device)
        if kept_corpus is not None:
            kept_corpus[len(corpus_ids) : len(corpus_ids) + len(ids)] = chunk
        corpus_ids.extend(ids)
        for name, how in streamed:
            method_started = time.perf_counter()
            searches[name].add(chunk if how == "truncate" else how.transform(chunk))
            seconds_of[name] += time.perf_counter() - method_started
    if len(corpus_ids) != num_docs:
        raise StoreError(f"table '{corpus_table}' of {store_path} changed while being read")
    read_seconds = time.perf_counter() - read_started

    prepare_seconds: dict[str, float] = {}
    if kept_corpus is not None:
        method_started = time.perf_counter()
        pca = _pca_baseline(kept_corpus, dimension, pca_fit_rows).to(torch_device)
        searches["pca"] = start_search("pca", pca.transform(query_tensor))
        prepare_seconds["pca"] = time.perf_counter() - method_started
        method_started = time.perf_counter()
        searches["pca"].add(pca.transform(kept_corpus))
        seconds_of["pca"] += time.perf_counter() - method_started
        del kept_corpus

    judgments = Judgments.build(query_ids, corpus_ids, qrels, depth)
    if judgments.missing_docs:
        warn(
            f"{judgments.missing_docs:,} judged documents are not in table '{corpus_table}' "
            "(they count as relevant and never retrieved, as in trec_eval)"
        )
    results: list[ResultRow] = []
    for name, _entry, _how in methods:
        scoring_started = time.perf_counter()
        found = searches.pop(name).result()
        for dim in sizes_of[name]:
            ranked = trec_tie_order(found[dim][0], found[dim][1], corpus_ids)
            scores = score_indices(ranked, judgments, parsed_metrics)
            means = {label: float(values.mean()) for label, values in scores.items()}
            seconds = (seconds_of[name] + time.perf_counter() - scoring_started) / len(
                sizes_of[name]
            )
            results.append(ResultRow(name, dim, means, seconds))
            if on_progress is not None:
                on_progress(name, dim)

    fingerprint_values: dict[str, str] = {}
    if fingerprints:
        fingerprint_values = {
            "qrels_sha256": file_fingerprint(Path(qrels_path)),
            f"{corpus_table}_sha256": table_fingerprint(store, corpus_table),
            f"{queries_table}_sha256": table_fingerprint(store, queries_table),
        }
    return EvaluationReport(
        store=str(store_path),
        qrels=str(qrels_path),
        num_queries=len(query_ids),
        dimension=dimension,
        dims=sizes,
        metrics=[m.label for m in parsed_metrics],
        results=results,
        methods=[entry for _, entry, _ in methods],
        settings={
            "corpus_table": corpus_table,
            "queries_table": queries_table,
            "corpus_rows": len(corpus_ids),
            "qrels_queries": len(qrels),
            "provider": corpus_meta.get("provider"),
            "model": corpus_meta.get("model"),
            "ignore_identical_ids": ignore_identical_ids,
            "device": str(torch_device),
            "search": "exact cosine (dot product of re-normalised prefixes)",
            "pca_fit_rows": min(len(corpus_ids), pca_fit_rows or len(corpus_ids))
            if "pca" in chosen_baselines
            else None,
        },
        fingerprints=fingerprint_values,
        warnings=warning_lines,
        seconds={
            "read_and_streamed_search": round(read_seconds, 3),
            **{f"prepare_{k}": round(v, 3) for k, v in prepare_seconds.items()},
            "search_and_score": round(sum(r.seconds for r in results), 3),
            "total": round(time.perf_counter() - started, 3),
        },
    )
