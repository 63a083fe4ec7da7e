"""trec_eval's metrics over ranked runs (equal to pytrec_eval within 1e-6)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from madapt_cli.errors import InputError

METRIC_NAMES = ("ndcg", "recall", "mrr", "map", "precision")


DEFAULT_METRICS = ("ndcg@10", "recall@100", "mrr@10", "map@100")


RELEVANCE_LEVEL = 1  # trec_eval: a judgment counts as relevant when relevance >= 1


# --- metric names ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """One metric at one cut-off, e.g. ``Metric("ndcg", 10)``, written ``ndcg@10``."""

    name: str
    k: int

    @property
    def label(self) -> str:
        return f"{self.name}@{self.k}"

    def __str__(self) -> str:
        return self.label


def parse_metrics(spec: str | Iterable[str]) -> list[Metric]:
    """``"ndcg@10,recall@100"`` (or a list of such names) -> metrics, in order, deduplicated."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    metrics: list[Metric] = []
    for raw in names:
        text = raw.strip().lower()
        if not text:
            continue
        name, at, cut = text.partition("@")
        if name not in METRIC_NAMES or not at or not cut.isdigit() or int(cut) < 1:
            raise InputError(
                f"unknown metric {raw.strip()!r}: use name@k with name one of "
                f"{', '.join(METRIC_NAMES)} and k >= 1 (e.g. ndcg@10)"
            )
        metric = Metric(name, int(cut))
        if metric not in metrics:
            metrics.append(metric)
    if not metrics:
        raise InputError("no metrics given: e.g. --metrics ndcg@10,recall@100")
    return metrics


def trec_tie_order(
    scores: np.ndarray, indices: np.ndarray, corpus_ids: Sequence[str]
) -> np.ndarray:
    """``indices`` with each row's equal scores reordered by document id, descending: the
    order in which trec_eval (so pytrec_eval and BEIR) reads a run. Duplicate documents make
    exact ties common in real corpora (NFCorpus has 40 groups of identical vectors), and which
    of two tied documents ranks first changes nDCG and MAP. ``-1`` slots stay last."""
    tied_rows = np.nonzero((scores[:, 1:] == scores[:, :-1]).any(axis=1))[0]
    if not len(tied_rows):
        return indices
    ordered = indices.copy()
    for row in tied_rows:
        hits = [
            (float(s), corpus_ids[i], i)
            for s, i in zip(scores[row], indices[row], strict=True)
            if i >= 0
        ]
        hits.sort(key=lambda hit: hit[1], reverse=True)
        hits.sort(key=lambda hit: hit[0], reverse=True)  # stable: ties keep id order
        ordered[row, : len(hits)] = [hit[2] for hit in hits]
    return ordered


# --- metrics ---------------------------------------------------------------------------------
@dataclass
class Judgments:
    """Qrels mapped onto row numbers, for scoring :func:`search_topk` results in bulk.

    Row ``q`` is the query ``query_ids[q]``; documents are corpus rows. ``num_relevant`` and
    ``ideal_gains`` come from the qrels alone (as in trec_eval), so a judged document missing
    from the corpus still counts in recall's and nDCG's denominators.
    """

    query_ids: list[str]
    num_docs: int
    keys: np.ndarray  # sorted int64: query row * num_docs + corpus row, judged pairs only
    relevance: np.ndarray  # int64, aligned with keys
    num_relevant: np.ndarray  # (Q,) judgments with relevance >= RELEVANCE_LEVEL
    ideal_gains: np.ndarray  # (Q, depth) positive relevance, descending, zero padded
    missing_docs: int  # judged (query, document) pairs whose document is not in the corpus

    @classmethod
    def build(
        cls,
        query_ids: Sequence[str],
        corpus_ids: Sequence[str] | Mapping[str, int],
        qrels: Mapping[str, Mapping[str, int]],
        depth: int,
    ) -> Judgments:
        """``corpus_ids``: the corpus ids in row order, or a ready id -> row mapping."""
        position = (
            corpus_ids
            if isinstance(corpus_ids, Mapping)
            else {doc_id: row for row, doc_id in enumerate(corpus_ids)}
        )
        num_docs = len(position)
        keys: list[int] = []
        relevance: list[int] = []
        num_relevant = np.zeros(len(query_ids), dtype=np.int64)
        ideal = np.zeros((len(query_ids), depth), dtype=np.float64)
        missing = 0
        for row, query_id in enumerate(query_ids):
            judged = qrels.get(query_id, {})
            for doc_id, rel in judged.items():
                corpus_row = position.get(doc_id)
                if corpus_row is None:
                    missing += 1
                else:
                    keys.append(row * num_docs + corpus_row)
                    relevance.append(rel)
            num_relevant[row] = sum(1 for rel in judged.values() if rel >= RELEVANCE_LEVEL)
            gains = sorted((rel for rel in judged.values() if rel > 0), reverse=True)[:depth]
            ideal[row, : len(gains)] = gains
        key_array = np.asarray(keys, dtype=np.int64)
        order = np.argsort(key_array, kind="stable")
        return cls(
            query_ids=list(query_ids),
            num_docs=num_docs,
            keys=key_array[order],
            relevance=np.asarray(relevance, dtype=np.int64)[order],
            num_relevant=num_relevant,
            ideal_gains=ideal,
            missing_docs=missing,
        )

    def relevance_of(self, indices: np.ndarray) -> np.ndarray:
        """(Q, k) relevance of the ranked corpus rows (0 for unjudged and ``-1`` slots)."""
        rows = np.arange(indices.shape[0], dtype=np.int64)[:, None]
        wanted = rows * self.num_docs + indices
        if not len(self.keys):
            return np.zeros(indices.shape, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.keys, wanted), len(self.keys) - 1)
        found = (self.keys[at] == wanted) & (indices >= 0)
        return np.where(found, self.relevance[at], 0)


