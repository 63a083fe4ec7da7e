"""Presenting an :class:`~madapt_cli.pipelines.evaluate.EvaluationReport`: a terminal table, and a
report directory (``report.json``, ``report.md``, one PNG plot per metric against size).

A report directory is written under a temporary name beside its destination and renamed into
place, so a failure never leaves a half-written report; only a report madapt wrote is replaced,
and only with ``overwrite`` (:mod:`madapt_cli.util.files`). Every user-supplied string in
``report.md`` (adaptor names, paths, models, warnings) is escaped, so it reads as text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from madapt_cli import __version__
from madapt_cli.errors import MadaptError, environment_failure
from madapt_cli.pipelines.eval_results import EvaluationReport, ResultRow, frontier
from madapt_cli.retrieval.quantize import PRECISIONS
from madapt_cli.util.files import staged_output

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
FLOAT32_BYTES = 4


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#!|~>])")
_BLOCK_START = re.compile(r"^(\d*)([-+.)=])")  # would open a list or a heading underline


def md_text(value: Any) -> str:
    """``value`` as Markdown that renders as the same literal text, on one line: Markdown's
    punctuation backslash-escaped, ``<`` and ``&`` as entities (no HTML), newlines as spaces."""
    text = " ".join(str(value).splitlines())
    text = text.replace("&", "&amp;").replace("<", "&lt;")
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", text)
    return _BLOCK_START.sub(r"\1\\\2", text.strip())


def md_code(value: Any) -> str:
    """``value`` as an inline code span on one line: fenced by more backticks than any run
    inside it, with ``|`` escaped so a table cell or list item cannot be split."""
    text = " ".join(str(value).splitlines()).replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def bytes_per_vector(dim: int) -> int:
    """Storage of one float32 vector of ``dim`` coordinates."""
    return FLOAT32_BYTES * dim


def method_names(report: EvaluationReport) -> list[str]:
    return [m["name"] for m in report.methods]


def plot_filename(metric: str) -> str:
    """``ndcg@10`` -> ``ndcg_at_10.png``."""
    return metric.replace("@", "_at_") + ".png"


def is_reference(report: EvaluationReport, row: ResultRow) -> bool:
    """The full-size original vectors stored as float32."""
    return (
        row.method == "truncate"
        and row.dim == report.dimension
        and row.precision in (None, "float32")
    )


def _rows(report: EvaluationReport) -> list[tuple[ResultRow, bool]]:
    """(row, is_reference) ordered by size, method, then precision (in the report's order
    within one); the full-size original and its precisions last."""
    order = {name: i for i, name in enumerate(method_names(report))}
    full = {row.method for row in report.results if is_reference(report, row)}
    rows = [(row, is_reference(report, row)) for row in report.results]
    rows.sort(
        key=lambda r: (
            r[0].method in full and r[0].dim == report.dimension,
            r[0].dim,
            order.get(r[0].method, len(order)),
        )
    )
    return rows


def _cell_label(row: ResultRow) -> str:
    """``int8 asym``, ``binary sym +rescore 4``: the precision column of a precision run."""
    text = row.precision or "float32"
    if row.scoring is not None:
        text += " " + ("sym" if row.scoring == "symmetric" else "asym")
    if row.rescore:
        text += f" +rescore {row.rescore}"
    return text


def frontier_metric(report: EvaluationReport) -> str:
    """The metric of the bytes plot and the frontier: nDCG@10 when measured."""
    return "ndcg@10" if "ndcg@10" in report.metrics else report.metrics[0]


def _best_by_size(report: EvaluationReport) -> dict[tuple[int, str], float]:
    best: dict[tuple[int, str], float] = {}
    for row in report.results:
        for metric, value in row.metrics.items():
            key = (row.dim, metric)
            best[key] = max(best.get(key, value), value)
    return best


def render_table(report: EvaluationReport) -> Table:
    """A rich table: one row per (size, method), the best value at each size in bold, the
    full-size original last. Compact enough for an 80-column terminal with four metrics."""
    table = Table(
        title=f"{report.num_queries:,} queries, {report.settings.get('corpus_rows', 0):,} "
        f"documents, {report.dimension}-d vectors",
        title_justify="left",
        caption="bytes: bytes per stored vector; original: the full-size float32 vectors",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("bytes", justify="right", no_wrap=True)
    table.add_column("method", no_wrap=True)
    if report.precisions:
        table.add_column("stored as", no_wrap=True)
    for metric in report.metrics:
        table.add_column(metric, justify="right", no_wrap=True, min_width=len(metric))
    best = _best_by_size(report)
    previous_size = None
    for row, reference in _rows(report):
        if previous_size is not None and row.dim != previous_size:
            table.add_section()
        previous_size = row.dim
        several = sum(1 for r in report.results if r.dim == row.dim) > 1
        cells = []
        for metric in report.metrics:
            value = row.metrics[metric]
            text = f"{value:.4f}"
            if several and value == best[(row.dim, metric)] and not reference:
                text = f"[bold]{text}[/bold]"
            cells.append(text)
        label = "original" if reference else row.method
        extra = [_cell_label(row)] if report.precisions else []
        table.add_row(str(row.dim), f"{row.bytes:,}", label, *extra, *cells)
    return table


def render_markdown(report: EvaluationReport) -> str:
    """The report as Markdown: the table, the settings, fingerprints and plots."""
    lines = [
        "# madapt evaluation report",
        "",
        f"- store: {md_code(report.store)}",
        f"- qrels: {md_code(report.qrels)} ({report.num_queries:,} queries evaluated)",
        f"- corpus: {report.settings.get('corpus_rows', 0):,} documents, "
        f"{report.dimension}-d vectors from {md_code(report.settings.get('provider'))} / "
        f"{md_code(report.settings.get('model'))}",
        f"- search: {md_text(report.settings.get('search'))} on "
        f"{md_code(report.settings.get('device'))}",
        f"- ignore identical ids: {report.settings.get('ignore_identical_ids')}",
        f"- metrics: {md_text(', '.join(report.metrics))} (trec_eval definitions, mean over "
        "queries)",
        f"- written {datetime.now(UTC).isoformat(timespec='seconds')} by madapt {__version__}",
        "",
        "## Results",
        "",
        "| size | bytes/vector | method | "
        + ("stored as | " if report.precisions else "")
        + " | ".join(map(md_text, report.metrics))
        + " |",
        "|---:|---:|---|" + ("---|" if report.precisions else "") + "---:|" * len(report.metrics),
    ]
    best = _best_by_size(report)
    for row, reference in _rows(report):
        cells = [md_text(_cell_label(row))] if report.precisions else []
        several = sum(1 for r in report.results if r.dim == row.dim) > 1
        for metric in report.metrics:
            text = f"{row.metrics[metric]:.4f}"
            if several and row.metrics[metric] == best[(row.dim, metric)] and not reference:
                text = f"**{text}**"
            cells.append(text)
        label = f"{md_text(row.method)} (original)" if reference else md_text(row.method)
        lines.append(f"| {row.dim} | {row.bytes:,} | {label} | " + " | ".join(cells) + " |")
    lines += ["", "The best value at each size is in bold; the original is the full-size vectors."]
    if report.precisions:
        lines += _frontier_markdown(report)
    lines += ["", "## Methods", ""]
    for method in report.methods:
        details = ", ".join(
            f"{md_text(key)}: {md_code(value)}"
            for key, value in method.items()
            if key not in ("name",)
        )
        lines.append(f"- **{md_text(method['name'])}**: {details}")
    if report.fingerprints:
        lines += ["", "## Fingerprints (sha256)", ""]
        lines += [
            f"- {md_text(name)}: {md_code(value)}" for name, value in report.fingerprints.items()
        ]
    if report.warnings:
        lines += ["", "## Warnings", ""]
        lines += [f"- {md_text(warning)}" for warning in report.warnings]
    lines += ["", "## Plots", ""]
    lines += [f"![{md_text(metric)}]({plot_filename(metric)})" for metric in report.metrics]
    if report.precisions:
        metric = frontier_metric(report)
        lines.append(f"![{md_text(metric)} against bytes]({bytes_plot_filename(metric)})")
    timings = ", ".join(f"{md_text(k)} {v:.2f}s" for k, v in report.seconds.items())
    lines += ["", f"Timings: {timings}.", ""]
    return "\n".join(lines)


def bytes_plot_filename(metric: str) -> str:
    """``ndcg@10`` -> ``ndcg_at_10_by_bytes.png``."""
    return metric.replace("@", "_at_") + "_by_bytes.png"


def _frontier_markdown(report: EvaluationReport) -> list[str]:
    """The Pareto frontier in bytes per vector and the frontier metric, as a table."""
    metric = frontier_metric(report)
    original = report.original(metric)
    lines = [
        "",
        f"## Frontier: {md_text(metric)} against bytes per vector",
        "",
        "Each cell scores higher than every cell of fewer or as many bytes"
        + (f"; retention is against the original's {original:.4f}." if original else "."),
        "",
        f"| bytes/vector | method | size | stored as | {md_text(metric)} | retention |",
        "|---:|---|---:|---|---:|---:|",
    ]
    for row in frontier(report.results, metric):
        value = row.metrics[metric]
        retention = f"{value / original:.1%}" if original else "-"
        lines.append(
            f"| {row.bytes:,} | {md_text(row.method)} | {row.dim} | "
            f"{md_text(_cell_label(row))} | {value:.4f} | {retention} |"
        )
    return lines


def plot_bytes(report: EvaluationReport, metric: str, path: Path) -> None:
    """``metric`` against bytes per stored vector (log2 x axis): one marker per cell (colour:
    method; shape: precision), the Pareto frontier as a line, the original as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8.0, 5.0), dpi=120)
    try:
        markers = dict(zip(PRECISIONS, "osDv^", strict=True))
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for index, name in enumerate(method_names(report)):
            colour = colours[index % len(colours)]
            for precision in PRECISIONS:
                cells = [r for r in report.results if r.method == name and r.precision == precision]
                if cells:
                    axes.scatter(
                        [r.bytes for r in cells],
                        [r.metrics[metric] for r in cells],
                        marker=markers[precision],
                        color=colour,
                        alpha=0.75,
                        label=f"{name} {precision}",
                    )
        best = frontier(report.results, metric)
        axes.step(
            [r.bytes for r in best],
            [r.metrics[metric] for r in best],
            where="post",
            color="black",
            linewidth=1.2,
            label="frontier",
        )
        original = report.original(metric)
        if original is not None:
            axes.axhline(
                original,
                linestyle="--",
                color="grey",
                label=f"original float32 ({bytes_per_vector(report.dimension):,} B): "
                f"{original:.3f}",
            )
        axes.set_xscale("log", base=2)
        axes.xaxis.set_major_formatter(lambda value, _: f"{value:,.0f} B")
        axes.set_xlabel("bytes per stored vector (log2)")
        axes.set_ylabel(metric)
        axes.set_title(f"{metric} against bytes per vector ({report.num_queries:,} queries)")
        axes.grid(True, alpha=0.3)
        axes.legend(loc="lower right", fontsize="x-small", ncol=2)
        figure.tight_layout()
        figure.savefig(path)
    finally:
        plt.close(figure)


