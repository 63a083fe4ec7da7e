"""`madapt eval --precision`: lower-precision cells, their search, the report's frontier and
the --require quality gate."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from test_eval_cli import make_store, run_cli
from typer.testing import CliRunner

from madapt_cli.cli import app
from madapt_cli.errors import EXIT_REQUIREMENT, InputError
from madapt_cli.pipelines.eval_results import EvaluationReport, ResultRow, frontier
from madapt_cli.pipelines.evaluate import EvalOptions, run_evaluation
from madapt_cli.pipelines.requirements import Requirement, check_requirements
from madapt_cli.retrieval.evaluate import evaluate_vectors
from madapt_cli.retrieval.precision import encode_corpus, precision_topk
from madapt_cli.retrieval.quantize import (
    Int8Calibration,
    dequantize_int8,
    fit_int8_calibration,
    hamming_topk,
    pack_binary,
    quantize_int8,
    unpack_binary,
)
from madapt_cli.retrieval.search import search_topk


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def vectors():
    rng = np.random.default_rng(3)
    corpus = _unit(rng.standard_normal((200, 32)))
    corpus[50:60] = corpus[7]  # duplicates: ties in every precision
    queries = _unit(corpus[:12] + 0.3 * rng.standard_normal((12, 32)))
    return queries, corpus


# --- the search of one cell ------------------------------------------------------------------
def test_binary_symmetric_is_hamming(vectors) -> None:
    queries, corpus = vectors
    encoded = encode_corpus(corpus, "binary")
    scores, indices = precision_topk(queries, encoded, 10, "symmetric")
    distances, expected = hamming_topk(pack_binary(queries), encoded.codes, 10)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_array_equal(scores, 32 - 2 * distances)  # the +-1 dot product
    signs = unpack_binary(encoded.codes, 32)
    np.testing.assert_allclose(
        scores, np.take_along_axis(np.sign(queries) @ signs.T, indices, axis=1)
    )


def test_asymmetric_scores_the_decoded_documents(vectors) -> None:
    queries, corpus = vectors
    calibration = fit_int8_calibration(corpus)
    encoded = encode_corpus(corpus, "int8", calibration)
    decoded = dequantize_int8(quantize_int8(corpus, calibration), calibration)
    scores, indices = precision_topk(queries, encoded, 10, "asymmetric")
    expected_scores, expected = search_topk(queries, decoded, 10)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)
    binary = encode_corpus(corpus, "binary")
    scores, indices = precision_topk(queries, binary, 10, "asymmetric")
    np.testing.assert_array_equal(
        indices, search_topk(queries, unpack_binary(binary.codes, 32), 10)[1]
    )


def test_symmetric_int8_and_float16_encode_the_query(vectors) -> None:
    queries, corpus = vectors
    calibration = fit_int8_calibration(corpus)
    encoded = encode_corpus(corpus, "int8", calibration)
    scores, _ = precision_topk(queries, encoded, 5, "symmetric")
    decoded_queries = dequantize_int8(quantize_int8(queries, calibration), calibration)
    expected, _ = search_topk(decoded_queries, encoded.decoded(), 5)
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    half = encode_corpus(corpus, "float16")
    assert half.codes.dtype == np.float16
    scores, _ = precision_topk(queries, half, 5, "symmetric")
    float_scores, _ = search_topk(queries, corpus, 5)
    np.testing.assert_allclose(scores, float_scores, atol=2e-3)


def test_rescore_reranks_the_symmetric_candidates(vectors) -> None:
    queries, corpus = vectors
    encoded = encode_corpus(corpus, "binary")
    # candidates covering the whole corpus: rescoring is the asymmetric search
    everything = precision_topk(queries, encoded, 10, "symmetric", rescore=20)
    asymmetric = precision_topk(queries, encoded, 10, "asymmetric")
    np.testing.assert_array_equal(everything[1], asymmetric[1])
    np.testing.assert_allclose(everything[0], asymmetric[0], rtol=1e-6)
    # few candidates: the re-ranked top k are the symmetric top 2k, in float order
    few_scores, few = precision_topk(queries, encoded, 10, "symmetric", rescore=2)
    candidates = precision_topk(queries, encoded, 20, "symmetric")[1]
    for row in range(len(queries)):
        assert set(few[row]) <= set(candidates[row])
        assert (np.diff(few_scores[row]) <= 0).all()
    with pytest.raises(ValueError, match="symmetric"):
        precision_topk(queries, encoded, 10, "asymmetric", rescore=2)


def test_binary_search_honours_exclusions(vectors) -> None:
    queries, corpus = vectors
    encoded = encode_corpus(corpus, "binary")
    plain = precision_topk(queries, encoded, 5, "symmetric")[1]
    exclude = np.array([[row, plain[row, 0]] for row in range(len(queries))])
    _, indices = precision_topk(queries, encoded, 5, "symmetric", exclude=exclude)
    for row in range(len(queries)):
        assert plain[row, 0] not in indices[row]
        assert list(indices[row][:4]) == list(plain[row, 1:5])
    assert indices.shape == (len(queries), 5)


# --- the evaluation ---------------------------------------------------------------------------
@pytest.fixture()
def planted(tmp_path):
    return make_store(tmp_path)


def _row(report: EvaluationReport, label: str) -> ResultRow:
    (row,) = [r for r in report.results if r.label == label]
    return row


def test_every_cell_with_its_bytes(planted) -> None:
    store, qrels_path, (queries, query_ids, corpus, corpus_ids, qrels) = planted
    options = EvalOptions(
        dims="8,16", baselines=["truncate"], precisions="binary,int8,float16", rescore=3
    )
    report = run_evaluation(store, qrels_path, options)
    labels = [row.label for row in report.results]
    assert labels[:8] == [
        "truncate@8/float32",
        "truncate@8/float16/symmetric",
        "truncate@8/float16/symmetric+rescore3",
        "truncate@8/float16/asymmetric",
        "truncate@8/int8/symmetric",
        "truncate@8/int8/symmetric+rescore3",
        "truncate@8/int8/asymmetric",
        "truncate@8/binary/symmetric",
    ]
    assert len(labels) == 3 * 10  # sizes 8, 16, 24: float32 + 3 precisions x 3 scorings
    assert {r.bytes for r in report.results if r.dim == 16} == {64, 32, 16, 2}
    # the float32 rows are those of a plain evaluation
    plain = run_evaluation(store, qrels_path, EvalOptions(dims="8,16", baselines=["truncate"]))
    for row in plain.results:
        assert _row(report, f"{row.label}/float32").metrics == row.metrics
    # binary asymmetric: the float query against +-1 codes, whose norm is the same for all
    prefix = _unit(corpus[:, :16])
    signs = unpack_binary(pack_binary(prefix), 16)
    direct = evaluate_vectors(queries[:, :16], query_ids, signs, corpus_ids, qrels)
    for metric, value in direct.means.items():
        assert _row(report, "truncate@16/binary/asymmetric").metrics[metric] == pytest.approx(
            value, abs=1e-12
        )
    # the int8 calibration of each size is in the report, fitted on the stored corpus
    saved = report.to_json()["calibrations"]["truncate"]["16"]
    assert Int8Calibration.from_dict(saved) == fit_int8_calibration(prefix, "minmax")
    assert report.settings["int8_calibration"] == "minmax"


def test_json_report_and_frontier(capsys, planted, tmp_path) -> None:
    store, qrels_path, _ = planted
    target = tmp_path / "report"
    code, out, err = run_cli(
        capsys, "eval", store, "--qrels", qrels_path, "--dims", "8", "--precision", "int8,binary",
        "--scoring", "asymmetric", "--int8-calibration", "percentile:1", "--report", target,
        "--json",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    rows = summary["results"]
    assert list(rows[0]) == ["method", "dim", "precision", "scoring", "rescore", "bytes", "metrics"]
    cells = {(r["method"], r["dim"], r["precision"], r["scoring"]) for r in rows}
    assert ("pca", 8, "binary", "asymmetric") in cells
    assert ("truncate", 24, "float32", None) in cells
    assert not any(r["scoring"] == "symmetric" for r in rows)
    written = json.loads((target / "report.json").read_text())
    assert written["precisions"] == ["float32", "int8", "binary"]
    assert written["calibrations"]["pca"]["8"]["method"] == "percentile:1"
    assert (target / "ndcg_at_10_by_bytes.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (target / "report.md").read_text()
    assert "## Frontier: ndcg@10 against bytes per vector" in markdown
    report = EvaluationReport.from_json(written)
    best = frontier(report.results, "ndcg@10")
    for row in best:
        assert f"| {row.bytes:,} | {row.method} | {row.dim} |" in markdown
    assert best[0].bytes == 1  # 8 sign bits


def test_frontier() -> None:
    rows = [
        ResultRow("a", 64, {"m": 0.5}, precision="binary"),  # 8 B
        ResultRow("b", 64, {"m": 0.4}, precision="binary"),  # 8 B, dominated
        ResultRow("a", 128, {"m": 0.45}, precision="binary"),  # 16 B, dominated by 8 B
        ResultRow("a", 32, {"m": 0.6}, precision="int8"),  # 32 B
        ResultRow("a", 64, {"m": 0.7}, precision="int8"),  # 64 B
        ResultRow("a", 32, {"m": 0.7}, precision="float16"),  # 64 B, equal: first wins
    ]
    assert [(r.method, r.dim, r.precision) for r in frontier(rows, "m")] == [
        ("a", 64, "binary"),
        ("a", 32, "int8"),
        ("a", 64, "int8"),
    ]


# --- --require --------------------------------------------------------------------------------
def test_requirement_parsing() -> None:
    sup = Requirement.parse("sup@64:ndcg@10>=0.66")
    assert (sup.method, sup.size, sup.max_bytes, sup.metric, sup.op, sup.value) == (
        "sup", 64, None, "ndcg@10", ">=", 0.66
    )  # fmt: skip
    budget = Requirement.parse("*@16B:ndcg@10>=0.60")
    assert (budget.method, budget.size, budget.max_bytes) == ("*", None, 16)
    assert Requirement.parse("my@ad@8/int8:recall@100 > .9").method == "my@ad"
    assert Requirement.parse("uns@128/int2:ndcg@10>=0.62").precision == "int2"
    bad_texts = ["sup@64", "sup:ndcg@10>=1", "sup@64:ndcg@10=0.5", "sup@0:ndcg@10>=0.1"]
    bad_texts += ["sup@8/int4:ndcg@10>=0.1", "sup@8B/int8:ndcg@10>=0.1", "@8:ndcg@10>=1"]
    for bad in bad_texts:
        with pytest.raises(InputError, match="--require"):
            Requirement.parse(bad)


def test_requirements_pick_the_best_cell() -> None:
    report = EvaluationReport(
        "s", "q", 10, 384, [64], ["ndcg@10"],
        [
            ResultRow("sup", 64, {"ndcg@10": 0.67}, precision="float32"),
            ResultRow("sup", 64, {"ndcg@10": 0.64}, precision="int8", scoring="symmetric"),
            ResultRow("sup", 64, {"ndcg@10": 0.65}, precision="int8", scoring="asymmetric"),
            ResultRow("sup", 128, {"ndcg@10": 0.61}, precision="binary", scoring="asymmetric"),
            ResultRow("truncate", 128, {"ndcg@10": 0.40}, precision="binary", scoring="symmetric"),
        ],
        [], {}, {}, [], {},
    )  # fmt: skip
    texts = ["sup@64:ndcg@10>=0.66", "sup@64/int8:ndcg@10>=0.66", "*@16B:ndcg@10>=0.60",
             "truncate@16B:ndcg@10>=0.5", "*@64B:ndcg@10<0.5"]  # fmt: skip
    verdicts = check_requirements([Requirement.parse(t) for t in texts], report)
    assert [v["passed"] for v in verdicts] == [True, False, True, False, True]
    assert verdicts[1]["cell"] == "sup@64/int8/asymmetric" and verdicts[1]["value"] == 0.65
    assert verdicts[2]["cell"] == "sup@128/binary/asymmetric" and verdicts[2]["bytes"] == 16
    assert verdicts[4]["cell"] == "truncate@128/binary/symmetric"
    with pytest.raises(InputError, match="no cell"):
        check_requirements([Requirement.parse("nope@64:ndcg@10>=0.1")], report)
    with pytest.raises(InputError, match="recall@100 was not measured"):
        check_requirements([Requirement.parse("sup@64:recall@100>=0.1")], report)


def test_require_exit_codes(capsys, planted) -> None:
    store, qrels_path, _ = planted
    base = ["eval", store, "--qrels", qrels_path, "--dims", "8", "--baseline", "truncate"]
    base += ["--precision", "binary", "--metrics", "ndcg@10"]
    code, out, err = run_cli(capsys, *base, "--require", "truncate@24:ndcg@10>=0.0")
    assert code == 0, err
    assert "passed: truncate@24:ndcg@10>=0.0" in out
    code, out, err = run_cli(
        capsys, *base, "--require", "*@1B:ndcg@10>=0.99", "--require", "truncate@8:ndcg@10>0",
        "--json",
    )  # fmt: skip
    assert code == EXIT_REQUIREMENT == 5
    summary = json.loads(out)  # the results are printed before the exit
    assert summary["failed"] == ["*@1B:ndcg@10>=0.99"]
    assert [v["passed"] for v in summary["requirements"]] == [False, True]
    assert summary["requirements"][0]["cell"].startswith("truncate@8/binary/")
    assert err.strip().splitlines()[-1].startswith("error: 1 of 2 --require failed: *@1B")
    # a table, then the verdicts and the exit
    code, out, err = run_cli(capsys, *base, "--require", "*@1B:ndcg@10>=0.99")
    assert code == 5 and "FAILED: *@1B:ndcg@10>=0.99" in out and "original" in out


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--require", "sup@64:ndcg@10=0.6"], r"--require 'sup@64:ndcg@10=0\.6'"),
        (["--require", "sup@64:ndcg@10>=0.6"], r"--require 'sup@64:ndcg@10>=0\.6': no cell"),
        (["--precision", "int4"], r"--precision: unknown precision 'int4'"),
        (["--precision", ","], r"--precision"),
        (["--precision", "int8", "--scoring", "sideways"], r"--scoring 'sideways'"),
        (["--precision", "int8", "--rescore", "-1"], r"--rescore -1"),
        (["--precision", "int8", "--int8-calibration", "p:1"], r"--int8-calibration: .*'p:1'"),
        (["--precision", "int8", "--int8-calibration", "percentile:60"], r"percentile:60"),
        (["--rescore", "4"], r"--rescore, --scoring and --int8-calibration need --precision"),
        (["--scoring", "symmetric"], r"need --precision"),
    ],
)
def test_bad_precision_options_are_one_line(tmp_path, planted, extra, pattern) -> None:
    store, qrels_path, _ = planted
    args = ["eval", str(store), "--qrels", str(qrels_path), "--dims", "8", *extra]
    result = CliRunner().invoke(app, args)
    detail = (args, result.exit_code, result.stderr, result.stdout)
    assert result.exit_code == 2, detail
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), detail
    assert re.search(pattern, lines[0]), detail
    assert "Traceback" not in result.output
