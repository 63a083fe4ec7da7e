"""Exact search over vectors stored at a lower precision, as a database would score them.

``symmetric``: the query is encoded like the documents (float16 rounding, the corpus' int8
buckets or int2 levels, sign bits) and scored against them: binary by Hamming distance (the
score reported is the dot product of the +-1 vectors, ``m - 2 * distance``, which orders the
same way), the others by the dot product of the decoded vectors. ``asymmetric``: the float32
query against the decoded documents (int8 bucket centres, re-normalised int2 levels, +-1 sign
vectors). ``rescore``: the symmetric search fetches ``rescore x k`` candidates, which the
float32 query then re-ranks against their decoded codes (sentence-transformers' rescoring
recipe).

Why symmetric int8 scores the *decoded* codes rather than the raw int8 codes: the
per-dimension ranges give each coordinate its own offset and step, so the dot product of raw
codes weighs coordinates by their (arbitrary) range and adds offset cross terms; the decoded
dot product is what scalar-quantising engines (faiss SQ8, Qdrant, Lance) compute, and
bench/precision.py measures the raw-code variant beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from madapt_cli.retrieval.int2 import Int2Calibration, dequantize_int2, quantize_int2
from madapt_cli.retrieval.quantize import (
    Int8Calibration,
    check_precision,
    dequantize_int8,
    hamming_topk,
    pack_binary,
    quantize_int8,
    unpack_binary,
)
from madapt_cli.retrieval.search import search_topk

SCORINGS = ("symmetric", "asymmetric")


@dataclass(frozen=True)
class EncodedCorpus:
    """Documents as stored at ``precision``: ``codes`` (float32, float16, int8, packed 2-bit
    codes or packed uint8 sign bits) of ``dim``-d vectors, and the int8 or int2 calibration
    when there is one."""

    precision: str
    dim: int
    codes: np.ndarray
    calibration: Int8Calibration | Int2Calibration | None = None

    def decoded(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """float32 vectors the codes stand for (all rows, or ``rows``)."""
        codes = self.codes[rows]
        if self.precision == "int8":
            assert isinstance(self.calibration, Int8Calibration)
            return dequantize_int8(codes, self.calibration)
        if self.precision == "int2":
            assert isinstance(self.calibration, Int2Calibration)
            return dequantize_int2(codes, self.calibration)
        if self.precision == "binary":
            return unpack_binary(codes, self.dim)
        return np.asarray(codes, dtype=np.float32)


def encode(
    vectors: np.ndarray,
    precision: str,
    calibration: Int8Calibration | Int2Calibration | None = None,
) -> np.ndarray:
    """``vectors`` (the float32 vectors that would be stored) as ``precision`` codes."""
    check_precision(precision)
    array = np.asarray(vectors, dtype=np.float32)
    if precision == "float16":
        return array.astype(np.float16)
    if precision == "int8":
        if not isinstance(calibration, Int8Calibration):
            raise ValueError("int8 needs an int8 calibration")
        return quantize_int8(array, calibration)
    if precision == "int2":
        if not isinstance(calibration, Int2Calibration):
            raise ValueError("int2 needs an int2 calibration")
        return quantize_int2(array, calibration)
    if precision == "binary":
        return pack_binary(array)
    return array


def encode_corpus(
    vectors: np.ndarray,
    precision: str,
    calibration: Int8Calibration | Int2Calibration | None = None,
) -> EncodedCorpus:
    return EncodedCorpus(
        precision, vectors.shape[1], encode(vectors, precision, calibration), calibration
    )


def _exclusions_by_query(exclude: np.ndarray | None) -> dict[int, set[int]]:
    by_query: dict[int, set[int]] = {}
    for query, doc in np.asarray(exclude if exclude is not None else [], np.int64).reshape(-1, 2):
        by_query.setdefault(int(query), set()).add(int(doc))
    return by_query


def _hamming_search(
    queries: np.ndarray, corpus: EncodedCorpus, k: int, exclude: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Hamming top-k of the queries' sign bits, excluded pairs dropped (fetching as many
    extra rows as the most-excluded query needs): scores ``m - 2 * distance``."""
    excluded = _exclusions_by_query(exclude)
    extra = max((len(docs) for docs in excluded.values()), default=0)
    distances, indices = hamming_topk(pack_binary(queries), corpus.codes, k + extra)
    scores = (corpus.dim - 2 * distances).astype(np.float32)
    if not excluded:
        return scores[:, :k], indices[:, :k]
    width = min(k, corpus.codes.shape[0])
    kept_scores = np.full((len(queries), width), -np.inf, dtype=np.float32)
    kept_indices = np.full((len(queries), width), -1, dtype=np.int64)
    for row in range(len(queries)):
        keep = [j for j, doc in enumerate(indices[row]) if doc not in excluded.get(row, ())]
        keep = keep[:width]
        kept_scores[row, : len(keep)] = scores[row, keep]
        kept_indices[row, : len(keep)] = indices[row, keep]
    return kept_scores, kept_indices


def _symmetric_queries(queries: np.ndarray, corpus: EncodedCorpus) -> np.ndarray:
    """The queries encoded as the documents are, then decoded (float16 / int8 / int2)."""
    return EncodedCorpus(
        corpus.precision,
        corpus.dim,
        encode(queries, corpus.precision, corpus.calibration),
        corpus.calibration,
    ).decoded()


def _rescore(
    queries: np.ndarray, corpus: EncodedCorpus, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The float queries' dot products with their candidates' decoded codes; the best k of
    each row by descending score, equal scores by ascending corpus row (-1 slots last)."""
    width = min(k, candidates.shape[1])
    scores = np.full((len(queries), width), -np.inf, dtype=np.float32)
    indices = np.full((len(queries), width), -1, dtype=np.int64)
    for row in range(len(queries)):
        found = candidates[row][candidates[row] >= 0]
        values = corpus.decoded(found) @ queries[row]
        order = np.lexsort((found, -values))[:width]
        scores[row, : len(order)] = values[order]
        indices[row, : len(order)] = found[order]
    return scores, indices


def precision_topk(
    queries: np.ndarray,
    corpus: EncodedCorpus,
    k: int,
    scoring: str = "symmetric",
    *,
    rescore: int = 0,
    exclude: np.ndarray | Sequence[tuple[int, int]] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of the float32 ``queries`` (prefix-cut and re-normalised, like the stored
    documents) against ``corpus`` scored as ``scoring`` says, as :func:`search_topk` returns
    it: (scores, indices), descending score, equal scores by ascending row; excluded pairs
    never returned (-inf / -1 where fewer than k remain). ``rescore`` N > 0 (symmetric only):
    N x k candidates re-ranked by the float query."""
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}")
    if rescore and scoring != "symmetric":
        raise ValueError("rescore re-ranks a symmetric search")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    pairs = None if exclude is None else np.asarray(exclude, dtype=np.int64).reshape(-1, 2)
    fetch = k * rescore if rescore else k
    if scoring == "asymmetric":
        return search_topk(queries, corpus.decoded(), k, device=device, exclude=pairs)
    if corpus.precision == "binary":
        scores, indices = _hamming_search(queries, corpus, fetch, pairs)
    else:
        scores, indices = search_topk(
            _symmetric_queries(queries, corpus),
            corpus.decoded(),
            fetch,
            device=device,
            exclude=pairs,
        )
    if rescore:
        return _rescore(queries, corpus, indices, k)
    return scores, indices
