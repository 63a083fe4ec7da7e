"""`madapt eval` through the real entry point: output shapes, methods, reports, bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import residual_adaptor

from madapt_cli import cli
from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.methods.pca import fit_pca
from madapt_cli.retrieval.evaluate import evaluate_vectors
from madapt_cli.store.base import embedding_schema, new_table_metadata, open_store, vectors_to_arrow

MODEL = "test/planted-model"
DIM = 24


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _table(ids: list[str], vectors: np.ndarray, role: str, model: str = MODEL) -> pa.Table:
    metadata = new_table_metadata(
        provider="local", model=model, dimension=vectors.shape[1], normalized=True, role=role
    )
    schema = embedding_schema(vectors.shape[1], metadata=metadata)
    return pa.Table.from_arrays(
        [pa.array(ids), vectors_to_arrow(vectors), pa.array(["0" * 64] * len(ids))],
        schema=schema,
    )


def make_store(root: Path, num_docs: int = 240, num_queries: int = 30, seed: int = 0):
    """A store whose query i is a noisy copy of document i (noise growing along the
    dimensions, so small prefixes lose quality), and its qrels file (graded: 2 for that
    document, 1 for document i + num_queries)."""
    rng = np.random.default_rng(seed)
    queries = _unit(rng.standard_normal((num_queries, DIM)))
    corpus = _unit(rng.standard_normal((num_docs, DIM)))
    scale = np.linspace(0.02, 0.3, DIM, dtype=np.float32)
    corpus[:num_queries] = _unit(queries + scale * rng.standard_normal((num_queries, DIM)))
    query_ids = [f"q{i}" for i in range(num_queries)]
    corpus_ids = [f"d{i}" for i in range(num_docs)]
    store = open_store(root / "store", create=True)
    store.append("corpus", _table(corpus_ids, corpus, "document"))
    store.append("queries", _table(query_ids, queries, "query"))
    qrels = {q: {f"d{i}": 2, f"d{i + num_queries}": 1} for i, q in enumerate(query_ids)}
    qrels_path = root / "qrels.tsv"
    lines = ["query-id\tcorpus-id\tscore"]
    lines += [f"{q}\t{d}\t{r}" for q, judged in qrels.items() for d, r in judged.items()]
    qrels_path.write_text("\r\n".join(lines) + "\r\n")
    return root / "store", qrels_path, (queries, query_ids, corpus, corpus_ids, qrels)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """`madapt ARGS` through cli.main (its one-line errors and exit codes)."""
    argv = sys.argv
    sys.argv = ["madapt", *[str(a) for a in args]]
    try:
        cli.main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def planted(tmp_path):
    return make_store(tmp_path)


def _by_method(summary: dict) -> dict[tuple[str, int], dict[str, float]]:
    return {(r["method"], r["dim"]): r["metrics"] for r in summary["results"]}


def test_json_output_shape_and_values(capsys, planted):
    store, qrels_path, (queries, query_ids, corpus, corpus_ids, qrels) = planted
    code, out, err = run_cli(
        capsys, "eval", store, "--qrels", qrels_path, "--dims", "4,8", "--json"
    )
    assert code == 0, err
    summary = json.loads(out)
    assert list(summary) == ["store", "qrels", "num_queries", "results"]
    assert summary["num_queries"] == 30
    assert all(list(r) == ["method", "dim", "metrics"] for r in summary["results"])
    results = _by_method(summary)
    assert set(results) == {
        ("truncate", 4),
        ("truncate", 8),
        ("truncate", DIM),
        ("pca", 4),
        ("pca", 8),
    }
    assert list(results[("truncate", 4)]) == ["ndcg@10", "recall@100", "mrr@10", "map@100"]
    direct = evaluate_vectors(queries, query_ids, corpus, corpus_ids, qrels, dim=8)
    for metric, value in direct.means.items():
        assert results[("truncate", 8)][metric] == pytest.approx(value, abs=1e-12)
    # planted noise grows along the dimensions: the full vectors beat a 4-d prefix
    assert results[("truncate", DIM)]["ndcg@10"] > results[("truncate", 4)]["ndcg@10"] + 0.1


def test_table_on_terminal_and_metric_choice(capsys, planted):
    store, qrels_path, _ = planted
    code, out, err = run_cli(
        capsys,
        "eval",
        store,
        "--qrels",
        qrels_path,
        "--dims",
        "8",
        "--baseline",
        "truncate",
        "--metrics",
        "ndcg@5,precision@3",
    )
    assert code == 0, err
    assert "ndcg@5" in out and "precision@3" in out and "recall@100" not in out
    assert "pca" not in out
    assert "original" in out and f"{4 * DIM}" in out  # bytes per vector at D


def _save_identity_adaptor(path: Path, model: str = MODEL, dimension: int = DIM) -> Path:
    # an untrained adaptor is the identity
    return residual_adaptor(dimension, model, name="identity-mlp").save(path)


def test_adaptors_identity_equals_truncate_and_saved_pca_equals_baseline(capsys, planted, tmp_path):
    store, qrels_path, (_, _, corpus, _, _) = planted
    identity = _save_identity_adaptor(tmp_path / "identity")
    pca_map = fit_pca([corpus], DIM)
    Adaptor(
        pca_map, {"name": "saved-pca", "method": "pca", "dimension": DIM, "base_model": MODEL}
    ).save(tmp_path / "saved-pca")
    code, out, err = run_cli(
        capsys,
        "eval",
        store,
        "--qrels",
        qrels_path,
        "--dims",
        "4,12",
        "--json",
        "--adaptor",
        identity,
        "--adaptor",
        tmp_path / "saved-pca",
    )
    assert code == 0, err
    results = _by_method(json.loads(out))
    for dim in (4, 12):
        assert results[("identity-mlp", dim)] == pytest.approx(results[("truncate", dim)], abs=1e-9)
        assert results[("saved-pca", dim)] == pytest.approx(results[("pca", dim)], abs=1e-9)
    assert ("identity-mlp", DIM) not in results  # only truncate carries the reference row


def test_ignore_identical_ids(capsys, tmp_path):
    rng = np.random.default_rng(3)
    queries = _unit(rng.standard_normal((10, 8)))
    others = _unit(rng.standard_normal((50, 8)))
    store = open_store(tmp_path / "store", create=True)
    # each query is also in the corpus under its own id; its relevant doc is a near copy
    near = _unit(queries + 0.01 * rng.standard_normal((10, 8)))
    store.append(
        "corpus",
        _table(
            [f"q{i}" for i in range(10)]
            + [f"n{i}" for i in range(10)]
            + [f"o{i}" for i in range(50)],
            np.concatenate([queries, near, others]),
            "document",
        ),
    )
    store.append("queries", _table([f"q{i}" for i in range(10)], queries, "query"))
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("".join(f"q{i}\tn{i}\t1\n" for i in range(10)))
    args = [
        "eval",
        tmp_path / "store",
        "--qrels",
        qrels,
        "--dims",
        "8",
        "--baseline",
        "truncate",
        "--metrics",
        "mrr@10",
        "--json",
    ]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and _by_method(json.loads(out))[("truncate", 8)]["mrr@10"] == pytest.approx(
        0.5
    )
    code, out, _ = run_cli(capsys, *args, "--ignore-identical-ids")
    assert code == 0 and _by_method(json.loads(out))[("truncate", 8)]["mrr@10"] == pytest.approx(
        1.0
    )


def test_report_directory(capsys, planted, tmp_path):
    store, qrels_path, _ = planted
    identity = _save_identity_adaptor(tmp_path / "identity")
    report = tmp_path / "out" / "report"
    code, out, err = run_cli(
        capsys,
        "eval",
        store,
        "--qrels",
        qrels_path,
        "--dims",
        "4,8,16",
        "--json",
        "--adaptor",
        identity,
        "--report",
        report,
    )
    assert code == 0, err
    summary = json.loads(out)
    files = sorted(p.name for p in report.iterdir())
    assert files == [
        "madapt.json",
        "map_at_100.png",
        "mrr_at_10.png",
        "ndcg_at_10.png",
        "recall_at_100.png",
        "report.json",
        "report.md",
    ]
    written = json.loads((report / "report.json").read_text())
    assert written["results"] == summary["results"]
    assert len(written["fingerprints"]["qrels_sha256"]) == 64
    assert len(written["methods"][2]["fingerprint"]) == 64
    markdown = (report / "report.md").read_text()
    assert "| 16 | 64 | identity-mlp |" in markdown
    assert f"| {DIM} | {4 * DIM} | truncate (original) |" in markdown
    assert (report / "ndcg_at_10.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run replaces the report only with --overwrite; nothing temporary is left
    again = ("eval", store, "--qrels", qrels_path, "--dims", "4", "--baseline", "truncate")
    code, _, err = run_cli(capsys, *again, "--report", report)
    assert code == 2 and "pass --overwrite" in err
    code, _, err = run_cli(capsys, *again, "--report", report, "--overwrite")
    assert code == 0, err
    assert json.loads((report / "report.json").read_text())["dims"] == [4]
    assert sorted(p.name for p in report.parent.iterdir()) == ["report"]


# --- bad input: one line on stderr, exit 2, no traceback ---------------------------------------
def _fails(capsys, *args: str, match: str) -> str:
    code, out, err = run_cli(capsys, *args)
    assert code == 2, (out, err)
    assert "Traceback" not in err
    assert match in err, err
    assert out == ""
    return err


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--dims", "0"], "size 0 is below 1"),
        (["--dims", "8,25"], f"size 25 is above the vectors' dimension {DIM}"),
        (["--dims", "8,x"], "'x' is not a whole number"),
        (["--metrics", "ndcg@10,bleu@4"], "unknown metric 'bleu@4'"),
        (["--baseline", "random"], "unknown --baseline 'random'"),
        (
            ["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"],
            "device",
        ),
    ],
)
def test_bad_options(capsys, planted, extra, match):
    store, qrels_path, _ = planted
    _fails(capsys, "eval", store, "--qrels", qrels_path, *extra, match=match)


def test_qrels_problems(capsys, planted, tmp_path):
    store, qrels_path, _ = planted
    bad = tmp_path / "bad.tsv"
    bad.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\n")
    _fails(capsys, "eval", store, "--qrels", bad, match=f"{bad}:3")
    foreign = tmp_path / "foreign.tsv"
    foreign.write_text("x1\td1\t1\nx2\td2\t1\n")
    _fails(capsys, "eval", store, "--qrels", foreign, match="none of the 2 queries")
    # some queries and documents missing: a warning, and the rest evaluated
    partly = tmp_path / "partly.tsv"
    partly.write_text(qrels_path.read_text() + "x1\td1\t1\nq0\tmissing-doc\t1\n")
    code, out, err = run_cli(capsys, "eval", store, "--qrels", partly, "--dims", "8", "--json")
    assert code == 0, err
    assert "1 of 31 qrels queries have no vector" in err
    assert "1 judged documents are not in table 'corpus'" in err
    assert json.loads(out)["num_queries"] == 30


def test_empty_query_table(capsys, planted, tmp_path):
    _, qrels_path, _ = planted
    store = open_store(tmp_path / "empty", create=True)
    store.append("corpus", _table(["d0", "d1"], _unit(np.ones((2, 4))), "document"))
    store.append("queries", _table([], np.zeros((0, 4), np.float32), "query"))
    _fails(
        capsys,
        "eval",
        tmp_path / "empty",
        "--qrels",
        qrels_path,
        "--dims",
        "2",
        match="none of the 30 queries",
    )


def test_incompatible_adaptors(capsys, planted, tmp_path):
    store, qrels_path, _ = planted
    other_model = _save_identity_adaptor(tmp_path / "other-model", model="another/model")
    _fails(
        capsys,
        "eval",
        store,
        "--qrels",
        qrels_path,
        "--adaptor",
        other_model,
        "--dims",
        "8",
        match="'another/model'",
    )
    other_dim = _save_identity_adaptor(tmp_path / "other-dim", dimension=DIM * 2)
    _fails(
        capsys,
        "eval",
        store,
        "--qrels",
        qrels_path,
        "--adaptor",
        other_dim,
        "--dims",
        "8",
        match=f"takes {2 * DIM}-d vectors",
    )
    _fails(
        capsys,
        "eval",
        store,
        "--qrels",
        qrels_path,
        "--adaptor",
        tmp_path,
        "--dims",
        "8",
        match="is not a madapt adaptor",
    )


def test_empty_corpus_and_mismatched_tables(capsys, planted, tmp_path):
    _, qrels_path, (queries, query_ids, _, _, _) = planted
    store = open_store(tmp_path / "no-docs", create=True)
    store.append("corpus", _table([], np.zeros((0, DIM), np.float32), "document"))
    store.append("queries", _table(query_ids, queries, "query"))
    _fails(
        capsys,
        "eval",
        tmp_path / "no-docs",
        "--qrels",
        qrels_path,
        "--dims",
        "8",
        match="table 'corpus' of",
    )
    mixed = open_store(tmp_path / "mixed", create=True)
    mixed.append("corpus", _table(["d0", "d1"], _unit(np.ones((2, DIM))), "document"))
    mixed.append("queries", _table(query_ids, queries, "query", model="other/model"))
    _fails(
        capsys,
        "eval",
        tmp_path / "mixed",
        "--qrels",
        qrels_path,
        "--dims",
        "8",
        match="tables 'queries' and 'corpus' differ in model",
    )
    _fails(capsys, "eval", tmp_path / "nowhere", "--qrels", qrels_path, match="not a madapt store")


def test_progress_callbacks_count_every_row(planted):
    from madapt_cli.pipelines.evaluate import EvalOptions, run_evaluation

    store, qrels_path, _ = planted
    events = []
    options = EvalOptions(dims="4,8", baselines=["pca"], device="cpu")
    report = run_evaluation(store, qrels_path, options, progress=events.append)
    totals = [e.total for e in events if e.done == 0]
    done = [tuple(e.message.split("@")) for e in events if e.done]
    assert totals == [3] and len(done) == 3 == len(report.results)
    assert sorted(done) == [("pca", "4"), ("pca", "8"), ("truncate", str(DIM))]  # reference
    assert {(e.task, e.unit, e.total) for e in events} == {("eval", "sizes", 3)}
    assert [e.done for e in events] == [0, 1, 2, 3]
    assert [e.finished for e in events] == [False, False, False, True]
