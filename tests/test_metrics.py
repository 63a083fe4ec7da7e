"""Our metrics against hand computations and against pytrec_eval (trec_eval), which BEIR uses."""

from __future__ import annotations

import gzip
import json
import math
import random
from pathlib import Path

import pytest

from madapt_cli.errors import InputError
from madapt_cli.retrieval.metrics import Metric, evaluate_rankings, parse_metrics

pytrec_eval = pytest.importorskip("pytrec_eval")

REPO = Path(__file__).resolve().parents[1]
DATASET_ROOTS = [REPO.parent / "shared" / "datasets", Path("/work/shared/datasets")]


def _dataset(name: str) -> Path | None:
    """A BEIR folder with test qrels: the shared datasets, else (SciFact) the bundled copy."""
    candidates = [root / name for root in DATASET_ROOTS]
    if name == "scifact":
        candidates.append(REPO / "examples" / "scifact")
    for folder in candidates:
        if (folder / "qrels" / "test.tsv").is_file() and _corpus_file(folder) is not None:
            return folder
    return None


def _corpus_file(folder: Path) -> Path | None:
    for candidate in (folder / "corpus.jsonl", folder / "corpus.jsonl.gz"):
        if candidate.is_file():
            return candidate
    return None


def _corpus_ids(folder: Path) -> list[str]:
    path = _corpus_file(folder)
    assert path is not None
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line)["_id"] for line in handle]


def query_metrics(ranking, judgments, metrics):
    """One query's values through the public entry point."""
    return evaluate_rankings({"q": ranking}, {"q": judgments}, metrics).per_query["q"]


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    from madapt_cli.data import read_qrels

    return read_qrels(path)


# pytrec_eval measure for each of our metrics; mrr@k is recip_rank of a run cut to k.
TREC_NAMES = {"ndcg": "ndcg_cut", "recall": "recall", "map": "map_cut", "precision": "P"}


def _pytrec_means(run_scores, qrels, metric: Metric) -> dict[str, float]:
    """Per-query values of one metric by pytrec_eval, from doc -> score runs."""
    if metric.name == "mrr":
        cut = {
            q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[: metric.k])
            for q, docs in run_scores.items()
        }
        evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
        return {q: v["recip_rank"] for q, v in evaluator.evaluate(cut).items()}
    measure = f"{TREC_NAMES[metric.name]}.{metric.k}"
    key = f"{TREC_NAMES[metric.name]}_{metric.k}"
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {measure})
    return {q: v[key] for q, v in evaluator.evaluate(run_scores).items()}


def _compare_with_pytrec(rankings, qrels, metrics):
    """Distinct descending scores so pytrec_eval's own tie rule (doc id desc) never applies."""
    run_scores = {
        q: {d: float(len(docs) - i) for i, d in enumerate(docs)} for q, docs in rankings.items()
    }
    ours = evaluate_rankings(rankings, qrels, metrics)
    for metric in ours_metrics(metrics):
        theirs = _pytrec_means(run_scores, qrels, metric)
        assert set(theirs) == set(ours.per_query), metric
        for query_id, value in theirs.items():
            assert ours.per_query[query_id][metric.label] == pytest.approx(value, abs=1e-6), (
                metric.label,
                query_id,
            )
        mean = sum(theirs.values()) / len(theirs)
        assert ours.means[metric.label] == pytest.approx(mean, abs=1e-6)
    return ours


def ours_metrics(metrics):
    return parse_metrics(metrics)


# --- hand-computed ---------------------------------------------------------------------------
def test_graded_ndcg_ignores_negative_and_zero_relevance():
    judgments = {"a": 2, "b": 1, "c": 0, "d": -1}
    ranking = ["d", "c", "a", "z", "b"]
    values = query_metrics(ranking, judgments, parse_metrics("ndcg@3,ndcg@10"))
    ideal = 2 + 1 / math.log2(3)
    assert values["ndcg@3"] == pytest.approx((2 / math.log2(4)) / ideal)
    assert values["ndcg@10"] == pytest.approx((2 / math.log2(4) + 1 / math.log2(6)) / ideal)


