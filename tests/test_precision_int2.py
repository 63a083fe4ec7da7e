"""int2 codes (`madapt eval --precision int2`): the calibration, the packing, the decoding,
and the cells `madapt eval` reports for them."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from test_eval_cli import make_store, run_cli

from madapt_cli.errors import InputError
from madapt_cli.pipelines.evaluate import EvalOptions, run_evaluation
from madapt_cli.retrieval.int2 import (
    Int2Calibration,
    dequantize_int2,
    fit_int2_calibration,
    quantize_int2,
    unpack_int2,
)
from madapt_cli.retrieval.precision import encode_corpus, precision_topk
from madapt_cli.retrieval.quantize import bytes_per_vector, pack_binary, unpack_binary
from madapt_cli.retrieval.search import search_topk


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_lloyd_calibration_of_a_gaussian_is_the_lloyd_max_quantiser() -> None:
    """Max (1960): the 2-bit quantiser of N(0, 1) has levels +-0.4528, +-1.510 and
    thresholds 0, +-0.9816; each coordinate gets its own, scaled by its spread."""
    rng = np.random.default_rng(0)
    values = rng.standard_normal((200_000, 2)) * np.array([1.0, 0.1])
    calibration = fit_int2_calibration(values, "lloyd")
    expected_levels = np.array([-1.510, -0.4528, 0.4528, 1.510])
    expected_thresholds = np.array([-0.9816, 0.0, 0.9816])
    for column, spread in enumerate((1.0, 0.1)):
        np.testing.assert_allclose(
            calibration.levels[:, column], spread * expected_levels, atol=0.02 * spread
        )
        np.testing.assert_allclose(
            calibration.thresholds[:, column], spread * expected_thresholds, atol=0.02 * spread
        )
    quartiles = fit_int2_calibration(values, "quantile").thresholds
    np.testing.assert_allclose(quartiles[:, 0], [-0.6745, 0.0, 0.6745], atol=0.02)


def test_codes_pack_four_a_byte_and_decode_to_unit_vectors() -> None:
    rng = np.random.default_rng(1)
    vectors = _unit(rng.standard_normal((50, 10)))
    calibration = fit_int2_calibration(vectors)
    codes = quantize_int2(vectors, calibration)
    assert codes.shape == (50, 3) and codes.dtype == np.uint8  # ceil(10 / 4) bytes
    assert bytes_per_vector("int2", 128) == 32 and bytes_per_vector("int2", 10) == 3
    cells = unpack_int2(codes, 10)
    expected = (vectors[None] > calibration.thresholds[:, None]).sum(0)
    np.testing.assert_array_equal(cells, expected)
    # the first coordinate sits in the top two bits of the first byte; padding is zero
    np.testing.assert_array_equal(codes[:, 0] >> 6, expected[:, 0])
    np.testing.assert_array_equal(codes[:, 2] & 0b1111, 0)
    decoded = dequantize_int2(codes, calibration)
    levels = np.take_along_axis(calibration.levels, expected, axis=0)
    np.testing.assert_allclose(decoded, _unit(levels), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(decoded, axis=1), 1.0, rtol=1e-6)


def test_calibration_round_trips_and_refuses_bad_input() -> None:
    calibration = fit_int2_calibration(_unit(np.random.default_rng(2).normal(size=(40, 6))))
    again = Int2Calibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
    assert again == calibration and hash(again) == hash(calibration)
    with pytest.raises(InputError, match="unknown int2 calibration"):
        fit_int2_calibration(np.zeros((3, 2)), "minmax")
    with pytest.raises(InputError, match="ascend"):
        Int2Calibration([[1.0], [0.0], [2.0]], [[0.0], [1.0], [2.0], [3.0]], "lloyd")
    with pytest.raises(InputError, match="expected thresholds"):
        Int2Calibration.from_dict({"levels": []})
    with pytest.raises(InputError, match="non-finite"):
        fit_int2_calibration(np.array([[np.nan, 1.0]]))


def test_int2_ranks_closer_to_the_floats_than_sign_bits_of_the_same_size() -> None:
    """Two bits a coordinate keep more of the ranking than one (same coordinates)."""
    rng = np.random.default_rng(4)
    corpus = _unit(rng.standard_normal((400, 32)) * np.linspace(2.0, 0.5, 32))
    queries = _unit(corpus[:40] + 0.5 * rng.standard_normal((40, 32)))
    truth = search_topk(queries, corpus, 10)[1]
    int2 = encode_corpus(corpus, "int2", fit_int2_calibration(corpus))
    binary = encode_corpus(corpus, "binary")

    def overlap(encoded) -> float:
        found = precision_topk(queries, encoded, 10, "asymmetric")[1]
        return np.mean([len(set(a) & set(b)) for a, b in zip(found, truth, strict=True)])

    assert overlap(int2) > overlap(binary) + 1.0
    # asymmetric int2 is the float query against the re-normalised decoded documents
    decoded = dequantize_int2(int2.codes, int2.calibration)
    np.testing.assert_array_equal(
        precision_topk(queries, int2, 10, "asymmetric")[1], search_topk(queries, decoded, 10)[1]
    )
    signs = unpack_binary(pack_binary(corpus), 32)
    assert signs.shape == decoded.shape


def test_eval_reports_int2_cells_with_their_calibration(tmp_path, capsys) -> None:
    store, qrels_path, _ = make_store(tmp_path)
    options = EvalOptions(dims="8,16", baselines=["truncate"], precisions="int2,binary")
    report = run_evaluation(store, qrels_path, options)
    labels = [row.label for row in report.results if row.dim == 16]
    assert labels == [
        "truncate@16/float32",
        "truncate@16/int2/symmetric",
        "truncate@16/int2/asymmetric",
        "truncate@16/binary/symmetric",
        "truncate@16/binary/asymmetric",
    ]
    assert {r.bytes for r in report.results if r.dim == 16 and r.precision == "int2"} == {4}
    saved = report.to_json()["calibrations"]["truncate"]["16/int2"]
    assert Int2Calibration.from_dict(saved).dim == 16
    code, _, err = run_cli(
        capsys, "eval", store, "--qrels", qrels_path, "--dims", "8", "--precision", "int4"
    )
    assert code == 2 and "int2" in err and "int4" in err


# --- stored int2 cells: apply -> encode -> exact search, and plan's commands -----------------
def test_apply_stores_int2_and_its_search_is_evals_cell(tmp_path) -> None:
    """`madapt apply --precision int2` writes the codes and levels `madapt eval` scores: the
    stored documents searched with the stored float queries give eval's int2 asymmetric
    ranking, and `madapt encode --precision int2`'s coding of the queries is the stored one."""
    from test_apply import make_adaptor
    from test_apply import make_store as make_raw_store
    from test_precision_apply import column

    from madapt_cli.pipelines.apply import apply_adaptor
    from madapt_cli.pipelines.encode import code_queries, load_query_calibration
    from madapt_cli.retrieval.precision import EncodedCorpus
    from madapt_cli.store.base import open_store

    written = make_raw_store(tmp_path / "in", {"corpus": 57, "queries": 13})
    adaptor = make_adaptor(tmp_path / "ad")
    summary = apply_adaptor(
        tmp_path / "ad", tmp_path / "in", "8,16", tmp_path / "out",
        precision="float32,int2", chunk_rows=1000,
    )  # fmt: skip
    assert summary.bytes_per_vector["vector_16_int2"] == 4
    out = open_store(tmp_path / "out")
    assert out.schema("corpus").field("vector_16_int2").type == pa.list_(pa.uint8(), 4)
    meta = out.metadata("queries")
    assert meta["columns"]["vector_16_int2"] == {"dim": 16, "precision": "int2", "bytes": 4}
    calibrations = load_query_calibration(adaptor, tmp_path / "out", precision="int2")
    corpus_ids, corpus_raw = written["corpus"]
    for dim in (8, 16):
        prefix = adaptor.transform(corpus_raw, dim=dim)
        fitted = fit_int2_calibration(prefix)  # what `madapt eval` fits for this cell
        assert calibrations[dim] == fitted
        ids, codes = column(tmp_path / "out", "corpus", f"vector_{dim}_int2")
        order = [corpus_ids.index(i) for i in ids]
        np.testing.assert_array_equal(codes, quantize_int2(prefix[order], fitted))
        _, floats = column(tmp_path / "out", "queries", f"vector_{dim}")
        stored = EncodedCorpus("int2", dim, codes, calibrations[dim])
        found = precision_topk(floats, stored, 10, "asymmetric")[1]
        cell = encode_corpus(prefix[order], "int2", fitted)
        np.testing.assert_array_equal(found, precision_topk(floats, cell, 10, "asymmetric")[1])
        _, query_codes = column(tmp_path / "out", "queries", f"vector_{dim}_int2")
        np.testing.assert_array_equal(code_queries(floats, "int2", calibrations), query_codes)
    with pytest.raises(InputError, match="multiple of 4"):
        apply_adaptor(tmp_path / "ad", tmp_path / "in", "6", tmp_path / "o2", precision="int2")
    with pytest.raises(InputError, match="no int2 calibration"):
        code_queries(floats[:, :12] / 1.0, "int2", calibrations)


