"""`madapt quickstart` end to end on a small BEIR folder cut from the bundled SciFact."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from conftest import EXAMPLE_SCIFACT
from typer.testing import CliRunner

from madapt_cli.cli import app
from madapt_cli.data import read_qrels


def small_beir(
    root: Path, train_queries: int = 24, test_queries: int = 12, extra_docs: int = 20
) -> Path:
    """A BEIR folder with the judged documents of a few queries plus some unjudged ones."""
    train = dict(list(read_qrels(EXAMPLE_SCIFACT / "qrels" / "train.tsv").items())[:train_queries])
    test = dict(list(read_qrels(EXAMPLE_SCIFACT / "qrels" / "test.tsv").items())[:test_queries])
    judged = {doc for qrels in (train, test) for docs in qrels.values() for doc in docs}
    (root / "qrels").mkdir(parents=True)
    with (
        gzip.open(EXAMPLE_SCIFACT / "corpus.jsonl.gz", "rt") as source,
        (root / "corpus.jsonl").open("w") as corpus,
    ):
        extra = 0
        for line in source:
            doc_id = json.loads(line)["_id"]
            if doc_id in judged or extra < extra_docs:
                extra += doc_id not in judged
                corpus.write(line)
    wanted = set(train) | set(test)
    with (
        gzip.open(EXAMPLE_SCIFACT / "queries.jsonl.gz", "rt") as source,
        (root / "queries.jsonl").open("w") as queries,
    ):
        queries.writelines(line for line in source if json.loads(line)["_id"] in wanted)
    for split, qrels in (("train", train), ("test", test)):
        rows = [f"{q}\t{d}\t{r}" for q, docs in qrels.items() for d, r in docs.items()]
        (root / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n"
        )
    return root


def test_quickstart_embeds_fits_evaluates_and_reports(tmp_path: Path):
    data = small_beir(tmp_path / "beir")
    out = tmp_path / "qs"
    result = CliRunner().invoke(
        app, ["quickstart", "--data", str(data), "--out", str(out), "--device", "cpu", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["num_queries"] == 12
    found = {(row["method"], row["dim"]) for row in summary["results"]}
    for method in ("truncate", "pca", "unsupervised", "supervised"):
        for dim in (32, 64, 128, 256):
            assert (method, dim) in found
    assert ("truncate", 384) in found  # the full-size original, the reference row
    for row in summary["results"]:
        assert 0.0 <= row["metrics"]["ndcg@10"] <= 1.0
    report = out / "report"
    assert (report / "report.md").is_file() and (report / "report.json").is_file()
    assert (report / "ndcg_at_10.png").stat().st_size > 1000
    for name in ("pca", "unsupervised", "supervised"):
        config = json.loads((out / "adaptors" / name / "config.json").read_text())
        assert config["name"] == name

    # A second run reuses every embedding; its log (stderr is not a terminal) shows the
    # embedding's progress as plain lines.
    again = CliRunner().invoke(
        app, ["quickstart", "--data", str(data), "--out", str(out), "--device", "cpu"]
    )
    assert again.exit_code == 0, again.output
    assert "0 rows embedded" in again.stderr
    assert "embed corpus: 0/0 rows in " in again.stderr


def test_quickstart_without_data_is_a_clear_error(tmp_path: Path):
    result = CliRunner().invoke(
        app, ["quickstart", "--data", str(tmp_path), "--out", str(tmp_path / "qs")]
    )
    assert result.exit_code == 2
    assert "no BEIR dataset there" in result.output


def test_quickstart_refuses_a_user_folder_in_its_way_before_embedding(tmp_path: Path):
    data = small_beir(tmp_path / "beir")
    out = tmp_path / "qs"
    (out / "report").mkdir(parents=True)
    (out / "report" / "notes.txt").write_text("mine")
    result = CliRunner().invoke(
        app, ["quickstart", "--data", str(data), "--out", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 2, result.output
    assert "files madapt did not write" in result.output
    assert (out / "report" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["report"]  # nothing embedded