def test_map_recall_mrr_precision_by_hand():
    judgments = {"a": 1, "b": 1, "c": 1}  # c is never retrieved
    ranking = ["x", "a", "y", "b"]
    values = query_metrics(
        ranking, judgments, parse_metrics("map@10,recall@2,mrr@10,mrr@1,precision@4")
    )
    assert values["map@10"] == pytest.approx((1 / 2 + 2 / 4) / 3)  # divided by all 3 relevant
    assert values["recall@2"] == pytest.approx(1 / 3)
    assert values["mrr@10"] == pytest.approx(1 / 2)
    assert values["mrr@1"] == 0.0
    assert values["precision@4"] == pytest.approx(2 / 4)


def test_duplicate_documents_in_a_ranking_count_once():
    values = query_metrics(["a", "a", "b"], {"a": 1, "b": 1}, parse_metrics("precision@2,map@10"))
    assert values["precision@2"] == pytest.approx(1.0)  # ranking is a, b
    assert values["map@10"] == pytest.approx(1.0)


def test_which_queries_count():
    qrels = {"judged": {"a": 1}, "only-zero": {"a": 0}, "not-run": {"a": 1}}
    rankings = {"judged": ["a"], "only-zero": ["a"], "not-in-qrels": ["a"]}
    result = evaluate_rankings(rankings, qrels, "ndcg@10")
    assert set(result.per_query) == {"judged", "only-zero"}
    assert result.per_query["only-zero"]["ndcg@10"] == 0.0
    assert result.means["ndcg@10"] == pytest.approx(0.5)
    assert result.num_queries == 2


def test_parse_metrics():
    assert [m.label for m in parse_metrics(" NDCG@10, recall@100,ndcg@10")] == [
        "ndcg@10",
        "recall@100",
    ]
    for bad in ("ndcg", "ndcg@0", "ndcg@x", "bleu@10", "@5"):
        with pytest.raises(InputError, match="unknown metric"):
            parse_metrics(bad)
    with pytest.raises(InputError, match="no metrics"):
        parse_metrics(" , ")


# --- against pytrec_eval ---------------------------------------------------------------------
METRICS = "ndcg@1,ndcg@10,ndcg@100,recall@10,recall@100,mrr@10,map@10,map@100,precision@5"


def test_synthetic_runs_match_pytrec_eval():
    rng = random.Random(7)
    docs = [f"d{i}" for i in range(60)]
    qrels, rankings = {}, {}
    for q in range(40):
        judged = rng.sample(docs, rng.randint(1, 12))
        qrels[f"q{q}"] = {d: rng.choice([-1, 0, 1, 1, 2, 3]) for d in judged}
        rankings[f"q{q}"] = rng.sample(docs, rng.randint(0, 60))
    rankings["q0"] = []  # an empty ranking still counts, as 0
    qrels["never-run"] = {"d1": 1}
    result = _compare_with_pytrec(rankings, qrels, METRICS)
    assert result.num_queries == 40


def _beir_runs(dataset: Path, seed: int) -> tuple[dict[str, list[str]], dict[str, dict[str, int]]]:
    """Deterministic runs from the real qrels: each query's judged documents mixed with
    random corpus documents, shuffled, 150 long (so relevant ones fall inside and outside
    every cut-off)."""
    qrels = _read_qrels(dataset / "qrels" / "test.tsv")
    corpus_ids = _corpus_ids(dataset)
    rng = random.Random(seed)
    rankings = {}
    for query_id in sorted(qrels):
        judged = list(qrels[query_id])
        pool = judged + rng.sample(corpus_ids, 150)
        rng.shuffle(pool)
        rankings[query_id] = list(dict.fromkeys(pool))[:150]
    return rankings, qrels


@pytest.mark.parametrize("name", ["scifact", "nfcorpus"])
def test_real_beir_qrels_match_pytrec_eval(name):
    dataset = _dataset(name)
    if dataset is None:
        pytest.skip(f"BEIR {name} not present under {DATASET_ROOTS}")
    rankings, qrels = _beir_runs(dataset, seed=13)
    if name == "nfcorpus":  # graded judgments: 1 and 2
        assert {r for judged in qrels.values() for r in judged.values()} >= {1, 2}
    result = _compare_with_pytrec(rankings, qrels, METRICS)
    assert result.num_queries == len(qrels)


