"""Exact chunked top-k search and the vectors-to-metrics helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from retrieval_helpers import evaluate_prefixes, rankings_from_indices

from madapt_cli.errors import InputError
from madapt_cli.retrieval.evaluate import evaluate_vectors, ndcg_at_10
from madapt_cli.retrieval.search import (
    identical_id_exclusions,
    prefix_normalized,
    search_topk,
    search_topk_prefixes,
)
from madapt_cli.util.vectors import normalize_rows


def _unit(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    return normalize_rows(rng.standard_normal((rows, dim)).astype(np.float32))


def _reference_topk(queries, corpus, k, excluded=()):
    """Brute force: all scores, sorted by (score desc, corpus row asc)."""
    scores = queries @ corpus.T
    for q, c in excluded:
        scores[q, c] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(corpus.shape[0]), scores.shape), -scores), axis=1)
    top = order[:, :k]
    return np.take_along_axis(scores, top, axis=1), top


@pytest.mark.parametrize(("chunk_size", "query_block"), [(7, 3), (64, 1000), (1000, 5)])
def test_search_matches_brute_force(chunk_size, query_block):
    rng = np.random.default_rng(0)
    corpus, queries = _unit(rng, 200, 16), _unit(rng, 23, 16)
    scores, indices = search_topk(
        queries, corpus, 10, chunk_size=chunk_size, query_block=query_block
    )
    want_scores, want_indices = _reference_topk(queries, corpus, 10)
    assert indices.dtype == np.int64 and scores.dtype == np.float32
    assert scores.shape == (23, 10)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_ties_go_to_the_lower_corpus_row_across_chunks():
    rng = np.random.default_rng(1)
    base = _unit(rng, 5, 8)
    # many exact duplicates of each base vector, interleaved so ties straddle chunk borders
    corpus = np.concatenate([base] * 12)  # row r duplicates base[r % 5]
    queries = base[[0, 3]]
    for chunk_size in (4, 7, 13, 60):
        _, indices = search_topk(queries, corpus, 9, chunk_size=chunk_size)
        np.testing.assert_array_equal(indices[0], np.arange(0, 45, 5))
        np.testing.assert_array_equal(indices[1], np.arange(3, 48, 5))


def test_k_larger_than_corpus_and_exclusions():
    rng = np.random.default_rng(2)
    corpus, queries = _unit(rng, 6, 4), _unit(rng, 3, 4)
    scores, indices = search_topk(queries, corpus, 50, chunk_size=4)
    assert indices.shape == (3, 6)
    assert sorted(indices[0].tolist()) == list(range(6))
    excluded = [(0, int(indices[0, 0])), (2, 1), (2, 2), (2, 3), (2, 4), (2, 5), (2, 0)]
    scores, indices = search_topk(queries, corpus, 50, chunk_size=4, exclude=excluded)
    _, want_indices = _reference_topk(queries, corpus, 6, excluded)
    np.testing.assert_array_equal(indices[:2, :5], want_indices[:2, :5])
    assert int(excluded[0][1]) not in indices[0].tolist()[:5]
    assert indices[0, -1] == -1 and np.isneginf(scores[0, -1])
    assert (indices[2] == -1).all()  # every row excluded for query 2


def test_torch_input_and_empty_queries():
    rng = np.random.default_rng(3)
    corpus, queries = _unit(rng, 50, 8), _unit(rng, 4, 8)
    from_numpy = search_topk(queries, corpus, 5)
    from_torch = search_topk(torch.from_numpy(queries), torch.from_numpy(corpus), 5)
    np.testing.assert_array_equal(from_numpy[1], from_torch[1])
    scores, indices = search_topk(np.zeros((0, 8), np.float32), corpus, 5)
    assert scores.shape == (0, 5) and indices.shape == (0, 5)
    with pytest.raises(ValueError, match="dimensions"):
        search_topk(queries[:, :4], corpus, 5)


def test_identical_id_exclusions_and_rankings():
    pairs = identical_id_exclusions(["a", "q", "c"], ["c", "b", "a"])
    assert pairs.tolist() == [[0, 2], [2, 0]]
    rankings = rankings_from_indices(np.array([[2, -1], [0, 1]]), ["x", "y"], ["c", "b", "a"])
    assert rankings == {"x": ["a"], "y": ["c", "b"]}


def test_prefix_normalized():
    vectors = np.array([[3.0, 4.0, 12.0]], dtype=np.float32)
    np.testing.assert_allclose(prefix_normalized(vectors, 2), [[0.6, 0.8]], atol=1e-6)
    for bad in (0, 4):
        with pytest.raises(InputError, match=r"outside 1\.\.3"):
            prefix_normalized(vectors, bad)


def _planted(rng, num_queries=30, num_docs=300, dim=32, noise=0.08):
    """Each query's relevant document is a noisy copy of it; more noise in the tail dims so
    truncation changes results, as with real embeddings."""
    queries = _unit(rng, num_queries, dim)
    corpus = _unit(rng, num_docs, dim)
    scale = np.linspace(0.2, 2.0, dim, dtype=np.float32)
    corpus[:num_queries] = normalize_rows(
        queries + noise * scale * rng.standard_normal((num_queries, dim)).astype(np.float32)
    )
    query_ids = [f"q{i}" for i in range(num_queries)]
    corpus_ids = [f"d{i}" for i in range(num_docs)]
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(num_queries)}
    return queries, query_ids, corpus, corpus_ids, qrels


def test_evaluate_vectors_on_planted_relevance():
    rng = np.random.default_rng(4)
    queries, query_ids, corpus, corpus_ids, qrels = _planted(rng)
    full = evaluate_vectors(queries, query_ids, corpus, corpus_ids, qrels, "ndcg@10,recall@100")
    tiny = evaluate_vectors(queries, query_ids, corpus, corpus_ids, qrels, "ndcg@10", dim=2)
    assert full.num_queries == 30
    assert full.means["ndcg@10"] > 0.9 and full.means["recall@100"] == 1.0
    assert tiny.means["ndcg@10"] < full.means["ndcg@10"] - 0.3
    # the trainer's shortcut is the same computation
    value = ndcg_at_10(queries, query_ids, corpus, corpus_ids, qrels, dim=8)
    expected = evaluate_vectors(queries, query_ids, corpus, corpus_ids, qrels, "ndcg@10", dim=8)
    assert value == pytest.approx(expected.means["ndcg@10"])


def test_unjudged_query_rows_are_skipped_and_identical_ids_dropped():
    rng = np.random.default_rng(5)
    queries, query_ids, corpus, corpus_ids, qrels = _planted(rng, noise=0.01)
    # every query id is also a corpus id, and that document is the query itself
    corpus = np.concatenate([queries, corpus])
    corpus_ids = query_ids + corpus_ids
    kept = {q: qrels[q] for q in query_ids[:10]}
    plain = evaluate_vectors(queries, query_ids, corpus, corpus_ids, kept, "mrr@10")
    ignoring = evaluate_vectors(
        queries, query_ids, corpus, corpus_ids, kept, "mrr@10", ignore_identical_ids=True
    )
    assert plain.num_queries == 10 == ignoring.num_queries
    assert plain.means["mrr@10"] == pytest.approx(0.5)  # the query itself ranks first
    assert ignoring.means["mrr@10"] == pytest.approx(1.0)


def test_prefix_search_equals_separate_searches_of_renormalised_prefixes():
    rng = np.random.default_rng(6)
    corpus = rng.standard_normal((300, 24)).astype(np.float32) * 3  # not normalised
    queries = rng.standard_normal((17, 24)).astype(np.float32)
    excluded = [(0, 5), (3, 7)]
    found = search_topk_prefixes(queries, corpus, [24, 4, 12], 10, chunk_size=64, exclude=excluded)
    assert sorted(found) == [4, 12, 24]
    for dim, (scores, indices) in found.items():
        want_scores, want_indices = search_topk(
            prefix_normalized(queries, dim), prefix_normalized(corpus, dim), 10, exclude=excluded
        )
        np.testing.assert_array_equal(indices, want_indices)
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    with pytest.raises(InputError, match=r"within 1\.\.24"):
        search_topk_prefixes(queries, corpus, [0, 8], 5)


def test_prefix_search_ties_go_to_the_lower_row():
    rng = np.random.default_rng(7)
    base = _unit(rng, 4, 8)
    corpus = np.concatenate([base] * 10)  # row r duplicates base[r % 4]
    for chunk_size in (5, 11, 40):
        found = search_topk_prefixes(base[[2]], corpus, [3, 8], 6, chunk_size=chunk_size)
        for _, indices in found.values():
            np.testing.assert_array_equal(indices[0], np.arange(2, 24, 4))


def test_pca_baseline_fits_on_evenly_spaced_rows_above_the_cap():
    from madapt_cli.methods.pca import fit_pca
    from madapt_cli.pipelines.evaluate import pca_baseline

    rng = np.random.default_rng(8)
    corpus = _unit(rng, 101, 6) + np.linspace(0, 1, 6, dtype=np.float32)
    capped = pca_baseline(corpus, 6, max_rows=11)
    subset = fit_pca([corpus[::10]], 6)  # rows 0, 10, ..., 100: evenly spaced
    np.testing.assert_allclose(capped.module.components, subset.components, atol=1e-6)
    whole = pca_baseline(corpus, 6, max_rows=None)
    np.testing.assert_allclose(whole.module.mean, fit_pca([corpus], 6).mean, atol=1e-6)
    assert capped.transform(corpus[:3], dim=2).shape == (3, 2)


def test_evaluate_prefixes_equals_one_size_at_a_time():
    rng = np.random.default_rng(9)
    queries, query_ids, corpus, corpus_ids, qrels = _planted(rng)
    together = evaluate_prefixes(queries, query_ids, corpus, corpus_ids, qrels, [2, 8, 32])
    assert sorted(together) == [2, 8, 32]
    for dim, evaluation in together.items():
        alone = evaluate_vectors(queries, query_ids, corpus, corpus_ids, qrels, dim=dim)
        assert evaluation.means == pytest.approx(alone.means, abs=1e-12)
    assert together[2].means["ndcg@10"] < together[32].means["ndcg@10"]


def test_many_exclusions_spread_over_query_blocks():
    rng = np.random.default_rng(10)
    corpus = _unit(rng, 90, 8)
    pairs = [(q, q) for q in range(90)][::-1]  # self-exclusion, in no particular order
    _, indices = search_topk(corpus, corpus, 3, chunk_size=16, query_block=7, exclude=pairs)
    assert not (indices == np.arange(90)[:, None]).any()
    _, want = _reference_topk(corpus, corpus, 3, pairs)
    np.testing.assert_array_equal(indices, want)


def test_running_topk_fed_in_uneven_pieces_equals_one_search():
    from madapt_cli.retrieval.search import PrefixTopK

    rng = np.random.default_rng(7)
    queries, corpus = _unit(rng, 9, 16), _unit(rng, 103, 16)
    excluded = [(0, 5), (3, 100), (8, 40)]
    whole = search_topk_prefixes(queries, corpus, [4, 16], 12, exclude=excluded)
    running = PrefixTopK(
        torch.from_numpy(queries),
        12,
        len(corpus),
        [4, 16],
        chunk_size=10,
        query_block=4,
        exclude=excluded,
    )
    for start, stop in [(0, 1), (1, 37), (37, 38), (38, 103)]:
        running.add(torch.from_numpy(corpus[start:stop]))
    pieces = running.result()
    for size in (4, 16):
        np.testing.assert_array_equal(pieces[size][1], whole[size][1])
        np.testing.assert_allclose(pieces[size][0], whole[size][0], atol=1e-6)


def test_running_topk_refuses_rows_beyond_those_announced_and_a_short_corpus():
    from madapt_cli.retrieval.search import PrefixTopK

    rng = np.random.default_rng(8)
    running = PrefixTopK(torch.from_numpy(_unit(rng, 2, 4)), 3, 5)
    running.add(torch.from_numpy(_unit(rng, 4, 4)))
    with pytest.raises(ValueError, match="4 corpus rows added, 5 announced"):
        running.result()
    with pytest.raises(ValueError, match="more than the 5"):
        running.add(torch.from_numpy(_unit(rng, 2, 4)))


def test_read_ahead_yields_in_order_and_raises_the_producers_error():
    from madapt_cli.pipelines.evaluate import read_ahead

    assert list(read_ahead(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise OSError("disk gone")

    seen = []
    with pytest.raises(OSError, match="disk gone"):
        for item in read_ahead(failing()):
            seen.append(item)
    assert seen == [1, 2]


def test_read_ahead_stops_its_producer_when_the_consumer_stops_early():
    import threading

    from madapt_cli.pipelines.evaluate import read_ahead

    produced = []

    def endless():
        for i in range(10**9):
            produced.append(i)
            yield i

    reader = read_ahead(endless(), depth=2)
    assert [next(reader) for _ in range(3)] == [0, 1, 2]
    reader.close()  # the consumer stops early
    assert not any(t.name == "madapt-read-ahead" for t in threading.enumerate())
    assert len(produced) <= 3 + 2 + 1  # at most depth items ahead, plus the one in hand
