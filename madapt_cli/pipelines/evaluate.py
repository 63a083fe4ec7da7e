"""`madapt eval`: every method at every size over a store, as a report.

The work only, no printing: :func:`run_evaluation` reports progress as
:class:`~madapt_cli.util.progress.ProgressEvent` s (task ``eval``, one unit per (method, size)
scored) and hands each warning to ``on_warning`` (warnings are also kept in the report).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from madapt_cli.data import read_qrels
from madapt_cli.errors import InputError, StoreError
from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.pipelines.eval_precision import (
    DEFAULT_INT8_CALIBRATION,
    PrecisionGrid,
    precision_options,
)
from madapt_cli.pipelines.eval_results import EvaluationReport, ResultRow
from madapt_cli.pipelines.eval_sources import (
    PCA_FIT_ROWS,
    EvalMethod,
    adaptor_methods,
    pca_baseline,
    stored_columns,
)
from madapt_cli.retrieval.metrics import (
    DEFAULT_METRICS,
    RELEVANCE_LEVEL,
    Judgments,
    as_metrics,
    score_indices,
    trec_tie_order,
)
from madapt_cli.retrieval.search import PrefixTopK, as_tensor, identical_id_exclusions
from madapt_cli.store.base import VECTOR_COLUMN, check_tables_agree, open_store, table_fingerprint
from madapt_cli.training.anchors import learned_overlap
from madapt_cli.util.device import resolve_device
from madapt_cli.util.dims import parse_dims
from madapt_cli.util.hashing import file_fingerprint
from madapt_cli.util.progress import Progress, ProgressEvent, report
from madapt_cli.util.read_ahead import read_ahead

__all__ = [
    "BASELINES",
    "DEFAULT_DIMS",
    "PCA_FIT_ROWS",
    "EvalOptions",
    "EvaluationReport",
    "ResultRow",
    "pca_baseline",
    "read_ahead",
    "run_evaluation",
    "stored_columns",
]

BASELINES = ("truncate", "pca")


DEFAULT_DIMS = (64, 128, 256)


@dataclass
class EvalOptions:
    """What `madapt eval` evaluates, and how; the defaults are the command's.

    ``dims``: sizes (default: those of 64, 128, 256 below D). ``adaptors``: adaptor
    directories. ``baselines``: ``truncate`` and/or ``pca`` (default both). ``metrics``: names
    like ``ndcg@10``. ``device``: ``auto`` takes the GPU when there is one. ``fingerprints``:
    also hash the qrels file, the tables and the adaptors (for reports). ``pca_fit_rows``: the
    PCA baseline is fitted on at most this many evenly spaced corpus rows (None: all).
    """

    dims: str | Iterable[int] | None = None
    adaptors: Sequence[str | Path] = ()
    baselines: Sequence[str] | None = None
    metrics: str | Sequence[str] = DEFAULT_METRICS
    ignore_identical_ids: bool = False
    device: str = "auto"
    corpus_table: str = "corpus"
    queries_table: str = "queries"
    fingerprints: bool = False
    pca_fit_rows: int | None = PCA_FIT_ROWS
    #: stored columns to evaluate as they are (an applied store's ``vector_64``...); None:
    #: ``vector`` when the corpus has it, else every vector column of the store
    vector_columns: Sequence[str] | None = None
    #: stored precisions besides float32 (``eval_precision``): each (method, size) also as
    #: float16 / int8 / binary codes, scored symmetric, asymmetric or both, and with
    #: ``rescore`` N > 0 also N x k symmetric candidates re-ranked by the float query
    precisions: str | Sequence[str] | None = None
    scoring: str = "both"
    rescore: int = 0
    int8_calibration: str = DEFAULT_INT8_CALIBRATION


def _has_relevant(judged: dict[str, int]) -> bool:
    return any(grade >= RELEVANCE_LEVEL for grade in judged.values())


def run_evaluation(
    store_path: str | Path,
    qrels_path: str | Path,
    options: EvalOptions | None = None,
    *,
    progress: Progress | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> EvaluationReport:
    """Exact cosine search of the qrels' queries against the corpus for every method and size.

    Methods: the baselines (``truncate``: the first m coordinates; ``pca``: the corpus'
    principal axes, fitted here by :func:`pca_baseline`) and each adaptor directory of
    ``options`` (:class:`EvalOptions`). Each method maps the corpus once at full size; each size
    m then takes the first m coordinates and re-normalises (all sizes in one pass:
    :class:`PrefixTopK`). ``truncate`` at the full dimension D is always included: the original
    vectors, the reference row.

    The corpus is read batch by batch in a thread that runs ahead, and truncation and the
    adaptors search each batch as it arrives, so their searches overlap the read. PCA is fitted
    once the whole corpus is in memory (on the device), then searched.

    ``progress`` gets task ``eval`` events: 0 of the (method, size) rows once they are known,
    then one more after each is scored (``message`` ``method@size``). ``on_warning(message)``
    for each warning (also kept in the report).
    """
    run = _Evaluation(store_path, qrels_path, options or EvalOptions(), on_warning)
    run.open()
    if run.stored:
        return _evaluate_stored_columns(run, progress)
    run.read_queries()
    run.plan_methods()
    total = sum(len(method.sizes) for method in run.methods)
    report(progress, ProgressEvent("eval", 0, total, unit="sizes"))
    run.search()
    return run.build_report(run.score(progress, total))


class _Evaluation:
    """One `madapt eval` run, stage by stage (each stage sets what the next one reads)."""

    def __init__(
        self,
        store_path: str | Path,
        qrels_path: str | Path,
        options: EvalOptions,
        on_warning: Callable[[str], None] | None,
    ) -> None:
        self.started = time.perf_counter()
        self.store_path, self.qrels_path, self.options = store_path, qrels_path, options
        self.on_warning = on_warning
        self.warnings: list[str] = []
        self.prepare_seconds: dict[str, float] = {}
        self.column = VECTOR_COLUMN  # the stored column searched
        self.stored: dict[str, int] = {}  # stored columns evaluated as they are -> size
        self.calibrations: dict[str, dict[str, Any]] = {}  # int8, method -> size -> ranges

    def warn(self, message: str) -> None:
        if message in self.warnings:  # the same for each stored column: once
            return
        self.warnings.append(message)
        if self.on_warning is not None:
            self.on_warning(message)

    def open(self) -> None:
        """Check the options, the qrels, the store and the adaptors before reading vectors."""
        options = self.options
        self.metrics = as_metrics(options.metrics)
        self.baselines = list(dict.fromkeys(options.baselines or ["truncate", "pca"]))
        for baseline in self.baselines:
            if baseline not in BASELINES:
                raise InputError(f"unknown --baseline {baseline!r}: use {' or '.join(BASELINES)}")
        self.device = resolve_device(options.device)
        self.precisions, self.scorings = precision_options(options)
        self.qrels = read_qrels(self.qrels_path)
        self.store = store = open_store(self.store_path)
        store.require_table(options.corpus_table)
        store.require_table(options.queries_table)
        check_tables_agree(store, options.queries_table, options.corpus_table)
        self.corpus_meta = store.metadata(options.corpus_table)
        query_meta = store.metadata(options.queries_table)
        self.adaptors: list[tuple[Path, Adaptor]] = []
        self.stored = stored_columns(store, options)
        if self.stored:
            return
        self.dimension = dimension = (
            store.schema(options.corpus_table).field(VECTOR_COLUMN).type.list_size
        )
        self.sizes = parse_dims(
            options.dims
            if options.dims is not None
            else [d for d in DEFAULT_DIMS if d < dimension] or [dimension],
            dimension,
        )
        for path in options.adaptors:
            adaptor = Adaptor.load(path)
            adaptor.check_vectors_metadata(
                self.corpus_meta, what=f"the vectors of table '{options.corpus_table}'"
            )
            adaptor.check_vectors_metadata(
                query_meta, what=f"the vectors of table '{options.queries_table}'"
            )
            self.adaptors.append((Path(path), adaptor))

    def read_queries(self) -> None:
        """The vectors of the qrels' queries (warning about the others), and the corpus size."""
        options, qrels = self.options, self.qrels
        self.read_started = time.perf_counter()
        all_query_ids, all_queries = self.store.read_vectors(options.queries_table, self.column)
        position = {query_id: row for row, query_id in enumerate(all_query_ids)}
        self.query_ids = query_ids = [q for q in qrels if q in position]
        missing_queries = len(qrels) - len(query_ids)
        if not query_ids:
            raise InputError(
                f"none of the {len(qrels):,} queries in {self.qrels_path} has a vector in table "
                f"'{options.queries_table}' of {self.store_path} (is it the right qrels file or "
                "store?)"
            )
        if missing_queries:
            self.warn(
                f"{missing_queries:,} of {len(qrels):,} qrels queries have no vector in table "
                f"'{options.queries_table}'; evaluating the other {len(query_ids):,}"
            )
        unjudged = [q for q in query_ids if not _has_relevant(qrels[q])]
        if unjudged:
            self.warn(
                f"{len(unjudged):,} of {len(query_ids):,} queries (e.g. {unjudged[0]!r}) have no "
                f"judgement of relevance >= {RELEVANCE_LEVEL}: they score 0 on every metric and "
                "count in the means, as in trec_eval"
            )
        for path, adaptor in self.adaptors:  # leakage: queries an adaptor learned from
            learned = learned_overlap(adaptor.config.get("learned_from_queries"), query_ids)
            if learned:
                self.warn(
                    f"adaptor {adaptor.name!r} ({path}) learned from {learned:,} of the "
                    f"{len(query_ids):,} evaluated queries (unlabelled, as distillation "
                    "anchors): its figures on them are optimistic; evaluate on queries it did "
                    "not learn from (fit with --query-ids of the train split)"
                )
        self.queries = all_queries[[position[q] for q in query_ids]]
        self.num_docs = self.store.num_rows(options.corpus_table)
        if not self.num_docs:
            raise InputError(f"table '{options.corpus_table}' of {self.store_path} is empty")
        self.depth = max(m.k for m in self.metrics)
        self.exclude = None
        if options.ignore_identical_ids:  # needs the corpus rows of the ids before the search
            corpus_ids = self.store.read_ids(options.corpus_table)
            self.exclude = identical_id_exclusions(query_ids, corpus_ids)

    def plan_methods(self) -> None:
        """The methods in report order, each with its sizes; truncate always runs, at least at
        full size: the reference row."""
        planned: list[tuple[str, dict[str, Any], Any]] = []
        names: set[str] = set()
        for baseline in ["truncate", *(b for b in self.baselines if b != "truncate")]:
            planned.append((baseline, {"name": baseline, "kind": "baseline"}, baseline))
            names.add(baseline)
        for path, adaptor in self.adaptors:
            name = adaptor.name if adaptor.name not in names else str(path)
            if name in names:
                raise InputError(f"adaptor {path} is given twice")
            names.add(name)
            entry: dict[str, Any] = {"name": name, "kind": "adaptor", "path": str(path)}
            entry["method"] = adaptor.method
            if self.options.fingerprints:
                entry["fingerprint"] = adaptor.fingerprint
            planned.append((name, entry, adaptor))
        full = self.dimension
        truncate_sizes = sorted({*self.sizes, full} if "truncate" in self.baselines else {full})
        self.methods = []
        for name, entry, how in planned:
            if isinstance(how, Adaptor):
                self.methods += adaptor_methods(name, entry, how, self.sizes)
            else:
                sizes = truncate_sizes if how == "truncate" else self.sizes
                self.methods.append(EvalMethod(name, entry, how, sizes))

    def _start_search(self, method: EvalMethod, mapped_queries: torch.Tensor) -> PrefixTopK:
        return PrefixTopK(
            mapped_queries, self.depth, self.num_docs, method.sizes, exclude=self.exclude
        )

    def search(self) -> None:
        """Every method's top ``depth`` at each of its sizes. Truncation and the adaptors
        search each corpus batch as it is read (the reading runs ahead in a thread), so their
        searches overlap the read; PCA must see the corpus first."""
        self.query_tensor = query_tensor = as_tensor(self.queries, self.device)
        self.seconds_of = dict.fromkeys((method.key for method in self.methods), 0.0)
        self.searches: dict[str, PrefixTopK] = {}
        streamed: list[EvalMethod] = []
        for method in self.methods:
            if method.how == "pca":
                continue
            if method.how != "truncate":
                method.how.to(self.device)
            mapped = (
                query_tensor if method.how == "truncate" else method.how.transform(query_tensor)
            )
            self.searches[method.key] = self._start_search(method, mapped)
            streamed.append(method)
        kept_corpus = (  # PCA and the lower precisions need the whole corpus
            torch.empty((self.num_docs, self.dimension), device=self.device)
            if "pca" in self.baselines or len(self.precisions) > 1
            else None
        )
        self._stream_corpus(streamed, kept_corpus)
        self.read_seconds = time.perf_counter() - self.read_started
        self.kept_corpus = kept_corpus
        if "pca" in self.baselines and kept_corpus is not None:
            self._search_pca(query_tensor, kept_corpus)

    def _stream_corpus(self, streamed: list[EvalMethod], kept_corpus: torch.Tensor | None) -> None:
        """Read the corpus once, feeding each batch to the streamed searches (and keeping it
        in ``kept_corpus`` for PCA)."""
        table = self.options.corpus_table
        changed = f"table '{table}' of {self.store_path} changed while being read"
        self.corpus_ids = corpus_ids = []
        for ids, vectors in read_ahead(self.store.iter_vectors(table, self.column)):
            if len(corpus_ids) + len(ids) > self.num_docs:
                raise StoreError(changed)
            chunk = as_tensor(vectors, self.device)
            if kept_corpus is not None:
                kept_corpus[len(corpus_ids) : len(corpus_ids) + len(ids)] = chunk
            corpus_ids.extend(ids)
            for method in streamed:
                method_started = time.perf_counter()
                how = method.how
                self.searches[method.key].add(chunk if how == "truncate" else how.transform(chunk))
                self.seconds_of[method.key] += time.perf_counter() - method_started
        if len(corpus_ids) != self.num_docs:
            raise StoreError(changed)

    def _search_pca(self, query_tensor: torch.Tensor, kept_corpus: torch.Tensor) -> None:
        (method,) = (m for m in self.methods if m.how == "pca")
        method_started = time.perf_counter()
        pca = pca_baseline(kept_corpus, self.dimension, self.options.pca_fit_rows)
        self.pca = pca = pca.to(self.device)
        self.searches["pca"] = self._start_search(method, pca.transform(query_tensor))
        self.prepare_seconds["pca"] = time.perf_counter() - method_started
        method_started = time.perf_counter()
        self.searches["pca"].add(pca.transform(kept_corpus))
        self.seconds_of["pca"] += time.perf_counter() - method_started

    def score(self, progress: Progress | None, total: int) -> list[ResultRow]:
        """Each method's mean metrics at each of its sizes, in trec_eval's reading."""
        judgments = Judgments.build(self.query_ids, self.corpus_ids, self.qrels, self.depth)
        if judgments.missing_docs:
            self.warn(
                f"{judgments.missing_docs:,} judged documents are not in table "
                f"'{self.options.corpus_table}' (they count as relevant and never retrieved, "
                "as in trec_eval)"
            )
        results: list[ResultRow] = []
        grid = self._grid(judgments)
        done = 0
        for method in self.methods:
            scoring_started = time.perf_counter()
            found = self.searches.pop(method.key).result()
            mapped = self._mapped(method) if grid is not None else None
            for dim in method.sizes:
                ranked = trec_tie_order(found[dim][0], found[dim][1], self.corpus_ids)
                scores = score_indices(ranked, judgments, self.metrics)
                means = {label: float(values.mean()) for label, values in scores.items()}
                elapsed = self.seconds_of[method.key] + time.perf_counter() - scoring_started
                precision = "float32" if grid is not None else None
                row = ResultRow(method.name, dim, means, elapsed / len(method.sizes), precision)
                results.append(row)
                if grid is not None and mapped is not None:
                    results += grid.rows(method.name, dim, *mapped)
                done += 1
                event = ProgressEvent(
                    "eval", done, total, "sizes", f"{method.name}@{dim}", finished=done == total
                )
                report(progress, event)
        return results

    def _grid(self, judgments: Judgments) -> PrecisionGrid | None:
        """The lower-precision cells' settings, or None when only float32 is evaluated; the
        calibrations of every call go to one dict (the stored columns score one by one)."""
        if not self.precisions:
            return None
        return PrecisionGrid(
            self.precisions,
            self.scorings,
            self.options.rescore,
            self.options.int8_calibration,
            judgments,
            self.metrics,
            self.corpus_ids,
            self.depth,
            self.exclude,
            self.device,
            calibrations=self.calibrations,
        )

    def _mapped(self, method: EvalMethod) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The method's full-size (queries, corpus), for the lower precisions."""
        if self.kept_corpus is None:
            return None
        how = self.pca if method.how == "pca" else method.how
        if how == "truncate":
            return self.query_tensor, self.kept_corpus
        return how.transform(self.query_tensor), how.transform(self.kept_corpus)

    def build_report(self, results: list[ResultRow]) -> EvaluationReport:
        options, corpus_rows = self.options, len(self.corpus_ids)
        fingerprints: dict[str, str] = {}
        if options.fingerprints:
            fingerprints = {
                "qrels_sha256": file_fingerprint(Path(self.qrels_path)),
                f"{options.corpus_table}_sha256": table_fingerprint(
                    self.store, options.corpus_table
                ),
                f"{options.queries_table}_sha256": table_fingerprint(
                    self.store, options.queries_table
                ),
            }
        pca_rows = options.pca_fit_rows or corpus_rows
        return EvaluationReport(
            store=str(self.store_path),
            qrels=str(self.qrels_path),
            num_queries=len(self.query_ids),
            dimension=self.dimension,
            dims=self.sizes,
            metrics=[m.label for m in self.metrics],
            results=results,
            methods=list({method.name: method.entry for method in self.methods}.values()),
            settings={
                "corpus_table": options.corpus_table,
                "queries_table": options.queries_table,
                "corpus_rows": corpus_rows,
                "qrels_queries": len(self.qrels),
                "provider": self.corpus_meta.get("provider"),
                "model": self.corpus_meta.get("model"),
                "ignore_identical_ids": options.ignore_identical_ids,
                "device": str(self.device),
                "search": "exact cosine (dot product of re-normalised prefixes)",
                "pca_fit_rows": min(corpus_rows, pca_rows) if "pca" in self.baselines else None,
                **self._precision_settings(),
            },
            fingerprints=fingerprints,
            warnings=self.warnings,
            seconds={
                "read_and_streamed_search": round(self.read_seconds, 3),
                **{f"prepare_{k}": round(v, 3) for k, v in self.prepare_seconds.items()},
                "search_and_score": round(sum(r.seconds for r in results), 3),
                "total": round(time.perf_counter() - self.started, 3),
            },
            precisions=self.precisions,
            calibrations=self.calibrations,
        )

    def _precision_settings(self) -> dict[str, Any]:
        if not self.precisions:
            return {}
        return {
            "scoring": self.scorings,
            "rescore": self.options.rescore,
            "int8_calibration": self.options.int8_calibration
            if "int8" in self.precisions
            else None,
        }


# --- stored columns: an applied store's vector_<d>, evaluated as they are -----------------
def _evaluate_stored_columns(run: _Evaluation, progress: Progress | None) -> EvaluationReport:
    """Each stored column searched at its own size, as a database would search it: the
    method is named after the column (its size is the column's)."""
    total = len(run.stored)
    report(progress, ProgressEvent("eval", 0, total, unit="sizes"))
    adaptor = run.corpus_meta.get("adaptor") or {}
    run.baselines, results, methods = [], [], []
    for column, dim in run.stored.items():
        run.column, run.dimension, run.sizes = column, dim, [dim]
        run.read_queries()
        entry = {"name": column, "kind": "stored", "column": column}
        if adaptor.get("name"):
            entry["adaptor"] = adaptor["name"]
        run.methods = [EvalMethod(column, entry, "truncate", [dim])]
        methods.extend(run.methods)
        run.search()
        results.extend(run.score(None, 1))
        event = ProgressEvent("eval", len(results), total, "sizes", column)
        report(progress, event if len(results) < total else replace(event, finished=True))
    run.methods, run.sizes = methods, sorted(run.stored.values())
    run.dimension = max(run.sizes)
    return run.build_report(results)
