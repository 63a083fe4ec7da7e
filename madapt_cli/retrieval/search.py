"""Exact top-k search by cosine similarity, chunked, for one or several prefix sizes."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from madapt_cli.errors import InputError
from madapt_cli.util.device import resolve_device
from madapt_cli.util.vectors import normalize_rows

ArrayLike = np.ndarray | torch.Tensor


def as_tensor(values: ArrayLike, device: torch.device) -> torch.Tensor:
    """``values`` as a float32 tensor on ``device`` (no copy when it is one already);
    a read-only numpy array (zero-copy from Arrow) is never written, so no warning."""
    if isinstance(values, torch.Tensor):
        return values.to(device=device, dtype=torch.float32)
    with warnings.catch_warnings():  # read-only arrays (zero-copy from Arrow) are never written
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(np.asarray(values))
    return tensor.to(device=device, dtype=torch.float32)


# --- search ----------------------------------------------------------------------------------
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
    query_matrix, corpus_matrix = as_tensor(queries, device), as_tensor(corpus, device)
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
    query_matrix, corpus_matrix = as_tensor(queries, device), as_tensor(corpus, device)
    _check_pair(query_matrix, corpus_matrix)
    sizes = sorted(set(dims))
    if not sizes or sizes[0] < 1 or sizes[-1] > query_matrix.shape[1]:
        raise InputError(f"sizes {list(dims)} must lie within 1..{query_matrix.shape[1]}")
    return _search(query_matrix, corpus_matrix, k, sizes, chunk_size, query_block, exclude)


# --- vectors to metrics ----------------------------------------------------------------------
def prefix_normalized(vectors: ArrayLike, dim: int | None) -> ArrayLike:
    """The first ``dim`` coordinates of each row, re-normalised (all of them if ``dim`` is None)."""
    if dim is not None:
        if not 1 <= dim <= vectors.shape[1]:
            raise InputError(f"size {dim} is outside 1..{vectors.shape[1]}")
        vectors = vectors[:, :dim]
    return normalize_rows(vectors)


def mine_topk(
    queries: torch.Tensor, corpus: torch.Tensor, k: int, exclude_self: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k cosine neighbours over the whole corpus, chunked (never N x N in memory)."""
    exclude = None
    if exclude_self:
        rows = np.arange(queries.shape[0], dtype=np.int64)
        exclude = np.stack([rows, rows], axis=1)
    scores, indices = search_topk(queries, corpus, k, device=corpus.device, exclude=exclude)
    device = corpus.device
    return torch.from_numpy(scores).to(device), torch.from_numpy(indices).to(device)
