"""`madapt plan`: which method, size and precision to store, under a byte budget or for a
quality floor, and the `madapt apply` command that writes it.

The grid is a `madapt eval --precision` run (every precision, both scorings), or a
``report.json`` such a run wrote. Its Pareto frontier (bytes per vector against the metric)
holds every cell worth storing; the recommendation is the frontier cell that

- ``max_bytes`` B: scores best within B bytes per vector;
- ``min_retention`` R: takes the fewest bytes while scoring at least R x the original's
  figure (the full-size float32 vectors).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from madapt_cli.errors import InputError
from madapt_cli.pipelines.eval_results import EvaluationReport, ResultRow, frontier
from madapt_cli.retrieval.quantize import PRECISIONS
from madapt_cli.util.progress import Progress


@dataclass(frozen=True)
class PlanGoal:
    """Exactly one of ``max_bytes`` and ``min_retention``, and the metric judged."""

    max_bytes: int | None = None
    min_retention: float | None = None
    metric: str = "ndcg@10"

    def check(self) -> PlanGoal:
        if (self.max_bytes is None) == (self.min_retention is None):
            raise InputError("give exactly one of --max-bytes and --min-retention")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise InputError(f"--max-bytes {self.max_bytes}: must be at least 1")
        if self.min_retention is not None and not 0 < self.min_retention <= 2:
            raise InputError(
                f"--min-retention {self.min_retention}: a fraction of the original's figure, "
                "e.g. 0.99"
            )
        return self

    def describe(self) -> str:
        if self.max_bytes is not None:
            return f"at most {self.max_bytes:,} bytes per vector"
        return f"at least {self.min_retention:.1%} of the original's {self.metric}"


@dataclass
class Plan:
    """The frontier and the recommended cell (None when no cell meets the goal)."""

    goal: PlanGoal
    metric: str
    original: float | None
    frontier: list[ResultRow]
    recommended: ResultRow | None
    commands: list[str]  # shell lines that produce the recommended cell
    queries: str  # how queries must be encoded for the recommended cell's scoring
    report: EvaluationReport

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "goal": {"max_bytes": self.goal.max_bytes, "min_retention": self.goal.min_retention},
            "original": self.original,
            "frontier": [self._cell(row) for row in self.frontier],
            "recommended": (
                None
                if self.recommended is None
                else {**self._cell(self.recommended), "queries": self.queries}
            ),
            "commands": self.commands,
        }

    def _cell(self, row: ResultRow) -> dict[str, Any]:
        value = row.metrics[self.metric]
        return {
            **row.to_json(),
            "precision": row.precision or "float32",
            "bytes": row.bytes,
            "value": value,
            "retention": value / self.original if self.original else None,
        }


def _pick(cells: list[ResultRow], goal: PlanGoal, original: float | None) -> ResultRow | None:
    metric = goal.metric
    if goal.max_bytes is not None:
        within = [row for row in cells if row.bytes <= goal.max_bytes]
        return max(within, key=lambda row: row.metrics[metric], default=None)
    if original is None:
        raise InputError("--min-retention needs the original (truncate at full size) in the grid")
    assert goal.min_retention is not None
    enough = [row for row in cells if row.metrics[metric] >= goal.min_retention * original]
    return min(enough, key=lambda row: (row.bytes, -row.metrics[metric]), default=None)


def make_plan(report: EvaluationReport, goal: PlanGoal) -> Plan:
    """The plan of ``goal`` over the cells of ``report``."""
    goal.check()
    if goal.metric not in report.metrics:
        raise InputError(
            f"--metric {goal.metric}: not in the evaluation (it measured "
            f"{', '.join(report.metrics)})"
        )
    original = report.original(goal.metric)
    best = frontier(report.results, goal.metric)
    recommended = _pick(best, goal, original)
    commands, queries = ([], "")
    if recommended is not None:
        commands, queries = apply_commands(report, recommended)
    return Plan(goal, goal.metric, original, best, recommended, commands, queries, report)


def _method_entry(report: EvaluationReport, name: str) -> Mapping[str, Any]:
    return next((m for m in report.methods if m.get("name") == name), {})


def apply_commands(report: EvaluationReport, row: ResultRow) -> tuple[list[str], str]:
    """The shell lines that write ``row``'s cell with `madapt apply`, and how queries are
    encoded for it. ``truncate`` needs no adaptor: no apply line (store the original's first
    m coordinates, re-normalised); ``pca`` is fitted first with `madapt fit --method pca`."""
    precision = row.precision or "float32"
    entry = _method_entry(report, row.method)
    store = report.store
    out = f"{store.rstrip('/')}-{row.method}-{row.dim}-{precision}"
    commands: list[str] = []
    if entry.get("kind") == "adaptor" and entry.get("path"):
        adaptor = entry["path"]
    elif row.method == "pca":
        adaptor = f"{store.rstrip('/')}-pca"
        commands.append(shlex.join(["madapt", "fit", store, "--method", "pca", "--out", adaptor]))
    else:
        adaptor = None
    if adaptor is not None:
        argv = ["madapt", "apply", adaptor, store, "--dims", str(row.dim), "--out", out]
        argv += ["--precision", precision]
        if precision == "int8":
            method = report.settings.get("int8_calibration")
            if method:
                argv += ["--calibration", str(method)]
        commands.append(shlex.join(argv))
    return commands, _queries_note(row, precision, adaptor, out)


def _queries_note(row: ResultRow, precision: str, adaptor: str | None, out: str) -> str:
    """How queries are encoded for ``row``'s scoring (`madapt encode`'s flags)."""
    lead = ""
    if row.method == "truncate":
        lead = f"store the original vectors' first {row.dim} coordinates, re-normalised, as "
        lead += f"{precision}; "
    encode = f"madapt encode --adaptor {shlex.quote(adaptor)} --dim {row.dim}" if adaptor else ""
    if precision == "float32" or row.scoring == "asymmetric":
        how = "queries: float32 vectors"
        return lead + how + (f" ({encode})" if encode else "")
    codes = f"--precision {precision}"
    if precision in ("int8", "int2"):
        codes += f" --calibration-from {shlex.quote(out)}"  # the corpus' ranges, as applied
    how = f"queries: {precision} codes" + (f" ({encode} {codes})" if encode else "")
    if row.rescore:
        how += f"; fetch {row.rescore} x k with them, re-rank with the float32 query"
    return lead + how


def read_report(path: str | Path) -> EvaluationReport:
    """An eval report: ``report.json`` or the directory holding it; an InputError naming the
    file for anything else."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        report = EvaluationReport.from_json(data)
    except FileNotFoundError:
        raise InputError(f"--from-report {path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"--from-report {path}: not a JSON report ({error})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise InputError(f"--from-report {path}: not a madapt eval report ({error!r})") from None
    if not report.results:
        raise InputError(f"--from-report {path}: the report has no results")
    return report


def run_plan(
    store_path: str | Path | None,
    qrels_path: str | Path | None,
    goal: PlanGoal,
    eval_options: Any = None,
    *,
    from_report: str | Path | None = None,
    progress: Progress | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> Plan:
    """The plan of ``goal``: over the report at ``from_report``, or over a fresh
    `madapt eval` of every precision (``eval_options``, an :class:`EvalOptions`)."""
    goal.check()
    if from_report is not None:
        return make_plan(read_report(from_report), goal)
    from madapt_cli.pipelines.evaluate import EvalOptions, run_evaluation

    if store_path is None or qrels_path is None:
        raise InputError("give STORE and --qrels, or --from-report")
    options = eval_options or EvalOptions()
    if not options.precisions:
        options.precisions = list(PRECISIONS)
    report = run_evaluation(
        store_path, qrels_path, options, progress=progress, on_warning=on_warning
    )
    return make_plan(report, goal)