def test_encode_cli_int2_needs_the_calibration(tmp_path) -> None:
    from test_apply import make_adaptor
    from typer.testing import CliRunner

    from madapt_cli.cli import app

    make_adaptor(tmp_path / "ad")
    result = CliRunner().invoke(
        app, ["encode", "--adaptor", str(tmp_path / "ad"), "--dim", "8", "--precision", "int2",
              "a query"],
    )  # fmt: skip
    assert result.exit_code == 2 and "--precision int2 needs --calibration-from" in result.output


def test_plan_recommends_int2_with_a_working_apply_command() -> None:
    from madapt_cli.pipelines.eval_results import EvaluationReport, ResultRow
    from madapt_cli.pipelines.plan import PlanGoal, make_plan

    rows = [
        ResultRow("truncate", 384, {"ndcg@10": 0.645}, precision="float32"),
        ResultRow("uns", 256, {"ndcg@10": 0.59}, precision="binary", scoring="asymmetric"),
        ResultRow("uns", 128, {"ndcg@10": 0.62}, precision="int2", scoring="asymmetric"),
        ResultRow("uns", 128, {"ndcg@10": 0.55}, precision="int2", scoring="symmetric"),
    ]
    methods = [{"name": "truncate", "kind": "baseline"}, {"name": "uns", "kind": "adaptor",
               "path": "ads/uns"}]  # fmt: skip
    report = EvaluationReport(
        "stores/sf", "q.tsv", 300, 384, [128, 256], ["ndcg@10"], rows, methods, {}, {}, [], {},
        ["float32", "int2", "binary"],
    )  # fmt: skip
    plan = make_plan(report, PlanGoal(max_bytes=32))
    assert plan.recommended is not None and plan.recommended.label == "uns@128/int2/asymmetric"
    assert plan.commands == [
        "madapt apply ads/uns stores/sf --dims 128 --out stores/sf-uns-128-int2 --precision int2"
    ]
    assert plan.queries.startswith("queries: float32 vectors")
