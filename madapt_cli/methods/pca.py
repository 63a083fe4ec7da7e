"""PCA: f(e) = (e - mu) W, W the corpus' principal axes by decreasing variance."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from madapt_cli.errors import InputError


class PCAMap(nn.Module):
    """f(e) = (e - mu) W, W's columns the principal axes by decreasing variance."""

    def __init__(self, mean: torch.Tensor, components: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("components", components)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return (e - self.mean) @ self.components


def fit_pca(
    batches: Iterable[np.ndarray | torch.Tensor], dimension: int, device: torch.device | None = None
) -> PCAMap:
    """PCA of unit-normalised vectors, streamed: one pass of sums, O(D^2) memory.

    The sums are float64, on ``device`` (default: each batch's own, so tensors already on a
    GPU are reduced there).
    """
    count = 0
    total = gram = None
    for batch in batches:
        x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.array(batch))
        x = x.to(device or x.device, torch.float64)
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        count += x.shape[0]
        total = x.sum(dim=0) if total is None else total + x.sum(dim=0)
        gram = x.T @ x if gram is None else gram.addmm_(x.T, x)
    if count < 2 or total is None or gram is None:
        raise InputError("PCA needs at least 2 corpus vectors")
    if gram.shape != (dimension, dimension):
        raise InputError(f"PCA of {gram.shape[0]}-d vectors asked for {dimension} dimensions")
    mean = total / count
    covariance = gram / count - torch.outer(mean, mean)
    _, axes = torch.linalg.eigh(covariance)  # ascending eigenvalues
    axes = axes.flip(-1)
    # a deterministic sign per axis (eigh's is arbitrary): largest coordinate positive
    columns = torch.arange(dimension, device=axes.device)
    signs = torch.sign(axes[axes.abs().argmax(dim=0), columns])
    axes = axes * torch.where(signs == 0, 1.0, signs)
    return PCAMap(mean.float().cpu(), axes.float().cpu())
