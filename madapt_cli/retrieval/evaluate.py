"""Vectors to metrics: search the judged queries, then score the run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from madapt_cli.retrieval.metrics import (
    DEFAULT_METRICS,
    Judgments,
    Metric,
    RankingEvaluation,
    as_metrics,
    score_indices,
    trec_tie_order,
)
from madapt_cli.retrieval.search import (
    ArrayLike,
    as_tensor,
    identical_id_exclusions,
    prefix_normalized,
    search_topk,
)
from madapt_cli.util.device import resolve_device


def _judged_queries(
    query_vectors: ArrayLike, query_ids: Sequence[str], qrels: Mapping[str, Any]
) -> tuple[ArrayLike, list[str]]:
    """The query rows (vectors, ids) whose id is in ``qrels``: the others would not count."""
    rows = [i for i, query_id in enumerate(query_ids) if query_id in qrels]
    if len(rows) != len(query_vectors):
        query_vectors = query_vectors[rows]
    return query_vectors, [query_ids[i] for i in rows]


def evaluate_vectors(  # noqa: PLR0913 - BEIR-like: both sides, qrels, metrics, 3 options
    query_vectors: ArrayLike,
    query_ids: Sequence[str],
    corpus_vectors: ArrayLike,
    corpus_ids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Sequence[Metric | str] | str = DEFAULT_METRICS,
    *,
    dim: int | None = None,
    ignore_identical_ids: bool = False,
    device: str | torch.device = "cpu",
) -> RankingEvaluation:
    """Search ``query_vectors`` against ``corpus_vectors`` (truncated to ``dim`` and
    re-normalised when ``dim`` is given) and score the run against ``qrels``.

    Only the query rows whose id is in ``qrels`` are searched (the others would not count).
    """
    parsed = as_metrics(metrics)
    device = resolve_device(device) if isinstance(device, str) else device
    query_vectors, query_ids = _judged_queries(query_vectors, query_ids, qrels)
    exclude = identical_id_exclusions(query_ids, corpus_ids) if ignore_identical_ids else None
    queries = prefix_normalized(as_tensor(query_vectors, device), dim)
    corpus = prefix_normalized(as_tensor(corpus_vectors, device), dim)
    depth = max(m.k for m in parsed)
    scores, indices = search_topk(queries, corpus, depth, device=device, exclude=exclude)
    indices = trec_tie_order(scores, indices, corpus_ids)
    judgments = Judgments.build(query_ids, corpus_ids, qrels, depth)
    return RankingEvaluation.from_scores(query_ids, score_indices(indices, judgments, parsed))


def ndcg_at_10(
    query_vectors: ArrayLike,
    query_ids: Sequence[str],
    corpus_vectors: ArrayLike,
    corpus_ids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    dim: int | None = None,
    *,
    ignore_identical_ids: bool = False,
    device: str | torch.device = "cpu",
) -> float:
    """Mean nDCG@10 of the queries in ``qrels`` (for early stopping while training).

    Vectors are truncated to ``dim`` (when given) and re-normalised; rows of queries that are
    not in ``qrels`` are ignored.
    """
    return evaluate_vectors(
        query_vectors,
        query_ids,
        corpus_vectors,
        corpus_ids,
        qrels,
        [Metric("ndcg", 10)],
        dim=dim,
        ignore_identical_ids=ignore_identical_ids,
        device=device,
    ).means["ndcg@10"]
