"""Where output goes: results on stdout, logs and progress on stderr."""

from __future__ import annotations

import json
import sys
import time
from types import TracebackType
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

from madapt_cli.util.progress import ProgressEvent

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


class ProgressPrinter:
    """Renders :class:`~madapt_cli.util.progress.ProgressEvent` s on stderr: a rich bar per
    task on a terminal; elsewhere (CI logs, ``nohup``) one plain line per task every
    ``interval`` seconds and on its last event, so a long step is never silent in a log.
    ``quiet`` renders nothing. Use it as a context manager around the work."""

    def __init__(self, quiet: bool = False, interval: float = 10.0) -> None:
        self.quiet, self.interval = quiet, interval
        self.terminal = err.is_terminal
        self._bar = progress(RowsPerSecond(), quiet=quiet or not self.terminal)
        self._tasks: dict[str, Any] = {}
        self._printed: dict[str, float] = {}
        self._last_done: dict[str, int] = {}
        self._started: dict[str, float] = {}

    def __enter__(self) -> ProgressPrinter:
        self._bar.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._bar.__exit__(kind, error, trace)

    def __call__(self, event: ProgressEvent) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        self._started.setdefault(event.task, now)
        if self.terminal:
            if event.task not in self._tasks:
                self._tasks[event.task] = self._bar.add_task(event.task, total=event.total)
            description = f"{event.task} {event.message}".strip()
            self._bar.update(
                self._tasks[event.task],
                completed=event.done,
                total=event.total,
                description=description,
            )
            return
        last = self._printed.get(event.task)
        if event.finished and self._last_done.get(event.task) == event.done:
            return  # its figures were just printed
        if event.finished or last is None or now - last >= self.interval:
            self._printed[event.task] = now
            self._last_done[event.task] = event.done
            log(_plain_line(event, now - self._started[event.task]))


def _plain_line(event: ProgressEvent, seconds: float) -> str:
    of = f"/{event.total:,}" if event.total is not None else ""
    rate = f", {event.done / seconds:,.1f} {event.unit}/s" if seconds > 0 and event.done else ""
    message = f" - {event.message}" if event.message else ""
    return f"{event.task}: {event.done:,}{of} {event.unit} in {seconds:.0f}s{rate}{message}"
