"""The training loop: AdamW, warm-up and cosine decay, early stopping on validation."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from madapt_cli.errors import InputError
from madapt_cli.training.config import EpochCallback, TrainConfig
from madapt_cli.training.validation import Validation
from madapt_cli.util.cpu import cpu_has_bf16

Step = Callable[[torch.Generator], torch.Tensor]


class TrainingDiverged(InputError):
    """The loss (or the weights) became NaN or infinite: training stops, nothing is written."""


@dataclass(frozen=True)
class Stage:
    """One run of :func:`fit_loop`: its name in the epoch records, its epochs, the steps of
    an epoch and the peak learning rate. ``bf16_on_cpu``: precision "auto" trains in
    bfloat16 on a CPU with native bfloat16 too (set by the objectives whose fits were
    measured not to move in it: docs/benchmarks.md). ``width``: the objective reads only
    the adapted vectors' first ``width`` coordinates (its largest size), so a module that can
    (``cut_to``) computes only those while it trains."""

    name: str
    epochs: int
    steps_per_epoch: int
    lr: float
    bf16_on_cpu: bool = False
    width: int | None = None


def _diverged(stage: Stage, epoch: int, step: int, loss: float | None) -> TrainingDiverged:
    what = f"the loss became {loss}" if loss is not None else "the weights became non-finite"
    return TrainingDiverged(
        f"training diverged: {what} in stage '{stage.name}', epoch {epoch}, step {step} of "
        f"{stage.steps_per_epoch}; nothing was written. Likely causes: a learning rate too "
        f"high for these vectors (it was {stage.lr:g}: try a smaller --lr) or extreme values "
        "in the input vectors"
    )


def warmup_cosine(total_steps: int) -> Callable[[int], float]:
    """The learning-rate factor of step n: linear warm-up over the first 5% of the steps,
    then cosine decay to 10%."""
    warmup = max(1, total_steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))

    return schedule


def fit_loop(
    module: torch.nn.Module,
    step: Step,
    stage: Stage,
    config: TrainConfig,
    validation: Validation | None,
    on_epoch: EpochCallback | None,
    generator: torch.Generator,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """AdamW over ``stage.epochs`` epochs of ``step(generator)`` losses; with ``validation``,
    stops after ``config.patience`` epochs without gain and keeps the best validated state
    (the last one without validation). Returns the epoch records and the best one."""
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=stage.lr, weight_decay=config.weight_decay
    )
    device = next(module.parameters()).device
    if hasattr(module, "autocast_dtype"):
        module.autocast_dtype = training_dtype(config.precision, device, stage.bf16_on_cpu)
    if hasattr(module, "cut_to"):
        module.cut_to(stage.width)
    try:
        return _fit_epochs(module, step, stage, config, validation, on_epoch, generator, optimizer)
    finally:
        if hasattr(module, "autocast_dtype"):
            module.autocast_dtype = None
        if hasattr(module, "cut_to"):
            module.cut_to(None)
        if hasattr(module, "forget_start"):
            module.forget_start()


def training_dtype(
    precision: str, device: torch.device, bf16_on_cpu: bool = False
) -> torch.dtype | None:
    """The reduced precision of training (None: float32): ``precision`` "bf16", or "auto"
    on a GPU with bfloat16, and (``bf16_on_cpu``) on a CPU with native bfloat16."""
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        return None
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and bf16_on_cpu and cpu_has_bf16():
        return torch.bfloat16
    return None


def _fit_epochs(
    module: torch.nn.Module,
    step: Step,
    stage: Stage,
    config: TrainConfig,
    validation: Validation | None,
    on_epoch: EpochCallback | None,
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    # what the arithmetic was: a module without autocast_dtype always trains in float32
    precision = "bf16" if getattr(module, "autocast_dtype", None) is not None else "fp32"
    stage_record = {"stage": stage.name, "precision": precision}
    total_steps = max(1, stage.steps_per_epoch * stage.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps))
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_state = None
    if validation is not None:  # epoch 0: where training starts (the identity, or stage 1)
        best = {**stage_record, "epoch": 0, "loss": None, **validation(module)}
        best_state = copy.deepcopy(module.state_dict())
        _keep(history, best, on_epoch)
    stale = 0
    for epoch in range(1, stage.epochs + 1):
        loss = _train_epoch(module, step, optimizer, scheduler, stage, epoch, generator)
        record: dict[str, Any] = {**stage_record, "epoch": epoch, "loss": loss}
        if validation is not None:
            record.update(validation(module))
        _keep(history, record, on_epoch)
        if validation is None:
            continue
        if record["score"] > best["score"] + 1e-6 and validation.keeps_full_size(record):
            best, best_state, stale = record, copy.deepcopy(module.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    return history, best


def _keep(
    history: list[dict[str, Any]], record: dict[str, Any], on_epoch: EpochCallback | None
) -> None:
    history.append(record)
    if on_epoch:
        on_epoch(record)


def _train_epoch(
    module: torch.nn.Module,
    step: Step,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    stage: Stage,
    epoch: int,
    generator: torch.Generator,
) -> float:
    """One epoch of steps; the mean loss. Raises :class:`TrainingDiverged` at the first
    non-finite loss, or when the epoch leaves non-finite weights."""
    module.train()
    total = torch.zeros((), device=next(module.parameters()).device)
    for step_number in range(1, stage.steps_per_epoch + 1):
        loss = step(generator)
        # the steps already synchronise (torch.unique), so this check costs little
        if not bool(torch.isfinite(loss.detach()).all()):
            raise _diverged(stage, epoch, step_number, float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.detach()
    # a finite loss can still take a step to non-finite weights (an overflowing gradient)
    if not all(bool(torch.isfinite(p.detach()).all()) for p in module.parameters()):
        raise _diverged(stage, epoch, stage.steps_per_epoch, None)
    return float(total) / stage.steps_per_epoch


class EpochOrder:
    """Batches of ``batch`` indices into ``range(count)``: a fresh random permutation each
    epoch, walked in order (the last batch of an epoch may be short)."""

    def __init__(self, count: int, batch: int, device: torch.device) -> None:
        self.count, self.batch, self.device = count, batch, device
        self.permutation: torch.Tensor | None = None
        self.position = 0

    def next(self, generator: torch.Generator) -> torch.Tensor:
        if self.permutation is None or self.position >= self.count:
            self.permutation = torch.randperm(self.count, generator=generator, device=self.device)
            self.position = 0
        start, self.position = self.position, self.position + self.batch
        return self.permutation[start : start + self.batch]
