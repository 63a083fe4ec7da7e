"""Stored precisions of a vector: float32, float16, int8 (per-dimension scalar codes) and
binary (packed sign bits), with exact Hamming top-k search over the binary codes.

The vectors given here are the ones that would be stored: already cut to their prefix size
and re-normalised. int8 follows sentence-transformers' ``quantize_embeddings`` exactly (the
same buckets, so codes written by madapt and by ST agree); binary is its ``ubinary`` layout
(``np.packbits`` of ``x > 0``, most significant bit first, zero padding at the end).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from madapt_cli.errors import InputError

#: every precision `madapt eval`, `plan`, `apply` and `encode` know (int2: retrieval/int2.py)
PRECISIONS = ("float32", "float16", "int8", "int2", "binary")

_BYTES_PER_VALUE = {"float32": 4, "float16": 2, "int8": 1}

#: the int8 ranges `madapt eval` and `plan` fit by default: percentile ranges measured no
#: better (bench/precision.py; docs/benchmarks.md, "int8 ranges"), so min/max, as
#: sentence-transformers' and `madapt apply`'s default too.
DEFAULT_INT8_CALIBRATION = "minmax"


def check_precision(precision: str) -> str:
    """``precision`` if madapt knows it, else an :class:`InputError` naming the choices."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return precision


def bytes_per_vector(precision: str, dim: int) -> int:
    """Exact bytes one stored vector of ``dim`` coordinates takes at ``precision``:
    4d, 2d, d, ceil(d / 4) for packed 2-bit codes, or ceil(d / 8) for packed sign bits."""
    check_precision(precision)
    if dim < 1:
        raise ValueError(f"dim must be positive, got {dim}")
    if precision == "binary":
        return math.ceil(dim / 8)
    if precision == "int2":
        return math.ceil(dim / 4)
    return _BYTES_PER_VALUE[precision] * dim


# --- int8 ------------------------------------------------------------------------------------
def _parse_method(method: str) -> float:
    """The percentile P of a calibration method ("minmax" is P = 0), or an InputError."""
    if method == "minmax":
        return 0.0
    prefix = "percentile:"
    if method.startswith(prefix):
        try:
            value = float(method[len(prefix) :])
        except ValueError:
            value = math.nan
        if 0.0 < value < 50.0:
            return value
    raise InputError(
        f"unknown int8 calibration {method!r}; use 'minmax' or 'percentile:P' with 0 < P < 50"
    )


