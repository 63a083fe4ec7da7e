"""Where output goes: results on stdout, logs and progress on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

#: logs, warnings and progress bars (never results)
err = Console(stderr=True)
#: human-readable results (tables)
out = Console()


def print_table(console: Console, table: Table) -> None:
    """Print at the table's natural width even when that exceeds the console's (a pipe is
    80 columns to rich): a long line is better than figures cut to an ellipsis."""
    natural = Measurement.get(console, console.options.update(width=10_000), table).maximum
    if natural <= console.width:
        console.print(table)
        return
    wide = Console(
        file=console.file,
        width=natural,
        force_terminal=console.is_terminal,
        color_system=console.color_system,  # type: ignore[arg-type]
        no_color=console.no_color,
    )
    wide.print(table)


def print_json(payload: Any) -> None:
    """One JSON document on stdout, for scripts."""
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def log(message: str) -> None:
    err.print(message, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)


def progress(*extra_columns: Any, quiet: bool = False) -> Progress:
    """A progress bar on stderr; hidden (but still counting) when stderr is not a terminal
    or ``quiet`` is set, so pipelines and CI logs stay clean."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=quiet or not err.is_terminal,
        transient=False,
    )


class RowsPerSecond(ProgressColumn):
    """Throughput, for the embed progress bar."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.1f} rows/s", style="cyan")
