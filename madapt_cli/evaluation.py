"""Retrieval evaluation: exact top-k search and trec_eval's metrics.

Search
    :func:`search_topk` scores every query against every document by dot product (the vectors
    are unit-normalised, so this is cosine similarity) with chunked matrix products and a
    running top-k merge, so it never holds more than ``query_block x chunk_size`` scores.
    Results are sorted by descending score; equal scores are ordered by the lower corpus row,
    so a run is deterministic whatever the chunking. :func:`search_topk_prefixes` does the
    same for the cosine of several prefix sizes at once (one pass over the corpus), which is
    how `madapt eval` searches every size of a method. Both run on :class:`PrefixTopK`, which
    takes the corpus in pieces, so `madapt eval` searches each batch while the next is read.

Metrics (the definitions of trec_eval, and so of pytrec_eval and BEIR; tests check agreement
within 1e-6)
    With ``rel(d)`` the judged relevance of document ``d`` (0 when unjudged) and ranks
    ``i = 1..k`` of the run:

    * ``ndcg@k``   = DCG@k / IDCG@k with DCG@k = sum_i max(rel(d_i), 0) / log2(i + 1); IDCG@k is
      the DCG of the query's positive judgments sorted by relevance (graded gains: relevance 2
      counts twice relevance 1). Zero and negative judgments add nothing.
    * ``recall@k`` = |relevant in the top k| / |relevant|.
    * ``mrr@k``    = 1 / (rank of the first relevant document), 0 if none in the top k.
    * ``map@k``    = trec_eval's ``map_cut``: sum over relevant ranks i <= k of precision@i,
      divided by |relevant| (all relevant judgments, not only those retrieved).
    * ``precision@k`` = |relevant in the top k| / k.

    "Relevant" means relevance >= 1 (trec_eval's default ``relevance_level``).

    Which queries count: those present both in the run and in the qrels, as in pytrec_eval. A
    query judged only with relevance <= 0 counts, and scores 0 on every metric (trec_eval
    does the same); a query missing from the run is not averaged, so callers must put every
    qrels query they could search into the run (an empty ranking scores 0).

    Ties: trec_eval re-sorts a run by score and breaks exact ties by document id, descending.
    :func:`evaluate_rankings` scores a ranking in the order given; the vector paths
    (:func:`evaluate_vectors`, :func:`evaluate_prefixes`, :func:`run_evaluation`) apply
    trec_eval's rule to the tied scores of the top k (:func:`trec_tie_order`), so their
    figures are pytrec_eval's on the same scores. Which documents make the top k at a tie on
    the k-th score is decided by the search (the lower corpus row).
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from madapt_cli.errors import InputError, StoreError

Qrels = dict[str, dict[str, int]]
ArrayLike = np.ndarray | torch.Tensor

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


# --- devices ---------------------------------------------------------------------------------
def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> the GPU when there is one, else the CPU; ``cpu``, ``cuda``, ``cuda:1``..."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}: use auto, cpu or cuda") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    return resolved


def _as_tensor(values: ArrayLike, device: torch.device) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.to(device=device, dtype=torch.float32)
    with warnings.catch_warnings():  # read-only arrays (zero-copy from Arrow) are never written
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(np.asarray(values))
    return tensor.to(device=device, dtype=torch.float32)


# --- search ----------------------------------------------------------------------------------
def normalize_rows(vectors: ArrayLike) -> ArrayLike:
    """Each row scaled to unit length (all-zero rows stay zero). numpy in, numpy out;
    torch in, torch out."""
    if isinstance(vectors, torch.Tensor):
        return vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    array = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


def identical_id_exclusions(query_ids: Sequence[str], corpus_ids: Sequence[str]) -> np.ndarray:
    """(M, 2) pairs (query row, corpus row) where the document's id equals the query's id,
    for ``search_topk(exclude=...)`` (BEIR's ``ignore_identical_ids``, e.g. for ArguAna)."""
    position = {doc_id: row for row, doc_id in enumerate(corpus_ids)}
    pairs = [(q, position[qid]) for q, qid in enumerate(query_ids) if qid in position]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def _order_by_score_then_index(
    scores: torch.Tensor, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by descending score, equal scores by ascending index (two stable sorts)."""
    by_index = torch.sort(indices, dim=1, stable=True)
    indices = by_index.values
    scores = torch.gather(scores, 1, by_index.indices)
    by_score = torch.sort(scores, dim=1, descending=True, stable=True)
    return by_score.values, torch.gather(indices, 1, by_score.indices)


def _chunk_topk(block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k of each row of a score block, by descending score then ascending column.

    torch.topk breaks ties arbitrarily, so rows with a tie are repaired: a tie across the
    cut (the k-th and (k+1)-th scores equal) needs the row fully sorted; a tie inside the
    top k only needs those k reordered. Exact, and cheap since ties are rare.
    """
    width = block.shape[1]
    extra = 1 if k < width else 0
    values, columns = torch.topk(block, k + extra, dim=1, largest=True, sorted=True)
    if extra:
        across = torch.nonzero(values[:, k - 1] == values[:, k]).flatten()
        values, columns = values[:, :k], columns[:, :k]
        if across.numel():
            ordered = torch.sort(block[across], dim=1, descending=True, stable=True)
            values[across] = ordered.values[:, :k]
            columns[across] = ordered.indices[:, :k]
    inside = torch.nonzero((values[:, 1:] == values[:, :-1]).any(dim=1)).flatten()
    if inside.numel():
        values[inside], columns[inside] = _order_by_score_then_index(
            values[inside], columns[inside]
        )
    return values, columns


def _merge_topk(
    best: tuple[torch.Tensor, torch.Tensor], new: tuple[torch.Tensor, torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two ordered candidate lists whose ``new`` indices all exceed ``best``'s: one
    stable sort keeps ties in ascending index order."""
    scores = torch.cat([best[0], new[0]], dim=1)
    indices = torch.cat([best[1], new[1]], dim=1)
    order = torch.sort(scores, dim=1, descending=True, stable=True)
    return order.values[:, :k], torch.gather(indices, 1, order.indices[:, :k])


def _check_pair(query_matrix: torch.Tensor, corpus_matrix: torch.Tensor) -> None:
    if query_matrix.ndim != 2 or corpus_matrix.ndim != 2:
        raise ValueError("queries and corpus must be 2-d")
    if query_matrix.shape[1] != corpus_matrix.shape[1]:
        raise ValueError(
            f"queries have {query_matrix.shape[1]} dimensions, corpus {corpus_matrix.shape[1]}"
        )


def _inverse_prefix_norms(
    matrix: torch.Tensor, sizes: Sequence[int], rows: int = 65_536
) -> torch.Tensor:
    """(N, len(sizes)): 1 / |x[:m]| for each size m (0-norm prefixes give 1e12, score 0)."""
    # squares times a 0/1 matrix whose column i selects the first sizes[i] coordinates
    selector = torch.zeros((matrix.shape[1], len(sizes)), device=matrix.device)
    for i, size in enumerate(sizes):
        selector[:size, i] = 1.0
    parts = [
        matrix[start : start + rows].square() @ selector
        for start in range(0, matrix.shape[0], rows)
    ]
    squares = torch.cat(parts) if parts else matrix.new_zeros((0, len(sizes)))
    return squares.sqrt().clamp_min(1e-12).reciprocal()


class PrefixTopK:
    """A running exact top-k of fixed queries against corpus rows fed in order, in chunks.

    ``sizes`` None: raw dot products (result keyed by D). Otherwise the cosine of each prefix
    size m, sharing the products of the common coordinates: the products over coordinates
    [a, b) are added to those over [0, a), so all sizes cost one full-size pass.

    ``add(chunk)`` takes the next corpus rows (any number; they are searched
    ``chunk_size`` at a time) so a corpus can be searched while it is still being read;
    ``result()`` once ``num_docs`` rows have been added. Memory: at most
    ``query_block x chunk_size`` scores, plus the Q x k candidates of each size.
    """

    def __init__(
        self,
        query_matrix: torch.Tensor,
        k: int,
        num_docs: int,
        sizes: Sequence[int] | None = None,
        *,
        chunk_size: int = 65_536,
        query_block: int | None = None,
        exclude: np.ndarray | Sequence[tuple[int, int]] | None = None,
    ) -> None:
        if query_matrix.ndim != 2:
            raise ValueError("queries must be 2-d")
        if k < 1:
            raise ValueError("k must be at least 1")
        self.queries = query_matrix
        self.device = query_matrix.device
        self.num_queries, self.num_docs = query_matrix.shape[0], num_docs
        self.k = min(k, num_docs)
        self.cosine = sizes is not None
        self.sizes = list(sizes) if sizes is not None else [query_matrix.shape[1]]
        self.chunk_size = chunk_size
        if query_block is None:
            query_block = 8_192 if self.device.type == "cuda" else 1_024
        self.blocks = [
            (start, min(start + query_block, self.num_queries))
            for start in range(0, self.num_queries, query_block)
        ]
        if self.cosine:
            self.inverse_query_norms = _inverse_prefix_norms(query_matrix, self.sizes)
        pairs = np.asarray(exclude if exclude is not None else [], dtype=np.int64).reshape(-1, 2)
        self.excluded = [  # per query block, its (query row, corpus row) pairs
            torch.from_numpy(pairs[(pairs[:, 0] >= start) & (pairs[:, 0] < end)]).to(self.device)
            for start, end in self.blocks
        ]
        self.best: list[dict[int, tuple[torch.Tensor, torch.Tensor]]] = [{} for _ in self.blocks]
        self.seen = 0
        # score blocks are reused, not reallocated: fresh pages cost as much as the products
        capacity = min(query_block, self.num_queries) * min(chunk_size, max(num_docs, 1))
        self.products = torch.empty(capacity if self.k else 0, device=self.device)
        self.scaled = torch.empty_like(self.products) if self.cosine else self.products

    def add(self, corpus_rows: torch.Tensor) -> None:
        """Search the next corpus rows (row numbers continue from the rows added before)."""
        if corpus_rows.shape[1] != self.queries.shape[1]:
            raise ValueError(
                f"queries have {self.queries.shape[1]} dimensions, corpus {corpus_rows.shape[1]}"
            )
        if self.seen + corpus_rows.shape[0] > self.num_docs:
            raise ValueError(f"more than the {self.num_docs} corpus rows announced")
        if self.k == 0 or self.num_queries == 0:
            self.seen += corpus_rows.shape[0]
            return
        for offset in range(0, corpus_rows.shape[0], self.chunk_size):
            self._add_chunk(corpus_rows[offset : offset + self.chunk_size])

    def _add_chunk(self, chunk: torch.Tensor) -> None:
        c_start, c_end = self.seen, self.seen + chunk.shape[0]
        if self.cosine:
            inverse_corpus_norms = _inverse_prefix_norms(chunk, self.sizes)
        for (q_start, q_end), excluded, best in zip(
            self.blocks, self.excluded, self.best, strict=True
        ):
            block_queries = self.queries[q_start:q_end]
            hit = excluded[(excluded[:, 1] >= c_start) & (excluded[:, 1] < c_end)]
            shape = (q_end - q_start, c_end - c_start)
            products = self.products[: shape[0] * shape[1]].view(shape)
            block = self.scaled[: shape[0] * shape[1]].view(shape)
            done = 0
            for j, size in enumerate(self.sizes):
                if done == 0:
                    torch.mm(block_queries[:, :size], chunk[:, :size].T, out=products)
                else:
                    products.addmm_(block_queries[:, done:size], chunk[:, done:size].T)
                done = size
                if self.cosine:
                    torch.mul(products, inverse_corpus_norms[:, j], out=block)
                if hit.numel():
                    block[hit[:, 0] - q_start, hit[:, 1] - c_start] = -math.inf
                scores, columns = _chunk_topk(block, min(self.k, shape[1]))
                found = (scores, columns + c_start)
                best[size] = _merge_topk(best[size], found, self.k) if size in best else found
        self.seen = c_end

    def result(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """size -> (scores, indices), float32 and int64 arrays of shape (Q, min(k, N))."""
        if self.seen != self.num_docs:
            raise ValueError(f"{self.seen} corpus rows added, {self.num_docs} announced")
        if self.k == 0 or self.num_queries == 0:
            empty = (
                np.zeros((self.num_queries, self.k), np.float32),
                np.zeros((self.num_queries, self.k), np.int64),
            )
            return {m: empty for m in self.sizes}
        results = {}
        for j, size in enumerate(self.sizes):
            all_scores, all_indices = [], []
            for (q_start, q_end), best in zip(self.blocks, self.best, strict=True):
                scores, indices = best[size]
                if self.cosine:  # a positive factor per query row: the order is unchanged
                    scores = scores * self.inverse_query_norms[q_start:q_end, j : j + 1]
                all_indices.append(torch.where(torch.isneginf(scores), -1, indices).cpu())
                all_scores.append(scores.cpu())
            results[size] = (torch.cat(all_scores).numpy(), torch.cat(all_indices).numpy())
        return results


def _search(
    query_matrix: torch.Tensor,
    corpus_matrix: torch.Tensor,
    k: int,
    sizes: Sequence[int] | None,
    chunk_size: int,
    query_block: int | None,
    exclude: np.ndarray | Sequence[tuple[int, int]] | None,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The whole corpus at once through :class:`PrefixTopK`."""
    _check_pair(query_matrix, corpus_matrix)
    search = PrefixTopK(
        query_matrix,
        k,
        corpus_matrix.shape[0],
        sizes,
        chunk_size=chunk_size,
        query_block=query_block,
        exclude=exclude,
    )
    search.add(corpus_matrix)
    return search.result()


def search_topk(
    queries: ArrayLike,
    corpus: ArrayLike,
    k: int,
    *,
    chunk_size: int = 65_536,
    query_block: int | None = None,
    device: str | torch.device = "cpu",
    exclude: np.ndarray | Sequence[tuple[int, int]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by dot product of every query row against the corpus rows.

    Returns ``(scores, indices)``: float32 and int64 arrays of shape (Q, min(k, N)), each row
    sorted by descending score, equal scores by ascending corpus row. ``exclude`` holds
    (query row, corpus row) pairs that must not be returned (see
    :func:`identical_id_exclusions`); when fewer than k rows remain for a query its last
    slots hold score ``-inf`` and index ``-1``.

    Memory: at most ``query_block x chunk_size`` scores beside the inputs (``query_block``
    defaults to 1,024 queries on the CPU, 256 MiB of scores, and 8,192 on a GPU, 2 GiB).
    Inputs may be numpy arrays or torch tensors (already on ``device`` avoids a copy).
    """
    device = resolve_device(device) if isinstance(device, str) else device
    query_matrix, corpus_matrix = _as_tensor(queries, device), _as_tensor(corpus, device)
    _check_pair(query_matrix, corpus_matrix)
    found = _search(query_matrix, corpus_matrix, k, None, chunk_size, query_block, exclude)
    return found[query_matrix.shape[1]]


def search_topk_prefixes(
    queries: ArrayLike,
    corpus: ArrayLike,
    dims: Sequence[int],
    k: int,
    *,
    chunk_size: int = 65_536,
    query_block: int | None = None,
    device: str | torch.device = "cpu",
    exclude: np.ndarray | Sequence[tuple[int, int]] | None = None,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """For each size m in ``dims``: the exact top-k by cosine similarity of the first m
    coordinates (the truncated, re-normalised vectors), as :func:`search_topk` returns it.

    One pass over the corpus serves every size, costing about one search at the largest
    size instead of one per size. Inputs need not be normalised.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    query_matrix, corpus_matrix = _as_tensor(queries, device), _as_tensor(corpus, device)
    _check_pair(query_matrix, corpus_matrix)
    sizes = sorted(set(dims))
    if not sizes or sizes[0] < 1 or sizes[-1] > query_matrix.shape[1]:
        raise InputError(f"sizes {list(dims)} must lie within 1..{query_matrix.shape[1]}")
    return _search(query_matrix, corpus_matrix, k, sizes, chunk_size, query_block, exclude)


def rankings_from_indices(
    indices: np.ndarray, query_ids: Sequence[str], corpus_ids: Sequence[str]
) -> dict[str, list[str]]:
    """query id -> ranked document ids, from :func:`search_topk` rows (``-1`` slots dropped)."""
    return {
        query_id: [corpus_ids[i] for i in row if i >= 0]
        for query_id, row in zip(query_ids, indices.tolist(), strict=True)
    }


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


def _parsed(metrics: Sequence[Metric | str] | str) -> list[Metric]:
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
    parsed = _parsed(metrics)
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


# --- vectors to metrics ----------------------------------------------------------------------
def prefix_normalized(vectors: ArrayLike, dim: int | None) -> ArrayLike:
    """The first ``dim`` coordinates of each row, re-normalised (all of them if ``dim`` is None)."""
    if dim is not None:
        if not 1 <= dim <= vectors.shape[1]:
            raise InputError(f"size {dim} is outside 1..{vectors.shape[1]}")
        vectors = vectors[:, :dim]
    return normalize_rows(vectors)


def _judged_queries(
    query_vectors: ArrayLike, query_ids: Sequence[str], qrels: Mapping[str, Any]
) -> tuple[ArrayLike, list[str]]:
    """The query rows (vectors, ids) whose id is in ``qrels``: the others would not count."""
    rows = [i for i, query_id in enumerate(query_ids) if query_id in qrels]
    if len(rows) != len(query_vectors):
        query_vectors = query_vectors[rows]
    return query_vectors, [query_ids[i] for i in rows]


def evaluate_vectors(
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
    parsed = _parsed(metrics)
    device = resolve_device(device) if isinstance(device, str) else device
    query_vectors, query_ids = _judged_queries(query_vectors, query_ids, qrels)
    exclude = identical_id_exclusions(query_ids, corpus_ids) if ignore_identical_ids else None
    queries = prefix_normalized(_as_tensor(query_vectors, device), dim)
    corpus = prefix_normalized(_as_tensor(corpus_vectors, device), dim)
    depth = max(m.k for m in parsed)
    scores, indices = search_topk(queries, corpus, depth, device=device, exclude=exclude)
    indices = trec_tie_order(scores, indices, corpus_ids)
    judgments = Judgments.build(query_ids, corpus_ids, qrels, depth)
    return RankingEvaluation.from_scores(query_ids, score_indices(indices, judgments, parsed))


def evaluate_prefixes(
    query_vectors: ArrayLike,
    query_ids: Sequence[str],
    corpus_vectors: ArrayLike,
    corpus_ids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    dims: Sequence[int],
    metrics: Sequence[Metric | str] | str = DEFAULT_METRICS,
    *,
    ignore_identical_ids: bool = False,
    device: str | torch.device = "cpu",
) -> dict[int, RankingEvaluation]:
    """:func:`evaluate_vectors` at several prefix sizes at once (one pass over the corpus,
    :func:`search_topk_prefixes`): size -> evaluation of the re-normalised first m coordinates.
    """
    parsed = _parsed(metrics)
    device = resolve_device(device) if isinstance(device, str) else device
    query_vectors, query_ids = _judged_queries(query_vectors, query_ids, qrels)
    exclude = identical_id_exclusions(query_ids, corpus_ids) if ignore_identical_ids else None
    depth = max(m.k for m in parsed)
    found = search_topk_prefixes(
        query_vectors, corpus_vectors, dims, depth, device=device, exclude=exclude
    )
    judgments = Judgments.build(query_ids, corpus_ids, qrels, depth)
    return {
        dim: RankingEvaluation.from_scores(
            query_ids,
            score_indices(trec_tie_order(scores, indices, corpus_ids), judgments, parsed),
        )
        for dim, (scores, indices) in found.items()
    }


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


# --- `madapt eval`: methods x sizes over a store ---------------------------------------------
BASELINES = ("truncate", "pca")
DEFAULT_DIMS = (64, 128, 256)


def parse_dims(spec: str | Iterable[int], dimension: int) -> list[int]:
    """``"64,128,256"`` -> sorted distinct sizes, each within 1..``dimension``."""
    tokens = spec.split(",") if isinstance(spec, str) else [str(d) for d in spec]
    dims: set[int] = set()
    for token in (t.strip() for t in tokens):
        if not token:
            continue
        try:
            dim = int(token)
        except ValueError:
            raise InputError(f"--dims: {token!r} is not a whole number (e.g. 64,128,256)") from None
        if dim < 1:
            raise InputError(f"--dims: size {dim} is below 1")
        if dim > dimension:
            raise InputError(f"--dims: size {dim} is above the vectors' dimension {dimension}")
        dims.add(dim)
    if not dims:
        raise InputError("--dims: no sizes given (e.g. 64,128,256)")
    return sorted(dims)


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


def file_fingerprint(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


PCA_FIT_ROWS = 200_000


def _pca_baseline(corpus: ArrayLike, dimension: int, max_rows: int | None = PCA_FIT_ROWS) -> Any:
    """The PCA map of :func:`madapt_cli.adaptor.fit_pca` (as `madapt fit --method pca` makes
    it), fitted on the whole corpus or, above ``max_rows`` rows, on ``max_rows`` evenly spaced
    ones: the principal axes of 768-d vectors are settled long before that, and the fit's
    float64 products would otherwise cost more than the searches. A tensor is reduced on its
    own device."""
    from madapt_cli.adaptor import Adaptor, fit_pca

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
    from madapt_cli.adaptor import CONFIG_FILE, WEIGHTS_FILE, Adaptor
    from madapt_cli.data import read_qrels
    from madapt_cli.stores import open_store

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
        adaptor.check_compatible(corpus_meta, what=f"the vectors of table '{corpus_table}'")
        adaptor.check_compatible(query_meta, what=f"the vectors of table '{queries_table}'")
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