def plot_metric(report: EvaluationReport, metric: str, path: Path) -> None:
    """One line per method (metric against size, log2 x axis), the full-size original as a
    dashed horizontal line; each size labelled with its bytes per vector."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.0, 4.5), dpi=120)
    try:
        markers = "osD^v<>ph*"
        for index, name in enumerate(method_names(report)):
            points = sorted(
                (row.dim, row.metrics[metric])
                for row in report.results
                if row.method == name
                and row.dim in report.dims
                and row.precision in (None, "float32")
            )
            if points:
                xs, ys = zip(*points, strict=True)
                axes.plot(xs, ys, marker=markers[index % len(markers)], label=name)
        original = report.value("truncate", report.dimension, metric)
        if original is not None:
            axes.axhline(
                original,
                linestyle="--",
                color="grey",
                label=f"original ({report.dimension}-d): {original:.3f}",
            )
        axes.set_xscale("log", base=2)
        axes.set_xticks(report.dims)
        axes.set_xticklabels([f"{d}\n{bytes_per_vector(d):,} B" for d in report.dims])
        axes.minorticks_off()
        axes.set_xlabel("size (dimensions, bytes per float32 vector)")
        axes.set_ylabel(metric)
        axes.set_title(f"{metric} against size ({report.num_queries:,} queries)")
        axes.grid(True, alpha=0.3)
        axes.legend(loc="best")
        figure.tight_layout()
        figure.savefig(path)
    finally:
        plt.close(figure)


def write_report(
    report: EvaluationReport,
    directory: str | Path,
    *,
    overwrite: bool = False,
    inputs: Sequence[str | Path | None] = (),
) -> Path:
    """Write ``report.json``, ``report.md`` and ``<metric>.png`` files into ``directory``.

    Built in a temporary sibling directory and renamed into place. ``directory`` may not be,
    hold or lie inside one of ``inputs``; an existing report madapt wrote there is replaced
    only with ``overwrite``, and anything else is refused (:class:`InputError`, exit 2). A
    machine that refuses the write (read-only, full, no permission) is exit 4.
    """
    directory = Path(directory)
    try:
        with staged_output(
            directory, "report", overwrite=overwrite, inputs=inputs, option="--report"
        ) as staging:
            _write_files(report, staging)
    except OSError as error:
        raise environment_failure(error) or MadaptError(
            f"--report {directory}: cannot write the report ({error.strerror or error})"
        ) from None
    return directory


def _write_files(report: EvaluationReport, staging: Path) -> None:
    payload: dict[str, Any] = {
        **report.to_json(),
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "madapt_version": __version__,
    }
    (staging / REPORT_JSON).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    (staging / REPORT_MD).write_text(render_markdown(report), encoding="utf-8")
    for metric in report.metrics:
        plot_metric(report, metric, staging / plot_filename(metric))
    if report.precisions:
        metric = frontier_metric(report)
        plot_bytes(report, metric, staging / bytes_plot_filename(metric))
