"""`madapt plan`: the bytes-against-quality frontier, and what to store for a budget."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from madapt_cli import console
from madapt_cli.errors import InputError, RequirementFailed
from madapt_cli.retrieval.quantize import DEFAULT_INT8_CALIBRATION


def register(app: typer.Typer) -> None:
    @app.command("plan")
    def plan(
        store_path: Path | None = typer.Argument(
            None, help="A store with 'corpus' and 'queries' tables (not with --from-report)."
        ),
        qrels: Path | None = typer.Option(
            None, "--qrels", help="Relevance judgments (test split), as for `madapt eval`."
        ),
        adaptor: list[Path] | None = typer.Option(
            None, "--adaptor", help="An adaptor directory from `madapt fit` (repeatable)."
        ),
        max_bytes: int | None = typer.Option(
            None, "--max-bytes", help="Recommend the best cell within B bytes per vector."
        ),
        min_retention: float | None = typer.Option(
            None,
            "--min-retention",
            help="Recommend the smallest cell keeping this fraction of the original's "
            "figure, e.g. 0.99.",
        ),
        metric: str = typer.Option("ndcg@10", "--metric", help="The metric judged."),
        dims: str | None = typer.Option(
            None, "--dims", help="Sizes to evaluate (default: those of 64,128,256 below D)."
        ),
        baseline: list[str] | None = typer.Option(
            None, "--baseline", help="truncate or pca (repeatable; default: both)."
        ),
        scoring: str = typer.Option(
            "both", "--scoring", help="symmetric, asymmetric or both (as for `madapt eval`)."
        ),
        rescore: int = typer.Option(
            0, "--rescore", help="Also N x k symmetric candidates re-ranked (0: off)."
        ),
        int8_calibration: str = typer.Option(
            DEFAULT_INT8_CALIBRATION, "--int8-calibration", help="minmax or percentile:P."
        ),
        from_report: Path | None = typer.Option(
            None,
            "--from-report",
            help="Plan over this `madapt eval --precision` report (report.json or its "
            "directory) instead of evaluating.",
        ),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON on stdout."),
    ) -> None:
        """Evaluate every method and size at every precision (float32, float16, int8,
        binary; or read an eval report), print the Pareto frontier of bytes per vector
        against the metric, and recommend the cell for --max-bytes or --min-retention with
        the `madapt apply` command that writes it. Exit 5 when no cell meets the goal."""
        from madapt_cli.pipelines.evaluate import EvalOptions
        from madapt_cli.pipelines.plan import PlanGoal, run_plan

        goal = PlanGoal(max_bytes, min_retention, metric.lower()).check()
        options = None
        if from_report is None:
            options = EvalOptions(
                dims=dims,
                adaptors=adaptor or [],
                baselines=baseline or None,
                metrics=goal.metric,
                device=device,
                precisions=["float32", "float16", "int8", "int2", "binary"],
                scoring=scoring,
                rescore=rescore,
                int8_calibration=int8_calibration,
            )
        elif store_path is not None or qrels is not None or adaptor:
            raise InputError(
                "--from-report: not with STORE, --qrels or --adaptor (it plans over the report)"
            )
        with console.ProgressPrinter(quiet=not console.err.is_terminal) as progress:
            result = run_plan(
                store_path,
                qrels,
                goal,
                options,
                from_report=from_report,
                progress=progress,
                on_warning=console.warn,
            )
        if as_json:
            console.print_json(result.to_json())
        else:
            _print(result)
        if result.recommended is None:
            raise RequirementFailed(f"no cell of the grid has {goal.describe()}")


def _print(result) -> None:
    metric = result.metric
    original = result.original
    table = Table(
        title=f"frontier: {metric} against bytes per vector"
        + (f" (original: {original:.4f})" if original else ""),
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for name, justify in (("bytes", "right"), ("method", "left"), ("size", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    table.add_column("stored as", no_wrap=True)
    table.add_column(metric, justify="right", no_wrap=True)
    table.add_column("retention", justify="right", no_wrap=True)
    for row in result.frontier:
        value = row.metrics[metric]
        chosen = row is result.recommended
        cells = [
            f"{row.bytes:,}",
            escape(row.method),
            str(row.dim),
            _stored_as(row),
            f"{value:.4f}",
            f"{value / original:.1%}" if original else "-",
        ]
        table.add_row(*[f"[bold]{c}[/bold]" if chosen else c for c in cells])
    console.print_table(console.out, table)
    row = result.recommended
    if row is None:
        return
    text = (
        f"recommended for {result.goal.describe()}: {row.label} ({row.bytes:,} B per vector, "
        f"{metric} {row.metrics[metric]:.4f})"
    )
    console.out.print(text, highlight=False, markup=False, soft_wrap=True)
    for line in result.commands:
        console.out.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    console.out.print(f"  {result.queries}", highlight=False, markup=False, soft_wrap=True)


def _stored_as(row) -> str:
    text = row.precision or "float32"
    if row.scoring:
        text += " sym" if row.scoring == "symmetric" else " asym"
    if row.rescore:
        text += f" +rescore {row.rescore}"
    return text
