"""A fit's epochs as progress: ProgressEvent(task="fit", unit="epochs") of the planned total."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from madapt_cli.training.config import EpochCallback
from madapt_cli.util.progress import Progress, ProgressEvent, report


def describe_epoch(record: dict[str, Any]) -> str:
    """``unsupervised epoch 3 loss 0.1234 val 64:0.512 128:0.601``."""
    scores = record.get("ndcg@10") or {}
    loss = record.get("loss")
    text = f"{record['stage']} epoch {record['epoch']}"
    if loss is not None:
        text += f" loss {loss:.4f}"
    if scores:
        text += " val " + " ".join(f"{d}:{v:.3f}" for d, v in scores.items())
    proxy = record.get("overlap@10") or {}
    if proxy:
        text += " proxy overlap@10 " + " ".join(f"{d}:{v:.3f}" for d, v in proxy.items())
    held_out = record.get("held-out kl") or {}
    if held_out:
        text += " held-out loss " + " ".join(f"{d}:{v:.3f}" for d, v in held_out.items())
    return text


class EpochProgress:
    """The ``on_epoch`` callback a method trains with: it hands each epoch record to
    ``on_epoch`` and reports epochs done of the planned total to ``progress``.

    A method calls :meth:`plan` with the epochs of its stages before training (the total is
    unknown until then). An epoch record numbered 1 or more is one epoch done (epoch 0 is
    the validation of the start); when a stage stops early, its epochs left are dropped from
    the total as the next stage starts, and :meth:`finish` ends the task at the epoch
    reached."""

    def __init__(
        self, on_epoch: EpochCallback | None = None, progress: Progress | None = None
    ) -> None:
        self.on_epoch, self.progress = on_epoch, progress
        self.task = "fit"
        self.done = 0
        self.total: int | None = None
        self.waiting: list[int] = []  # planned epochs of the stages not started yet
        self.stage: str | None = None
        self.stage_left = 0  # planned epochs of the running stage not run yet
        self.message = ""

    def plan(self, epochs: Sequence[int]) -> None:
        """The epochs of the stages still to run, in order."""
        self.waiting = [int(e) for e in epochs if e > 0]
        self.total = self.done + sum(self.waiting)

    def __call__(self, record: dict[str, Any]) -> None:
        if self.on_epoch is not None:
            self.on_epoch(record)
        if record["epoch"] >= 1:
            if record["stage"] != self.stage:  # the first epoch of the next stage
                self._drop(self.stage_left)
                self.stage = record["stage"]
                self.stage_left = self.waiting.pop(0) if self.waiting else 0
            self.done += 1
            self.stage_left = max(0, self.stage_left - 1)
            if self.total is not None:
                self.total = max(self.total, self.done)
        self.message = describe_epoch(record)
        report(self.progress, self._event())

    def finish(self) -> None:
        """The fit is over: the task ends at the epochs run (nothing to say when there was
        no epoch record, as for PCA)."""
        self.total = self.done
        if self.message:
            report(self.progress, self._event(finished=True))

    def _drop(self, epochs: int) -> None:
        if self.total is not None:
            self.total -= epochs

    def _event(self, finished: bool = False) -> ProgressEvent:
        return ProgressEvent(
            task=self.task,
            done=self.done,
            total=self.total,
            unit="epochs",
            message=self.message,
            finished=finished,
        )
