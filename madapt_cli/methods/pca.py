"""PCA: f(e) = (e - mu) W, W the corpus' principal axes by decreasing variance."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from madapt_cli.errors import InputError
from madapt_cli.methods.base import Fitted, Method, TrainingData
from madapt_cli.training.config import TrainConfig
from madapt_cli.training.modules import orient_axes
from madapt_cli.training.progress import EpochProgress
from madapt_cli.util.hashing import training_fingerprint


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
    axes = orient_axes(axes.flip(-1))  # eigh's signs are arbitrary
    return PCAMap(mean.float().cpu(), axes.float().cpu())


class PCA(Method):
    """``--method pca``: the corpus' principal axes, in one streamed pass; no training, no
    queries (``--mode`` is ignored)."""

    name = "pca"
    supervised_needs_qrels = False

    def build_module(self, config: dict[str, Any]) -> nn.Module:
        dimension = int(config["dimension"])
        return PCAMap(torch.zeros(dimension), torch.eye(dimension))

    def weights_dimension(self, state: dict[str, torch.Tensor]) -> int | None:
        mean = state.get("mean")
        return None if mean is None or mean.dim() < 1 else int(mean.shape[0])

    def fit(
        self,
        data: TrainingData,
        config: TrainConfig,
        options: Any,
        progress: EpochProgress,
        resume: Path | None = None,
    ) -> Fitted:
        ids: list[str] = []
        batches = []
        for batch_ids, vectors in data.corpus_batches():
            batches.append(vectors)
            ids.extend(batch_ids)
        if not ids:
            raise InputError(f"table 'corpus' of {data.source} is empty")
        progress.plan([])
        record = {
            "architecture": {"type": "pca", "centered": True},
            "mode": "unsupervised",
            "train_dims": None,
            "training_rows": len(ids),
            "training_data_sha256": training_fingerprint(ids, *batches),
        }
        return Fitted(fit_pca(batches, data.dimension), record)
