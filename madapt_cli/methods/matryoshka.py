"""The Matryoshka-Adaptor (Yoon et al., EMNLP 2024): f(e) = x + g(x), x = e R.

g is the residual MLP of :mod:`madapt_cli.training.modules`, R the corpus' principal rotation
(or the identity). Unsupervised training fits f on the corpus alone (L_topk, L_pair, L_rec
of :mod:`madapt_cli.losses`); supervised training adds a ranking stage on train qrels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from madapt_cli.data import Qrels
from madapt_cli.methods.base import Fitted, Method, TrainingData
from madapt_cli.training.config import EpochCallback, TrainConfig, TrainResult, seed_everything
from madapt_cli.training.loop import EpochOrder, Stage, fit_loop
from madapt_cli.training.modules import (
    ResidualMLP,
    architecture,
    check_architecture,
    principal_rotation,
)
from madapt_cli.training.objectives import SupervisedObjective, UnsupervisedObjective
from madapt_cli.training.progress import EpochProgress
from madapt_cli.training.validation import (
    build_validation,
    split_training_queries,
    training_queries,
)
from madapt_cli.util.device import device_generator, resolve_device
from madapt_cli.util.dims import check_train_dims, default_train_dims

__all__ = ["Matryoshka", "ResidualMLP", "new_adaptor_module", "principal_rotation"]


def new_adaptor_module(corpus: torch.Tensor, config: TrainConfig) -> ResidualMLP:
    """An untrained f: the identity, or the corpus' principal rotation (``config.rotation``)."""
    module = ResidualMLP.from_architecture(corpus.shape[1], architecture(config, corpus.shape[1]))
    if config.rotation:
        module.rotation.copy_(principal_rotation(corpus))
    return module.to(corpus.device)


def train_unsupervised(
    corpus: np.ndarray,
    config: TrainConfig,
    validation_data: dict[str, Any] | None = None,
    on_epoch: EpochCallback | None = None,
    module: ResidualMLP | None = None,
) -> TrainResult:
    """Stage 1: fit f on the corpus alone. ``validation_data`` (optional) holds corpus_ids,
    queries, query_ids and qrels for early stopping."""
    seed_everything(config.seed)
    device = resolve_device(config.device)
    dimension = corpus.shape[1]
    dims = check_train_dims(config.train_dims or default_train_dims(dimension), dimension)
    vectors = F.normalize(torch.tensor(np.asarray(corpus, np.float32)).to(device), dim=-1)
    if module is None:
        module = new_adaptor_module(vectors, config)
    module = module.to(device)
    started = time.perf_counter()
    objective = UnsupervisedObjective(
        vectors, dims, config.topk, config.weights("unsupervised"), config.dim_weights(dims)
    )
    mined = time.perf_counter() - started
    validation = build_validation(vectors, validation_data, dims, config, device)
    batch_size = min(config.batch_size, len(vectors))
    steps = math.ceil(len(vectors) / batch_size)
    generator = device_generator(device, config.seed)
    order = EpochOrder(len(vectors), batch_size, device)

    def step(gen: torch.Generator) -> torch.Tensor:
        return objective(module, order.next(gen))

    stage = Stage("unsupervised", config.epochs, steps, config.lr)
    history, best = fit_loop(module, step, stage, config, validation, on_epoch, generator)
    return TrainResult(module.cpu().eval(), history, best, mined)