@pytest.mark.parametrize("name", ["scifact", "nfcorpus"])
def test_vector_search_path_matches_pytrec_eval(name):
    """evaluate_vectors (search + bulk scoring by corpus row) on the real qrels, with random
    vectors and a tenth of the corpus left out so some judged documents are missing."""
    import numpy as np

    from madapt_cli.retrieval.evaluate import evaluate_vectors
    from madapt_cli.retrieval.search import search_topk

    dataset = _dataset(name)
    if dataset is None:
        pytest.skip(f"BEIR {name} not present under {DATASET_ROOTS}")
    qrels = _read_qrels(dataset / "qrels" / "test.tsv")
    corpus_ids = [doc_id for i, doc_id in enumerate(_corpus_ids(dataset)) if i % 10]
    rng = np.random.default_rng(11)
    corpus = rng.standard_normal((len(corpus_ids), 16)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    query_ids = sorted(qrels)
    # queries near one of their judged documents, so the metrics are far from zero
    row_of = {d: i for i, d in enumerate(corpus_ids)}
    queries = rng.standard_normal((len(query_ids), 16)).astype(np.float32)
    for i, q in enumerate(query_ids):
        near = [row_of[d] for d in qrels[q] if d in row_of]
        if near:
            queries[i] = corpus[near[0]] + 0.3 * queries[i]
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ours = evaluate_vectors(queries, query_ids, corpus, corpus_ids, qrels, METRICS)
    _, indices = search_topk(queries, corpus, 100)
    # pytrec_eval gets our order as distinct scores (its own tie rule differs from ours)
    run = {
        q: {corpus_ids[j]: float(100 - rank) for rank, j in enumerate(indices[i])}
        for i, q in enumerate(query_ids)
    }
    assert ours.means["ndcg@10"] > 0.1
    for metric in parse_metrics(METRICS):
        theirs = _pytrec_means(run, qrels, metric)
        mean = sum(theirs.values()) / len(theirs)
        assert ours.means[metric.label] == pytest.approx(mean, abs=1e-6), metric.label


def test_tied_scores_are_read_in_trec_eval_order():
    """Duplicate documents tie exactly; trec_eval ranks tied documents by id, descending.
    The vector paths must give pytrec_eval's figures on the very same (tied) scores."""
    import numpy as np
    from retrieval_helpers import evaluate_prefixes

    from madapt_cli.retrieval.evaluate import evaluate_vectors
    from madapt_cli.retrieval.search import search_topk

    rng = np.random.default_rng(12)
    base = rng.standard_normal((40, 12)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    corpus = np.concatenate([base, base[:20]])  # rows 40..59 duplicate rows 0..19
    corpus_ids = [f"doc{i:03d}" for i in range(40)] + [f"dup{i:03d}" for i in range(20)]
    queries = base[:20] + 0.3 * rng.standard_normal((20, 12)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    query_ids = [f"q{i}" for i in range(20)]
    # the original is relevant, its duplicate ('dup' > 'doc': trec_eval ranks it first) is not
    qrels = {f"q{i}": {f"doc{i:03d}": 1 + i % 2, f"doc{(i + 1) % 40:03d}": 1} for i in range(20)}
    metrics = "ndcg@10,map@10,recall@10"
    ours = evaluate_vectors(queries, query_ids, corpus, corpus_ids, qrels, metrics)
    scores, indices = search_topk(queries, corpus, 10)
    assert (scores[:, 1:] == scores[:, :-1]).any()  # there are exact ties
    run = {
        q: {corpus_ids[j]: float(s) for s, j in zip(scores[r], indices[r], strict=True)}
        for r, q in enumerate(query_ids)
    }
    for metric in parse_metrics(metrics):
        theirs = _pytrec_means(run, qrels, metric)
        assert ours.means[metric.label] == pytest.approx(
            sum(theirs.values()) / len(theirs), abs=1e-6
        )
    at_full = evaluate_prefixes(queries, query_ids, corpus, corpus_ids, qrels, [12], metrics)[12]
    assert at_full.means == pytest.approx(ours.means, abs=1e-6)
    # and it matters: scored in search order (lower row first) nDCG would be higher
    in_search_order = evaluate_rankings(
        {q: [corpus_ids[j] for j in indices[r]] for r, q in enumerate(query_ids)}, qrels, metrics
    )
    assert in_search_order.means["ndcg@10"] > ours.means["ndcg@10"] + 0.01
