"""The Matryoshka-Adaptor (Yoon et al., EMNLP 2024): f(e) = x + g(x), x = e R.

g is the residual MLP of :mod:`madapt_cli.training.modules`, R the corpus' principal rotation
(or the identity). Unsupervised training fits f on the corpus alone (L_topk, L_pair, L_rec
of :mod:`madapt_cli.losses`); supervised training adds a ranking stage on train qrels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from madapt_cli.data import Qrels
from madapt_cli.methods.base import Fitted, Method, TrainingData
from madapt_cli.training.anchors import (
    anchor_record,
)
from madapt_cli.training.config import EpochCallback, TrainConfig, TrainResult, seed_everything
from madapt_cli.training.distill import start_from_dim, train_distill
from madapt_cli.training.loop import EpochOrder, Stage, fit_loop
from madapt_cli.training.modules import (
    ResidualMLP,
    architecture,
    check_architecture,
    new_adaptor_module,
    principal_rotation,
)
from madapt_cli.training.objectives import (
    SupervisedObjective,
    UnsupervisedObjective,
)
from madapt_cli.training.progress import EpochProgress
from madapt_cli.training.quantization import add_quantization_term, quantization_record
from madapt_cli.training.validation import (
    build_validation,
    split_training_queries,
    training_queries,
)
from madapt_cli.util.device import device_generator, resolve_device
from madapt_cli.util.dims import check_train_dims, default_train_dims

__all__ = [
    "Matryoshka",
    "ResidualMLP",
    "new_adaptor_module",
    "principal_rotation",
    "start_from_dim",
    "train_distill",
]


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
        stage1 = _supervised_stage1(
            corpus, queries, query_ids, train_ids, config, validation_data, on_epoch
        )
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
    add_quantization_term(objective, config.quantization_aware)
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


def _supervised_stage1(
    corpus: np.ndarray,
    queries: np.ndarray,
    query_ids: Sequence[str],
    train_ids: Sequence[str],
    config: TrainConfig,
    validation_data: dict[str, Any] | None,
    on_epoch: EpochCallback | None,
) -> TrainResult:
    """Supervised stage 1: the paper's unsupervised losses over ``config.epochs`` epochs at
    ``config.lr``, or (``config.stage1_objective`` "distill") L_distill with the training
    queries as unlabelled anchors over ``config.epochs`` epochs at ``config.distill_lr``;
    both stop early on the held-out judged queries."""
    if config.stage1_objective == "paper":
        return train_unsupervised(corpus, config, validation_data, on_epoch)
    row = {query_id: i for i, query_id in enumerate(query_ids)}
    anchors = np.asarray(queries[[row[q] for q in train_ids]], np.float32)
    # a supervised adaptor gives f at every size, so stage 1 trains every size
    stage1_config = replace(config, distill_epochs=config.epochs, distill_start_from=None)
    return train_distill(corpus, anchors, stage1_config, validation_data, on_epoch)


class Matryoshka(Method):
    """``--method matryoshka`` (the default): the residual MLP, trained unsupervised, or
    unsupervised then supervised (``--stage1-epochs 0`` skips the first stage)."""

    name = "matryoshka"
    learns_from_queries = True

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
        elif data.objective == "distill":
            validation = data.validation()
            anchors = data.anchors
            # the refit (query anchors only) runs at most as many epochs again
            refits = config.distill_held_out == "refit" and anchors is not None
            progress.plan([config.distill_epochs] * (2 if refits else 1))
            result = train_distill(
                corpus, None if anchors is None else anchors[1], config, validation, progress
            )
        else:
            validation = data.validation()
            progress.plan([config.epochs])
            result = train_unsupervised(corpus, config, validation, progress)
        learned, start_from = None, None
        if not data.supervised and data.objective == "distill":
            start_from = start_from_dim(config, data.dimension)
            if data.anchors is not None:
                learned = anchor_record(
                    str(data.queries_table), data.anchors[0], data.anchor_source
                )
        record = {
            "architecture": {"type": "residual_mlp", **architecture(config, data.dimension)},
            "mode": data.mode,
            **({} if data.supervised else {"objective": data.objective}),
            **({} if learned is None else {"learned_from_queries": learned}),
            **({} if learned is None else {"held_out_queries": config.distill_held_out}),
            **({} if start_from is None else {"start_from_dim": start_from}),
            "train_dims": config.train_dims,
            "training_rows": len(corpus_ids),
            "training_data_sha256": data.sha256(),
            "topk_mining_seconds": round(result.topk_mining_seconds, 3),
            **quantization_record(config.quantization_aware),
        }
        return Fitted(result.module, record, result.history, result.best)
