"""How work functions report progress: one event type, one callback protocol.

A pipeline never prints. It calls ``progress(ProgressEvent(...))`` as it goes, and the CLI
renders the events (a bar on a terminal, a plain line every few seconds in a log:
:class:`madapt_cli.console.ProgressPrinter`). Python callers pass any callable, or None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ProgressEvent:
    """Where one task stands: ``done`` of ``total`` units (``total`` None while unknown).

    ``task`` names the task ("embed corpus", "fit", "eval", "apply corpus"); events of one
    task are cumulative. ``message`` says what is happening now (an epoch's loss, the size
    just scored) and ``finished`` is set once, on the task's last event.
    """

    task: str
    done: int
    total: int | None = None
    unit: str = "rows"
    message: str = ""
    finished: bool = False


class Progress(Protocol):
    def __call__(self, event: ProgressEvent) -> None: ...


def report(progress: Progress | None, event: ProgressEvent) -> None:
    """Hand ``event`` to ``progress`` when there is one."""
    if progress is not None:
        progress(event)