def _as_range(values: Any, name: str) -> np.ndarray:
    array = np.array(values, dtype=np.float32)  # a copy: the calibration owns its arrays
    if array.ndim != 1 or array.size == 0:
        raise InputError(f"int8 calibration: {name} must be a non-empty list of numbers")
    if not np.isfinite(array).all():
        raise InputError(f"int8 calibration: {name} holds a non-finite value")
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class Int8Calibration:
    """Per-dimension ranges [lower, upper] mapped onto the 256 int8 codes, and how they were
    fitted ("minmax" or "percentile:P"). lower < upper in every dimension."""

    lower: np.ndarray
    upper: np.ndarray
    method: str

    def __post_init__(self) -> None:
        lower, upper = _as_range(self.lower, "lower"), _as_range(self.upper, "upper")
        if lower.shape != upper.shape:
            raise InputError(f"int8 calibration: lower has {lower.size} values, upper {upper.size}")
        bad = np.flatnonzero(~(lower < upper))
        if bad.size:
            raise InputError(
                f"int8 calibration: dimension {int(bad[0])} has lower >= upper "
                f"({float(lower[bad[0]])} >= {float(upper[bad[0]])})"
            )
        _parse_method(self.method)
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)

    # arrays make the generated __eq__/__hash__ unusable, so these compare the values
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Int8Calibration):
            return NotImplemented
        return (
            self.method == other.method
            and np.array_equal(self.lower, other.lower)
            and np.array_equal(self.upper, other.upper)
        )

    def __hash__(self) -> int:
        return hash((self.lower.tobytes(), self.upper.tobytes(), self.method))

    @property
    def dim(self) -> int:
        return int(self.lower.size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: float32 values as Python floats (they round-trip exactly)."""
        return {
            "method": self.method,
            "lower": [float(v) for v in self.lower],
            "upper": [float(v) for v in self.upper],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Int8Calibration:
        """The calibration ``to_dict`` wrote; an InputError for anything else."""
        if not isinstance(data, dict) or not {"lower", "upper", "method"} <= data.keys():
            raise InputError("int8 calibration: expected an object with lower, upper and method")
        if not isinstance(data["method"], str):
            raise InputError("int8 calibration: method must be a string")
        for name in ("lower", "upper"):
            values = data[name]
            if not isinstance(values, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
            ):
                raise InputError(f"int8 calibration: {name} must be a list of numbers")
        return cls(lower=data["lower"], upper=data["upper"], method=data["method"])


def _check_matrix(vectors: Any, name: str) -> np.ndarray:
    array = np.asarray(vectors)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-d, got shape {array.shape}")
    return array


def fit_int8_calibration(vectors: np.ndarray, method: str = "minmax") -> Int8Calibration:
    """Per-dimension ranges of ``vectors`` (the stored corpus vectors of one size): min/max,
    or the P-th and (100-P)-th percentiles so a few extreme values do not stretch the range
    (values outside it are clipped to the end codes)."""
    percentile = _parse_method(method)
    array = _check_matrix(vectors, "vectors").astype(np.float32, copy=False)
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError("int8 calibration needs at least one vector with one dimension")
    if not np.isfinite(array).all():
        raise InputError("int8 calibration: the vectors hold a non-finite value")
    if percentile == 0.0:
        lower, upper = array.min(axis=0), array.max(axis=0)
    else:
        lower, upper = np.percentile(array, [percentile, 100.0 - percentile], axis=0)
    lower = lower.astype(np.float32)
    upper = upper.astype(np.float32)
    # a constant dimension gets a tiny range: its value maps to the lowest code, whose
    # bucket centre is within 1e-6 relative of it (ST would use steps of 1 and decode +0.5)
    widen = np.maximum(np.abs(lower), np.float32(1.0)) * np.float32(1e-6)
    upper = np.where(upper > lower, upper, lower + widen).astype(np.float32)
    return Int8Calibration(lower=lower, upper=upper, method=method)


def _steps(calibration: Int8Calibration) -> np.ndarray:
    steps = (calibration.upper - calibration.lower) / np.float32(255)
    return np.where(steps == 0, np.float32(1), steps).astype(np.float32)


def _check_dim(array: np.ndarray, calibration: Int8Calibration) -> None:
    if array.shape[1] != calibration.dim:
        raise ValueError(
            f"vectors have {array.shape[1]} dimensions, the calibration {calibration.dim}"
        )


def quantize_int8(vectors: np.ndarray, calibration: Int8Calibration) -> np.ndarray:
    """int8 codes, as ``quantize_embeddings(x, "int8", ranges=[lower, upper])``:
    floor((x - lower) / ((upper - lower) / 255)) clipped to [0, 255], minus 128."""
    array = _check_matrix(vectors, "vectors").astype(np.float32, copy=False)
    _check_dim(array, calibration)
    buckets = np.floor((array - calibration.lower) / _steps(calibration))
    return (np.clip(buckets, 0, 255) - 128).astype(np.int8)


def dequantize_int8(codes: np.ndarray, calibration: Int8Calibration) -> np.ndarray:
    """float32 vectors at the centres of the codes' buckets (the least-squares estimate for
    values spread evenly within a bucket). The top code (127) holds only ``upper`` itself
    (and values clipped to it): floor() puts everything below ``upper`` in codes up to 126,
    so it decodes to ``upper``, not half a step above."""
    array = _check_matrix(codes, "codes")
    if array.dtype != np.int8:
        raise ValueError(f"int8 codes expected, got {array.dtype}")
    _check_dim(array, calibration)
    centres = array.astype(np.float32) + np.float32(128.5)
    decoded = calibration.lower + centres * _steps(calibration)
    return np.minimum(decoded, calibration.upper).astype(np.float32)


# --- binary ----------------------------------------------------------------------------------
def pack_binary(vectors: np.ndarray) -> np.ndarray:
    """(n, ceil(d/8)) uint8: bit set where x > 0, most significant bit first (ST "ubinary");
    the unused low bits of the last byte are 0 in every vector, so Hamming is unaffected."""
    array = _check_matrix(vectors, "vectors")
    return np.packbits(array > 0, axis=1)


def unpack_binary(codes: np.ndarray, dim: int) -> np.ndarray:
    """(n, dim) float32 of +1 (bit set) and -1: what a float query is scored against."""
    array = _check_matrix(codes, "codes")
    if array.dtype != np.uint8 or array.shape[1] != math.ceil(dim / 8):
        raise ValueError(
            f"binary codes of {dim} dimensions are uint8 with {math.ceil(dim / 8)} "
            f"columns, got {array.dtype} with {array.shape[1]}"
        )
    bits = np.unpackbits(array, axis=1, count=dim)
    return bits.astype(np.float32) * np.float32(2) - np.float32(1)


def _as_words(codes: np.ndarray) -> np.ndarray:
    """Codes as uint64 words (zero-padded to a multiple of 8 bytes) so one popcount covers
    64 bits; padding bits are 0 on both sides and add nothing to a distance."""
    rows, width = codes.shape
    words = -(-width // 8)
    if width == words * 8 and codes.flags.c_contiguous:
        return codes.view(np.uint64)
    padded = np.zeros((rows, words * 8), dtype=np.uint8)
    padded[:, :width] = codes
    return padded.view(np.uint64)


_BYTE_POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits per uint64 element: numpy >= 2.0's bitwise_count, else a byte table."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    as_bytes = words.view(np.uint8).reshape(*words.shape, 8)
    return _BYTE_POPCOUNT[as_bytes].sum(axis=-1, dtype=np.uint8)


def hamming_distances(query_codes: np.ndarray, corpus_codes: np.ndarray) -> np.ndarray:
    """(nq, nc) int32 Hamming distances between packed codes."""
    queries, corpus = _as_words(query_codes), _as_words(corpus_codes)
    distances = np.zeros((queries.shape[0], corpus.shape[0]), dtype=np.int32)
    for word in range(queries.shape[1]):  # one word at a time keeps the temporaries 2-d
        distances += _popcount(queries[:, word, None] ^ corpus[None, :, word])
    return distances


def _check_codes(query_codes: Any, corpus_codes: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    queries = _check_matrix(query_codes, "query codes")
    corpus = _check_matrix(corpus_codes, "corpus codes")
    if queries.dtype != np.uint8 or corpus.dtype != np.uint8:
        raise ValueError("packed binary codes must be uint8")
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(
            f"query codes have {queries.shape[1]} bytes, corpus codes {corpus.shape[1]}"
        )
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    return np.ascontiguousarray(queries), np.ascontiguousarray(corpus)


def hamming_topk(
    query_codes: np.ndarray,
    corpus_codes: np.ndarray,
    k: int,
    chunk_rows: int = 16_384,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``min(k, n)`` corpus rows per query by Hamming distance: (distances int32,
    indices int64), each (nq, k), ascending distance, equal distances by ascending index.

    ``backend``: ``faiss`` (faiss-cpu's flat binary index: SIMD popcount, about 10x numpy,
    bench/binary_search.py), ``numpy`` (numpy's bitwise_count, the corpus read
    ``chunk_rows`` at a time), or ``auto``: faiss when it is installed. Both give the same
    result, ties included (tests/test_quantize.py checks it on corpora full of duplicates).
    """
    queries, corpus = _check_codes(query_codes, corpus_codes, k)
    if corpus.shape[0] >= 2**31:
        raise ValueError("more than 2**31 corpus rows are not supported")
    if backend not in ("auto", "faiss", "numpy"):
        raise ValueError(f"unknown backend {backend!r}")
    k = min(k, corpus.shape[0])
    if k == 0 or queries.shape[0] == 0:
        return np.zeros((queries.shape[0], k), np.int32), np.zeros((queries.shape[0], k), np.int64)
    faiss = _faiss() if backend != "numpy" else None
    if faiss is None and backend == "faiss":
        raise ImportError("the faiss backend needs faiss-cpu: pip install 'madapt[faiss]'")
    if faiss is not None:
        return _faiss_topk(faiss, queries, corpus, k)
    return _numpy_topk(queries, corpus, k, chunk_rows)


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _faiss_topk(
    faiss: Any, queries: np.ndarray, corpus: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """faiss' flat binary index: its heap breaks equal distances by the lower id, so its
    top k is the exact one; a stable sort by (distance, index) makes the order explicit."""
    index = faiss.IndexBinaryFlat(corpus.shape[1] * 8)
    index.add(corpus)
    distances, indices = index.search(queries, k)
    keys = distances.astype(np.int64) << 32 | indices.astype(np.int64)
    keys = np.sort(keys, axis=1)
    return (keys >> 32).astype(np.int32), keys & np.int64(0xFFFFFFFF)


def _numpy_topk(
    queries: np.ndarray, corpus: np.ndarray, k: int, chunk_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distance and index packed into one int64 key (distance << 32 | index), so a partial
    sort of keys orders ties by index with no repair step; the corpus is read ``chunk_rows``
    at a time and merged into a running best."""
    best = np.empty((queries.shape[0], 0), dtype=np.int64)
    for start in range(0, corpus.shape[0], max(1, chunk_rows)):
        block = corpus[start : start + chunk_rows]
        keys = hamming_distances(queries, block).astype(np.int64) << 32
        keys |= np.arange(start, start + block.shape[0], dtype=np.int64)
        keys = np.concatenate([best, keys], axis=1)
        if keys.shape[1] > k:
            keys = np.partition(keys, k - 1, axis=1)[:, :k]
        best = keys
    best = np.sort(best, axis=1)
    return (best >> 32).astype(np.int32), best & np.int64(0xFFFFFFFF)
