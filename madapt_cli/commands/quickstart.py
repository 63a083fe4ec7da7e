"""`madapt quickstart`: the whole workflow on the bundled example, offline."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from madapt_cli import console


def register(app: typer.Typer) -> None:
    @app.command("quickstart")
    def quickstart(
        out: Path = typer.Option(
            Path("madapt-quickstart"),
            "--out",
            "-o",
            help="Where the store, adaptors and report go.",
        ),
        data: Path | None = typer.Option(
            None, "--data", help="A BEIR folder [default: the bundled SciFact]."
        ),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        backend: str = typer.Option(
            "torch",
            "--backend",
            help="torch, onnx or openvino: the local model's runtime, as in `madapt embed` "
            "(onnx and openvino need the `fast` extra).",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    ) -> None:
        """Embed SciFact, fit PCA and two adaptors, and compare them at 32-256 dimensions."""
        from madapt_cli.pipelines.quickstart import run_quickstart
        from madapt_cli.reports import render_table

        started = time.perf_counter()
        with console.ProgressPrinter(quiet=as_json) as progress:
            report = run_quickstart(
                out, data, device, log=console.log, progress=progress, backend=backend
            )
        if as_json:
            console.print_json(report.to_json())
            return
        console.print_table(console.out, render_table(report))
        console.log(
            f"done in {time.perf_counter() - started:.0f}s; report: {out / 'report' / 'report.md'}"
        )
