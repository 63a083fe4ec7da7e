"""`madapt plan`: the frontier of a precision grid and the recommended cell's commands."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from conftest import residual_adaptor
from test_eval_cli import DIM, MODEL, make_store, run_cli
from typer.testing import CliRunner

from madapt_cli.cli import app
from madapt_cli.pipelines.eval_results import EvaluationReport, ResultRow
from madapt_cli.pipelines.plan import PlanGoal, make_plan


@pytest.fixture()
def planted(tmp_path):
    return make_store(tmp_path)


def _report() -> EvaluationReport:
    rows = [
        ResultRow("truncate", 384, {"ndcg@10": 0.645}, precision="float32"),
        ResultRow("truncate", 384, {"ndcg@10": 0.62}, precision="binary", scoring="asymmetric"),
        ResultRow("sup", 64, {"ndcg@10": 0.671}, precision="float32"),
        ResultRow("sup", 64, {"ndcg@10": 0.668}, precision="int8", scoring="asymmetric"),
        ResultRow("sup", 64, {"ndcg@10": 0.640}, precision="int8", scoring="symmetric"),
        ResultRow("sup", 128, {"ndcg@10": 0.624}, precision="binary", scoring="asymmetric"),
        ResultRow(
            "sup", 256, {"ndcg@10": 0.664}, precision="binary", scoring="symmetric", rescore=4
        ),
        ResultRow("pca", 64, {"ndcg@10": 0.3}, precision="binary", scoring="symmetric"),
    ]
    methods = [
        {"name": "truncate", "kind": "baseline"},
        {"name": "pca", "kind": "baseline"},
        {"name": "sup", "kind": "adaptor", "path": "ads/my sup"},
    ]
    settings = {"int8_calibration": "percentile:0.1"}
    return EvaluationReport(
        "stores/sf", "q.tsv", 300, 384, [64, 128, 256], ["ndcg@10"], rows, methods, settings,
        {}, [], {}, ["float32", "int8", "binary"],
    )  # fmt: skip


def test_budget_and_retention_pick_frontier_cells() -> None:
    report = _report()
    plan = make_plan(report, PlanGoal(max_bytes=64))
    assert [row.label for row in plan.frontier] == [
        "pca@64/binary/symmetric",
        "sup@128/binary/asymmetric",
        "sup@256/binary/symmetric+rescore4",
        "sup@64/int8/asymmetric",
        "sup@64/float32",
    ]
    assert plan.recommended is not None and plan.recommended.label == "sup@64/int8/asymmetric"
    assert plan.commands == [
        "madapt apply 'ads/my sup' stores/sf --dims 64 --out stores/sf-sup-64-int8 "
        "--precision int8 --calibration percentile:0.1"
    ]
    assert shlex.split(plan.commands[0])[2] == "ads/my sup"
    assert (
        plan.queries == "queries: float32 vectors (madapt encode --adaptor 'ads/my sup' --dim 64)"
    )
    small = make_plan(report, PlanGoal(max_bytes=32))
    assert small.recommended.label == "sup@256/binary/symmetric+rescore4"
    assert "--precision binary" in small.commands[0] and "--calibration" not in small.commands[0]
    assert small.queries == (
        "queries: binary codes (madapt encode --adaptor 'ads/my sup' --dim 256 --precision "
        "binary); fetch 4 x k with them, re-rank with the float32 query"
    )
    assert make_plan(report, PlanGoal(max_bytes=4)).recommended is None
    # the cheapest cell keeping 99% of 0.645 (0.63855)
    retained = make_plan(report, PlanGoal(min_retention=0.99))
    assert retained.recommended.label == "sup@256/binary/symmetric+rescore4"
    assert make_plan(report, PlanGoal(min_retention=1.04)).recommended.label == "sup@64/float32"
    pca = make_plan(report, PlanGoal(max_bytes=8))
    assert pca.commands[0] == "madapt fit stores/sf --method pca --out stores/sf-pca"
    assert pca.commands[1].startswith("madapt apply stores/sf-pca stores/sf --dims 64")
    payload = retained.to_json()
    assert payload["recommended"]["bytes"] == 32
    assert payload["recommended"]["retention"] == pytest.approx(0.664 / 0.645)
    assert [c["bytes"] for c in payload["frontier"]] == [8, 16, 32, 64, 256]


def test_bad_goals() -> None:
    from madapt_cli.errors import InputError

    for goal, pattern in (
        (PlanGoal(), "exactly one"),
        (PlanGoal(max_bytes=8, min_retention=0.9), "exactly one"),
        (PlanGoal(max_bytes=0), "--max-bytes 0"),
        (PlanGoal(min_retention=0), "--min-retention 0"),
        (PlanGoal(max_bytes=8, metric="recall@100"), "--metric recall@100"),
    ):
        with pytest.raises(InputError, match=pattern):
            make_plan(_report(), goal)


def test_plan_cli_runs_the_grid_and_reads_reports(capsys, planted, tmp_path) -> None:
    store, qrels_path, _ = planted
    adaptor = tmp_path / "ad"
    residual_adaptor(DIM, MODEL, name="ad").save(adaptor)
    report_dir = tmp_path / "report"
    code, out, err = run_cli(
        capsys, "eval", store, "--qrels", qrels_path, "--dims", "8,16", "--adaptor", adaptor,
        "--precision", "float16,int8,int2,binary", "--report", report_dir, "--json",
    )  # fmt: skip
    assert code == 0, err
    code, out, err = run_cli(
        capsys, "plan", store, "--qrels", qrels_path, "--dims", "8,16", "--adaptor", adaptor,
        "--max-bytes", "16", "--json",
    )  # fmt: skip
    assert code == 0, err
    fresh = json.loads(out)
    assert fresh["recommended"]["bytes"] <= 16
    sizes = [cell["bytes"] for cell in fresh["frontier"]]
    assert sizes == sorted(set(sizes))
    code, out, err = run_cli(capsys, "plan", "--from-report", report_dir, "--max-bytes", "16",
                             "--json")  # fmt: skip
    assert code == 0, err

    def cells(plan: dict) -> list:
        return [(c["method"], c["dim"], c["precision"], c["scoring"], c["value"]) for c in plan]

    assert cells(json.loads(out)["frontier"]) == cells(fresh["frontier"])  # the same grid
    code, out, err = run_cli(capsys, "plan", "--from-report", report_dir / "report.json",
                             "--min-retention", "0.5")  # fmt: skip
    assert code == 0, err
    assert "recommended for at least 50.0% of the original's ndcg@10" in out
    # nothing meets the goal: the frontier is printed, then exit 5
    code, out, err = run_cli(capsys, "plan", "--from-report", report_dir, "--min-retention", "2")
    assert code == 5, err
    assert "frontier" in out and err.strip().startswith("error: no cell of the grid has")


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--max-bytes", "8"], r"give STORE and --qrels, or --from-report"),
        (["--from-report", "REPORT"], r"exactly one of --max-bytes and --min-retention"),
        (["--from-report", "NOPE", "--max-bytes", "8"], r"--from-report .*NOPE.*: no such"),
        (["--from-report", "BAD", "--max-bytes", "8"], r"--from-report .*BAD.*: not a JSON"),
        (["--from-report", "ODD", "--max-bytes", "8"], r"--from-report .*ODD.*: not a madapt"),
        (["STORE", "--from-report", "REPORT", "--max-bytes", "8"], r"not with STORE"),
        (
            ["STORE", "--qrels", "QRELS", "--min-retention", "1.5", "--max-bytes", "2"],
            r"exactly one",
        ),
        (["STORE", "--qrels", "QRELS", "--max-bytes", "8", "--scoring", "no"], r"--scoring 'no'"),
        (["STORE", "--qrels", "QRELS", "--max-bytes", "8", "--metric", "ndcg"], r"'ndcg'"),
    ],
)
def test_plan_bad_input_is_one_line(tmp_path, planted, args, pattern) -> None:
    store, qrels_path, _ = planted
    (tmp_path / "BAD").write_text("{not json")
    (tmp_path / "ODD").write_text('{"results": 3}')
    (tmp_path / "REPORT").write_text(json.dumps({"results": []}))
    names = {"STORE": str(store), "QRELS": str(qrels_path)}
    argv = ["plan"] + [names.get(a, str(tmp_path / a) if a.isupper() else a) for a in args]
    result = CliRunner().invoke(app, argv)
    detail = (argv, result.exit_code, result.stderr, result.stdout)
    assert result.exit_code == 2, detail
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), detail
    assert re.search(pattern, lines[0]), detail
