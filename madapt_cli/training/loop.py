"""The training loop: AdamW, warm-up and cosine decay, early stopping on validation."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch

from madapt_cli.errors import InputError
from madapt_cli.training.config import EpochCallback, TrainConfig
from madapt_cli.training.validation import Validation


class TrainingDiverged(InputError):
    """The loss (or the weights) became NaN or infinite: training stops, nothing is written."""


def _diverged(
    stage: str, epoch: int, step: int, steps: int, lr: float, loss: float | None
) -> TrainingDiverged:
    what = f"the loss became {loss}" if loss is not None else "the weights became non-finite"
    return TrainingDiverged(
        f"training diverged: {what} in stage '{stage}', epoch {epoch}, step {step} of "
        f"{steps}; nothing was written. Likely causes: a learning rate too high for these "
        f"vectors (it was {lr:g}: try a smaller --lr) or extreme values in the input vectors"
    )


# --- the loops ---------------------------------------------------------------------------------
def _fit_loop(
    module: torch.nn.Module,
    step: Callable[[torch.Generator], torch.Tensor],
    steps_per_epoch: int,
    epochs: int,
    lr: float,
    config: TrainConfig,
    validation: Validation | None,
    stage: str,
    on_epoch: EpochCallback | None,
    generator: torch.Generator,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """AdamW over ``epochs``; keeps the best validated state (the last one without validation)."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=config.weight_decay)
    total_steps = max(1, steps_per_epoch * epochs)
    warmup = max(1, total_steps // 20)

    def schedule(step: int) -> float:  # linear warm-up, then cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_state = None
    if validation is not None:  # epoch 0: where training starts (the identity, or stage 1)
        best = {"stage": stage, "epoch": 0, "loss": None, **validation(module)}
        best_state = copy.deepcopy(module.state_dict())
        history.append(best)
        if on_epoch:
            on_epoch(best)
    stale = 0
    for epoch in range(1, epochs + 1):
        module.train()
        total = torch.zeros((), device=next(module.parameters()).device)
        for step_number in range(1, steps_per_epoch + 1):
            loss = step(generator)
            # the steps already synchronise (torch.unique), so this check costs little
            if not bool(torch.isfinite(loss.detach()).all()):
                raise _diverged(
                    stage, epoch, step_number, steps_per_epoch, lr, float(loss.detach())
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.detach()
        # a finite loss can still take a step to non-finite weights (an overflowing gradient)
        if not all(bool(torch.isfinite(p.detach()).all()) for p in module.parameters()):
            raise _diverged(stage, epoch, steps_per_epoch, steps_per_epoch, lr, None)
        record: dict[str, Any] = {
            "stage": stage,
            "epoch": epoch,
            "loss": float(total) / steps_per_epoch,
        }
        if validation is not None:
            record.update(validation(module))
        history.append(record)
        if on_epoch:
            on_epoch(record)
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