def train_supervised(  # noqa: PLR0913 - the public training API (bench/, tests) takes arrays
    corpus: np.ndarray,
    corpus_ids: Sequence[str],
    queries: np.ndarray,
    query_ids: Sequence[str],
    qrels: Qrels,
    config: TrainConfig,
    dev_qrels: Qrels | None = None,
    on_epoch: EpochCallback | None = None,
    two_stage: bool = True,
) -> TrainResult:
    """Stage 1 (unsupervised, unless ``two_stage`` is False) then stage 2 on the train qrels.

    Training queries are the qrels queries found in ``query_ids`` with a judged document in the
    corpus. Without ``dev_qrels``, ``validation_fraction`` of them are held out for early
    stopping (and not trained on).
    """
    seed_everything(config.seed)
    device = resolve_device(config.device)
    dimension = corpus.shape[1]
    dims = check_train_dims(config.train_dims or default_train_dims(dimension), dimension)
    train_ids, validation_data = split_training_queries(
        corpus_ids, queries, query_ids, qrels, dev_qrels, config
    )
    history: list[dict[str, Any]] = []
    module, mined = None, 0.0
    if two_stage:
        stage1 = train_unsupervised(corpus, config, validation_data, on_epoch)
        module, history, mined = stage1.module, stage1.history, stage1.topk_mining_seconds
    seed_everything(config.seed)
    vectors = F.normalize(torch.tensor(np.asarray(corpus, np.float32)).to(device), dim=-1)
    if module is None:
        module = new_adaptor_module(vectors, config)
    module = module.to(device)
    train_queries, judgments = training_queries(
        corpus_ids, queries, query_ids, qrels, train_ids, device
    )
    generator = device_generator(device, config.seed + 1)
    objective = SupervisedObjective(
        vectors, train_queries, judgments, dims, config, config.weights("supervised"), generator
    )
    validation = build_validation(vectors, validation_data, dims, config, device)
    query_batch = min(config.query_batch_size, len(train_ids))
    steps = math.ceil(len(train_ids) / query_batch)
    corpus_batch = min(config.batch_size, len(vectors))
    order = EpochOrder(len(train_ids), query_batch, device)

    def step(gen: torch.Generator) -> torch.Tensor:
        batch = order.next(gen)
        rows = torch.randint(len(vectors), (corpus_batch,), generator=gen, device=device)
        return objective(module, batch, rows)

    stage = Stage("supervised", config.supervised_epochs, steps, config.supervised_lr)
    stage2, best = fit_loop(module, step, stage, config, validation, on_epoch, generator)
    return TrainResult(module.cpu().eval(), history + stage2, best, mined)


class Matryoshka(Method):
    """``--method matryoshka`` (the default): the residual MLP, trained unsupervised, or
    unsupervised then supervised (``--stage1-epochs 0`` skips the first stage)."""

    name = "matryoshka"

    def check_config(self, config: dict[str, Any], config_path: Path) -> None:
        check_architecture(config.get("architecture"), "'architecture'", config_path)

    def build_module(self, config: dict[str, Any]) -> nn.Module:
        return ResidualMLP.from_architecture(int(config["dimension"]), config["architecture"])

    def weights_dimension(self, state: dict[str, torch.Tensor]) -> int | None:
        first = state.get("g.0.weight")
        return None if first is None or first.dim() < 2 else int(first.shape[1])

    def fit(
        self,
        data: TrainingData,
        config: TrainConfig,
        options: Any,
        progress: EpochProgress,
        resume: Path | None = None,
    ) -> Fitted:
        corpus_ids, corpus, query_ids, queries = data.read()
        if data.supervised:
            two_stage = config.epochs > 0
            progress.plan([config.epochs] * two_stage + [config.supervised_epochs])
            result = train_supervised(
                corpus,
                corpus_ids,
                queries,
                query_ids,
                data.qrels,
                config,
                data.dev_qrels,
                progress,
                two_stage=two_stage,
            )
        else:
            validation = data.validation()
            progress.plan([config.epochs])
            result = train_unsupervised(corpus, config, validation, progress)
        record = {
            "architecture": {"type": "residual_mlp", **architecture(config, data.dimension)},
            "mode": data.mode,
            "train_dims": config.train_dims,
            "training_rows": len(corpus_ids),
            "training_data_sha256": data.sha256(),
            "topk_mining_seconds": round(result.topk_mining_seconds, 3),
        }
        return Fitted(result.module, record, result.history, result.best)
