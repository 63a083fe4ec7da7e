"""The stored precisions: bytes, int8 codes (the same as sentence-transformers'), binary sign
bits, and exact Hamming top-k with ties by index."""

from __future__ import annotations

import json

import numpy as np
import pytest

from madapt_cli.errors import InputError
from madapt_cli.retrieval import quantize
from madapt_cli.retrieval.quantize import (
    PRECISIONS,
    Int8Calibration,
    bytes_per_vector,
    dequantize_int8,
    fit_int8_calibration,
    hamming_topk,
    pack_binary,
    quantize_int8,
    unpack_binary,
)


def _unit_rows(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_bytes_per_vector() -> None:
    assert PRECISIONS == ("float32", "float16", "int8", "int2", "binary")
    assert [bytes_per_vector(p, 384) for p in PRECISIONS] == [1536, 768, 384, 96, 48]
    assert bytes_per_vector("binary", 1) == 1
    assert bytes_per_vector("binary", 9) == 2
    assert bytes_per_vector("binary", 64) == 8
    with pytest.raises(InputError, match="bfloat16"):
        bytes_per_vector("bfloat16", 8)
    with pytest.raises(ValueError):
        bytes_per_vector("int8", 0)


def test_int8_matches_sentence_transformers() -> None:
    from sentence_transformers.util.quantization import quantize_embeddings

    corpus = _unit_rows(500, 48)
    queries = _unit_rows(40, 48, seed=1) * 1.5  # some values fall outside the ranges: clipped
    for method in ("minmax", "percentile:1"):
        calibration = fit_int8_calibration(corpus, method)
        ranges = np.stack([calibration.lower, calibration.upper])
        for vectors in (corpus, queries):
            ours = quantize_int8(vectors, calibration)
            theirs = quantize_embeddings(vectors, precision="int8", ranges=ranges)
            assert ours.dtype == np.int8
            np.testing.assert_array_equal(ours, theirs)
    minmax = quantize_int8(corpus, fit_int8_calibration(corpus))
    assert minmax.min() == -128 and minmax.max() == 127  # the whole code range is used


def test_binary_matches_sentence_transformers_ubinary() -> None:
    from sentence_transformers.util.quantization import quantize_embeddings

    for dim in (8, 13, 64, 100):
        vectors = _unit_rows(30, dim, seed=dim)
        vectors[0, 0] = 0.0  # zero is not positive: bit 0
        codes = pack_binary(vectors)
        assert codes.dtype == np.uint8 and codes.shape == (30, bytes_per_vector("binary", dim))
        np.testing.assert_array_equal(codes, quantize_embeddings(vectors, precision="ubinary"))
        signs = unpack_binary(codes, dim)
        assert signs.dtype == np.float32 and signs.shape == (30, dim)
        np.testing.assert_array_equal(signs, np.where(vectors > 0, 1.0, -1.0))


def test_dequantize_is_within_half_a_step() -> None:
    corpus = _unit_rows(400, 32)
    calibration = fit_int8_calibration(corpus)
    decoded = dequantize_int8(quantize_int8(corpus, calibration), calibration)
    assert decoded.dtype == np.float32
    half_step = (calibration.upper - calibration.lower) / 255 / 2
    assert (np.abs(decoded - corpus) <= half_step * 1.001 + 1e-7).all()
    # clipped values decode to the end buckets' centres, inside the range
    outside = dequantize_int8(quantize_int8(corpus * 3, calibration), calibration)
    assert (outside >= calibration.lower).all() and (outside <= calibration.upper).all()


def test_percentile_ranges_ignore_outliers() -> None:
    corpus = _unit_rows(1000, 16) * 0.1
    corpus[0, 3] = 5.0  # one stretched coordinate
    minmax = fit_int8_calibration(corpus, "minmax")
    robust = fit_int8_calibration(corpus, "percentile:0.5")
    assert minmax.upper[3] == pytest.approx(5.0)
    assert robust.upper[3] < 0.5
    assert robust.method == "percentile:0.5"
    np.testing.assert_allclose(
        robust.lower, np.percentile(corpus, 0.5, axis=0).astype(np.float32), rtol=1e-6
    )
    # the robust codes separate the ordinary values better (lower error on all but the outlier)
    error = {}
    for name, cal in (("minmax", minmax), ("robust", robust)):
        decoded = dequantize_int8(quantize_int8(corpus, cal), cal)
        error[name] = np.abs(decoded[1:, 3] - corpus[1:, 3]).mean()
    assert error["robust"] < error["minmax"] / 5


def test_constant_dimension_gets_a_usable_range() -> None:
    corpus = _unit_rows(50, 4)
    corpus[:, 2] = 0.25
    calibration = fit_int8_calibration(corpus)
    assert (calibration.lower < calibration.upper).all()
    decoded = dequantize_int8(quantize_int8(corpus, calibration), calibration)
    np.testing.assert_allclose(decoded[:, 2], 0.25, rtol=1e-5)


def test_calibration_round_trips_through_json() -> None:
    calibration = fit_int8_calibration(_unit_rows(100, 24), "percentile:2.5")
    text = json.dumps(calibration.to_dict())
    back = Int8Calibration.from_dict(json.loads(text))
    assert back == calibration
    assert hash(back) == hash(calibration)
    assert back.lower.dtype == np.float32 and back.lower.shape == (24,)
    np.testing.assert_array_equal(back.upper, calibration.upper)
    with pytest.raises(ValueError):  # the calibration's arrays are read-only
        back.lower[0] = 1.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("nope", "expected an object"),
        ({"lower": [0.0], "upper": [1.0]}, "expected an object"),
        ({"lower": [0.0], "upper": [1.0], "method": 3}, "method must be a string"),
        ({"lower": [0.0], "upper": [1.0], "method": "maxmin"}, "unknown int8 calibration"),
        ({"lower": [0.0], "upper": [1.0], "method": "percentile:50"}, "unknown int8"),
        ({"lower": "0", "upper": [1.0], "method": "minmax"}, "lower must be a list"),
        ({"lower": [0.0], "upper": [True], "method": "minmax"}, "upper must be a list"),
        ({"lower": [], "upper": [], "method": "minmax"}, "non-empty"),
        ({"lower": [0.0, 0.0], "upper": [1.0], "method": "minmax"}, "lower has 2 values"),
        ({"lower": [0.0, 1.0], "upper": [1.0, 1.0], "method": "minmax"}, "dimension 1"),
        ({"lower": [0.0], "upper": [float("inf")], "method": "minmax"}, "non-finite"),
        ({"lower": [float("nan")], "upper": [1.0], "method": "minmax"}, "non-finite"),
    ],
)
def test_bad_calibrations_are_refused(data: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Int8Calibration.from_dict(data)


def test_bad_calibration_inputs() -> None:
    with pytest.raises(InputError, match="percentile:P"):
        fit_int8_calibration(_unit_rows(5, 4), "percentile:x")
    bad = _unit_rows(5, 4)
    bad[1, 1] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        fit_int8_calibration(bad)
    calibration = fit_int8_calibration(_unit_rows(5, 4))
    with pytest.raises(ValueError, match="3 dimensions"):
        quantize_int8(_unit_rows(2, 3), calibration)
    with pytest.raises(ValueError, match="int8 codes"):
        dequantize_int8(np.zeros((2, 4), dtype=np.uint8), calibration)
    with pytest.raises(ValueError, match="columns"):
        unpack_binary(np.zeros((2, 3), dtype=np.uint8), 8)


def _brute_force(queries: np.ndarray, corpus: np.ndarray, k: int) -> tuple:
    signs_q = unpack_binary(queries, queries.shape[1] * 8)
    signs_c = unpack_binary(corpus, corpus.shape[1] * 8)
    distances = ((signs_q[:, None, :] != signs_c[None, :, :]).sum(axis=2)).astype(np.int64)
    order = np.lexsort((np.broadcast_to(np.arange(len(corpus)), distances.shape), distances))
    order = order[:, :k]
    return np.take_along_axis(distances, order, axis=1), order


BACKENDS = ["numpy", pytest.param("faiss", marks=pytest.mark.skipif(
    quantize._faiss() is None, reason="faiss-cpu is not installed"))]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dim", [7, 64, 100, 256])
@pytest.mark.parametrize("chunk_rows", [1, 37, 10_000])
def test_hamming_topk_is_exact_with_ties_by_index(dim: int, chunk_rows: int, backend) -> None:
    rng = np.random.default_rng(dim)
    corpus = pack_binary(rng.standard_normal((300, dim)))
    corpus[100:140] = corpus[5]  # many exact duplicates: ties across every cut
    queries = np.concatenate([corpus[[5, 17]], pack_binary(rng.standard_normal((6, dim)))])
    expected_d, expected_i = _brute_force(queries, corpus, 10)
    distances, indices = hamming_topk(queries, corpus, 10, chunk_rows, backend)
    np.testing.assert_array_equal(distances, expected_d)
    np.testing.assert_array_equal(indices, expected_i)
    assert list(indices[0][:10]) == [5, *range(100, 109)]
    assert distances[0][0] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_hamming_backends_agree_on_a_corpus_of_duplicates(backend) -> None:
    """Few distinct codes among many rows: nearly every distance is a tie, across the cut."""
    rng = np.random.default_rng(1)
    distinct = pack_binary(rng.standard_normal((40, 16)))
    corpus = distinct[rng.integers(0, 40, 5_000)]
    queries = pack_binary(rng.standard_normal((30, 16)))
    expected_d, expected_i = _brute_force(queries, corpus, 25)
    distances, indices = hamming_topk(queries, corpus, 25, backend=backend)
    np.testing.assert_array_equal(distances, expected_d)
    np.testing.assert_array_equal(indices, expected_i)


def test_hamming_topk_small_corpus_and_bad_shapes() -> None:
    corpus = pack_binary(_unit_rows(3, 16))
    distances, indices = hamming_topk(corpus, corpus, 10)
    assert distances.shape == (3, 3) and sorted(indices[1]) == [0, 1, 2]
    assert list(distances[:, 0]) == [0, 0, 0]
    with pytest.raises(ValueError, match="bytes"):
        hamming_topk(corpus[:, :1], corpus, 1)
    with pytest.raises(ValueError, match="uint8"):
        hamming_topk(corpus.astype(np.int8), corpus, 1)
    with pytest.raises(ValueError, match="backend"):
        hamming_topk(corpus, corpus, 1, backend="gpu")
    distances, indices = hamming_topk(corpus[:0], corpus, 5)
    assert distances.shape == indices.shape == (0, 3)


def test_popcount_fallback_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = pack_binary(_unit_rows(50, 130))
    expected = quantize.hamming_distances(corpus, corpus)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    np.testing.assert_array_equal(quantize.hamming_distances(corpus, corpus), expected)