def score_indices(
    indices: np.ndarray, judgments: Judgments, metrics: Sequence[Metric]
) -> dict[str, np.ndarray]:
    """Per-query values of each metric for ranked corpus rows (one row per judged query,
    best first, no repeats, ``-1`` for an empty slot). The formulas are in the module doc."""
    if indices.shape[0] != len(judgments.query_ids):
        raise ValueError("one row of indices per query of the judgments")
    relevance = judgments.relevance_of(indices)
    gains = np.maximum(relevance, 0).astype(np.float64)
    relevant = relevance >= RELEVANCE_LEVEL
    width = indices.shape[1]
    ranks = np.arange(1, width + 1, dtype=np.float64)
    discounts = 1.0 / np.log2(ranks + 1.0)
    num_relevant = judgments.num_relevant.astype(np.float64)
    has_relevant = num_relevant > 0
    safe_relevant = np.where(has_relevant, num_relevant, 1.0)
    values: dict[str, np.ndarray] = {}
    for metric in metrics:
        k = metric.k
        top_relevant = relevant[:, :k]
        if metric.name == "ndcg":
            dcg = gains[:, :k] @ discounts[: min(k, width)]
            ideal_discounts = 1.0 / np.log2(np.arange(2, judgments.ideal_gains.shape[1] + 2))
            ideal = (
                judgments.ideal_gains[:, :k]
                @ ideal_discounts[: min(k, judgments.ideal_gains.shape[1])]
            )
            value = np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0)
        elif metric.name == "recall":
            value = np.where(has_relevant, top_relevant.sum(axis=1) / safe_relevant, 0.0)
        elif metric.name == "precision":
            value = top_relevant.sum(axis=1) / k
        elif metric.name == "mrr":
            first = top_relevant.argmax(axis=1)
            value = np.where(top_relevant.any(axis=1), 1.0 / (first + 1.0), 0.0)
        elif metric.name == "map":
            hits = np.cumsum(top_relevant, axis=1)
            precision_at_hits = np.where(top_relevant, hits / ranks[: hits.shape[1]], 0.0)
            value = np.where(has_relevant, precision_at_hits.sum(axis=1) / safe_relevant, 0.0)
        else:  # parse_metrics admits only the names above
            raise ValueError(f"unknown metric {metric.name}")
        values[metric.label] = np.asarray(value, dtype=np.float64).reshape(len(indices))
    return values


@dataclass
class RankingEvaluation:
    """Mean metrics over the evaluated queries, and each query's own values."""

    means: dict[str, float]
    per_query: dict[str, dict[str, float]]

    @property
    def num_queries(self) -> int:
        return len(self.per_query)

    @classmethod
    def from_scores(
        cls, query_ids: Sequence[str], scores: dict[str, np.ndarray]
    ) -> RankingEvaluation:
        means = {label: float(v.mean()) if len(v) else 0.0 for label, v in scores.items()}
        per_query = {
            query_id: {label: float(v[row]) for label, v in scores.items()}
            for row, query_id in enumerate(query_ids)
        }
        return cls(means=means, per_query=per_query)


def as_metrics(metrics: Sequence[Metric | str] | str) -> list[Metric]:
    """Metrics given as ``"ndcg@10,recall@100"``, or as a sequence of names or :class:`Metric`
    s (one metric each, kept in order), as a list of :class:`Metric`."""
    if isinstance(metrics, str):
        return parse_metrics(metrics)
    return [m if isinstance(m, Metric) else parse_metrics(m)[0] for m in metrics]


def evaluate_rankings(
    rankings: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Sequence[Metric | str] | str = DEFAULT_METRICS,
) -> RankingEvaluation:
    """Mean (and per-query) metrics of a run: query id -> document ids, best first.

    Averaged over the queries present in both ``rankings`` and ``qrels`` (pytrec_eval's rule);
    the means are 0.0 when there are none. A document listed twice counts at its first rank
    only (trec_eval ignores repeats).
    """
    parsed = as_metrics(metrics)
    query_ids = [q for q in rankings if q in qrels]
    position: dict[str, int] = {}
    for judged in (qrels[q] for q in query_ids):
        for doc_id in judged:
            position.setdefault(doc_id, len(position))
    rows = []
    for query_id in query_ids:
        ranked = list(dict.fromkeys(rankings[query_id]))
        rows.append([position.setdefault(doc_id, len(position)) for doc_id in ranked])
    width = max((len(r) for r in rows), default=0)
    indices = np.full((len(rows), max(width, 1)), -1, dtype=np.int64)
    for row, ranked_rows in enumerate(rows):
        indices[row, : len(ranked_rows)] = ranked_rows
    depth = max(m.k for m in parsed)
    judgments = Judgments.build(query_ids, position, qrels, depth)
    return RankingEvaluation.from_scores(query_ids, score_indices(indices, judgments, parsed))
