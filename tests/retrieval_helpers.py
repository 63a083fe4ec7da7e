"""What the tests need beyond the package's API: the run as ids, and several prefix sizes
scored at once (both were package functions that only the tests used)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from madapt_cli.retrieval.metrics import (
    DEFAULT_METRICS,
    Judgments,
    Metric,
    RankingEvaluation,
    as_metrics,
    score_indices,
    trec_tie_order,
)
from madapt_cli.retrieval.search import identical_id_exclusions, search_topk_prefixes


def rankings_from_indices(
    indices: np.ndarray, query_ids: Sequence[str], corpus_ids: Sequence[str]
) -> dict[str, list[str]]:
    """query id -> ranked document ids, from ``search_topk`` rows (``-1`` slots dropped)."""
    return {
        query_id: [corpus_ids[i] for i in row if i >= 0]
        for query_id, row in zip(query_ids, indices.tolist(), strict=True)
    }


def evaluate_prefixes(
    query_vectors: np.ndarray,
    query_ids: Sequence[str],
    corpus_vectors: np.ndarray,
    corpus_ids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    dims: Sequence[int],
    metrics: Sequence[Metric | str] | str = DEFAULT_METRICS,
    *,
    ignore_identical_ids: bool = False,
) -> dict[int, RankingEvaluation]:
    """``evaluate_vectors`` at several prefix sizes at once (one pass over the corpus,
    ``search_topk_prefixes``): size -> evaluation of the re-normalised first m coordinates."""
    parsed = as_metrics(metrics)
    rows = [i for i, query_id in enumerate(query_ids) if query_id in qrels]
    query_vectors, query_ids = query_vectors[rows], [query_ids[i] for i in rows]
    exclude = identical_id_exclusions(query_ids, corpus_ids) if ignore_identical_ids else None
    depth = max(m.k for m in parsed)
    found = search_topk_prefixes(query_vectors, corpus_vectors, dims, depth, exclude=exclude)
    judgments = Judgments.build(query_ids, corpus_ids, qrels, depth)
    return {
        dim: RankingEvaluation.from_scores(
            query_ids,
            score_indices(trec_tie_order(scores, indices, corpus_ids), judgments, parsed),
        )
        for dim, (scores, indices) in found.items()
    }
