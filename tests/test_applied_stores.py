"""Issue #13 section 3: a store `madapt apply` wrote is first-class: `eval` scores its stored
columns (what a database would search), `fit` refuses it in one line, `info` lists the
columns, and `apply` keeps the text and writes float16 on request."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_bad_inputs import QRELS, write_store
from typer.testing import CliRunner

from madapt_cli.cli import app
from madapt_cli.store.base import open_store


def run(*args: object, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (args, result.output, repr(result.exception))
    return result


@pytest.fixture(scope="module")
def applied(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("applied")
    write_store(root / "store")
    (root / "qrels.tsv").write_text(QRELS)
    run("fit", root / "store", "--method", "pca", "--out", root / "ad")
    run("apply", root / "ad", root / "store", "--dims", "8,16", "--out", root / "applied")
    return root


def test_eval_scores_each_stored_column_as_the_adaptor_at_that_size(applied: Path):
    stored = json.loads(
        run("eval", applied / "applied", "--qrels", applied / "qrels.tsv", "--json").stdout
    )
    raw = json.loads(
        run(
            "eval",
            applied / "store",
            "--qrels",
            applied / "qrels.tsv",
            "--adaptor",
            applied / "ad",
            "--dims",
            "8,16",
            "--baseline",
            "truncate",
            "--json",
        ).stdout
    )
    by_dim = {r["dim"]: r for r in stored["results"]}
    assert {r["method"] for r in stored["results"]} == {"vector_8", "vector_16"}
    for row in raw["results"]:
        if row["method"] == "ad":
            for metric, value in row["metrics"].items():
                assert by_dim[row["dim"]]["metrics"][metric] == pytest.approx(value, abs=1e-6)


def test_eval_one_stored_column(applied: Path):
    out = run(
        "eval",
        applied / "applied",
        "--qrels",
        applied / "qrels.tsv",
        "--vector-column",
        "vector_8",
        "--json",
    ).stdout
    assert [(r["method"], r["dim"]) for r in json.loads(out)["results"]] == [("vector_8", 8)]


def test_eval_report_of_an_applied_store(applied: Path, tmp_path: Path):
    run(
        "eval",
        applied / "applied",
        "--qrels",
        applied / "qrels.tsv",
        "--report",
        tmp_path / "rep",
    )
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert [m["kind"] for m in report["methods"]] == ["stored", "stored"]
    assert report["methods"][0]["adaptor"] == "ad"


def test_fit_on_an_applied_store_is_refused(applied: Path, tmp_path: Path):
    result = run("fit", applied / "applied", "--out", tmp_path / "ad2", code=2)
    assert "adapted vectors (vector_8, vector_16)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ad2").exists()


def test_info_lists_the_columns_and_the_adaptor(applied: Path):
    described = json.loads(run("info", applied / "applied", "--json").stdout)
    corpus = next(t for t in described["tables"] if t["name"] == "corpus")
    assert corpus["vector_columns"] == {"vector_8": 8, "vector_16": 16}
    table = run("info", applied / "applied").stdout
    assert "vector_8[8], vector_16[16]" in table
    assert "ad" in table


def test_apply_keeps_text_and_writes_float16(tmp_path: Path, applied: Path):
    store = open_store(tmp_path / "s", create=True)
    source = open_store(applied / "store")
    rows = source.iter_batches("corpus").__next__()
    metadata = source.metadata("corpus")
    from madapt_cli.store.base import embedding_schema

    schema = embedding_schema(16, "float32", True, metadata)
    texts = pa.array([f"text {i}" for i in range(rows.num_rows)], pa.string())
    table = pa.Table.from_arrays([*rows.columns, texts], schema=schema)
    store.append("corpus", table)
    run(
        "apply",
        applied / "ad",
        tmp_path / "s",
        "--dims",
        "8",
        "--dtype",
        "float16",
        "--out",
        tmp_path / "out",
    )
    out = open_store(tmp_path / "out")
    schema = out.schema("corpus")
    assert schema.names == ["id", "text_sha256", "text", "vector_8"]
    assert schema.field("vector_8").type.value_type == pa.float16()
    assert out.metadata("corpus")["dtype"] == "float16"
    batch = next(out.iter_batches("corpus"))
    assert batch.column("text").to_pylist()[:2] == ["text 0", "text 1"]
    full = next(open_store(applied / "applied").iter_batches("corpus", columns=["vector_8"]))
    half = out.read_vectors("corpus", "vector_8")[1]
    from madapt_cli.store.base import arrow_to_vectors

    assert np.abs(half - arrow_to_vectors(full.column(0))).max() < 2e-3
