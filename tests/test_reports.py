"""Reports: the table, report.md, plots, and atomic writing."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from madapt_cli import console as madapt_console
from madapt_cli import reports
from madapt_cli.errors import InputError
from madapt_cli.pipelines.evaluate import EvaluationReport, ResultRow


def _report() -> EvaluationReport:
    rows = [
        ResultRow("truncate", 64, {"ndcg@10": 0.40, "recall@100": 0.80}),
        ResultRow("truncate", 128, {"ndcg@10": 0.55, "recall@100": 0.90}),
        ResultRow("truncate", 384, {"ndcg@10": 0.64, "recall@100": 0.93}),
        ResultRow("pca", 64, {"ndcg@10": 0.45, "recall@100": 0.78}),
        ResultRow("pca", 128, {"ndcg@10": 0.52, "recall@100": 0.91}),
        ResultRow("mine", 64, {"ndcg@10": 0.58, "recall@100": 0.85}),
        ResultRow("mine", 128, {"ndcg@10": 0.62, "recall@100": 0.92}),
    ]
    return EvaluationReport(
        store="s",
        qrels="q.tsv",
        num_queries=300,
        dimension=384,
        dims=[64, 128],
        metrics=["ndcg@10", "recall@100"],
        results=rows,
        methods=[
            {"name": "truncate", "kind": "baseline"},
            {"name": "pca", "kind": "baseline"},
            {"name": "mine", "kind": "adaptor", "path": "adaptors/mine", "fingerprint": "ab" * 32},
        ],
        settings={"corpus_rows": 5183, "model": "m", "provider": "local", "device": "cpu"},
        fingerprints={"qrels_sha256": "cd" * 32},
        warnings=["3 of 303 qrels queries have no vector"],
        seconds={"read": 0.5, "total": 2.0},
    )


def test_markdown_marks_the_best_per_size_and_the_original():
    markdown = reports.render_markdown(_report())
    assert "| 64 | 256 | mine | **0.5800** | **0.8500** |" in markdown
    assert "| 64 | 256 | truncate | 0.4000 | 0.8000 |" in markdown
    assert "| 128 | 512 | pca | 0.5200 | 0.9100 |" in markdown  # best recall is mine's 0.92
    assert "| 384 | 1,536 | truncate (original) | 0.6400 | 0.9300 |" in markdown
    assert markdown.index("| 64 |") < markdown.index("| 128 |") < markdown.index("| 384 |")
    assert "ab" * 32 in markdown and "cd" * 32 in markdown
    assert "3 of 303 qrels queries" in markdown
    assert "![ndcg@10](ndcg_at_10.png)" in markdown


def test_terminal_table():
    console = Console(record=True, width=120)
    console.print(reports.render_table(_report()))
    text = console.export_text()
    assert "300 queries, 5,183 documents, 384-d vectors" in text
    lines = [line for line in text.splitlines() if "0." in line]
    assert len(lines) == 7
    assert any("mine" in line and "0.6200" in line and "512" in line for line in lines)
    assert "original" in lines[-1] and "1,536" in lines[-1] and "0.6400" in lines[-1]
    printed = io.StringIO()
    madapt_console.print_table(Console(file=printed, width=40), reports.render_table(_report()))
    assert "recall@100" in printed.getvalue()  # not cut to fit 40 columns
    assert "0.9300" in printed.getvalue() and "…" not in printed.getvalue()


def test_write_report_files_and_replacement(tmp_path):
    target = tmp_path / "report"
    reports.write_report(_report(), target)
    names = sorted(p.name for p in target.iterdir())
    assert names == [
        "madapt.json",
        "ndcg_at_10.png",
        "recall_at_100.png",
        "report.json",
        "report.md",
    ]
    assert json.loads((target / "madapt.json").read_text())["kind"] == "report"
    payload = json.loads((target / "report.json").read_text())
    assert payload["results"][5] == {
        "method": "mine",
        "dim": 64,
        "metrics": {"ndcg@10": 0.58, "recall@100": 0.85},
    }
    assert payload["num_queries"] == 300 and "written_at" in payload
    # an existing report is replaced only when asked to
    with pytest.raises(InputError, match="pass --overwrite"):
        reports.write_report(_report(), target)
    (target / "report.md").write_text("old")
    reports.write_report(_report(), target, overwrite=True)
    assert (target / "report.md").read_text() != "old"
    # a file madapt did not write makes it a user's folder: refused even with overwrite
    (target / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="files madapt did not write"):
        reports.write_report(_report(), target, overwrite=True)
    assert (target / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_a_failed_report_leaves_nothing(tmp_path, monkeypatch):
    def broken(report, metric, path):
        raise RuntimeError("disk full")

    monkeypatch.setattr(reports, "plot_metric", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        reports.write_report(_report(), tmp_path / "report")
    assert list(tmp_path.iterdir()) == []
    # an earlier report survives a failed rewrite untouched
    monkeypatch.undo()
    reports.write_report(_report(), tmp_path / "report")
    before = (tmp_path / "report" / "report.md").read_text()
    monkeypatch.setattr(reports, "plot_metric", broken)
    with pytest.raises(RuntimeError):
        reports.write_report(_report(), tmp_path / "report", overwrite=True)
    assert (tmp_path / "report" / "report.md").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_refuses_to_overwrite_something_else(tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(InputError, match="files madapt did not write"):
        reports.write_report(_report(), other)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        reports.write_report(_report(), tmp_path / "file")
    with pytest.raises(InputError, match="files madapt did not write"):
        reports.write_report(_report(), other, overwrite=True)
    assert (other / "todo.txt").read_text() == "mine"


def test_bytes_and_filenames():
    assert reports.bytes_per_vector(64) == 256
    assert reports.plot_filename("map@100") == "map_at_100.png"


def test_an_unwritable_place_is_a_one_line_error(tmp_path):
    from madapt_cli.errors import MadaptError

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(MadaptError, match="a-file is a file"):
        reports.write_report(_report(), tmp_path / "a-file" / "report")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
