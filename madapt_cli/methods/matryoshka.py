"""The Matryoshka-Adaptor (Yoon et al., EMNLP 2024): f(e) = x + g(x), x = e R."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from madapt_cli.data import Qrels
from madapt_cli.errors import InputError
from madapt_cli.training.config import EpochCallback, TrainConfig, TrainResult, seed_everything
from madapt_cli.training.loop import EpochOrder, _fit_loop
from madapt_cli.training.objectives import SupervisedObjective, UnsupervisedObjective
from madapt_cli.training.validation import _validation, split_training_queries
from madapt_cli.util.device import _device_generator, resolve_device
from madapt_cli.util.dims import check_train_dims, default_train_dims

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}


class ResidualMLP(nn.Module):
    """f(e) = x + g(x), g = Linear(D, H) -> act -> ... -> Linear(H, D), with x = e, or with
    x = e R for a fixed orthogonal rotation R (``rotation=True``; see
    :func:`principal_rotation`).

    g's last layer starts at zero, so an untrained adaptor is exactly the identity (or the
    rotation, which keeps every full-size cosine).
    """

    def __init__(
        self,
        dimension: int,
        hidden: int,
        depth: int = 2,
        activation: str = "gelu",
        rotation: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise InputError("the adaptor needs at least one layer (--depth >= 1)")
        if activation not in ACTIVATIONS:
            raise InputError(f"unknown activation {activation!r}: use {', '.join(ACTIVATIONS)}")
        widths = [dimension] + [hidden] * (depth - 1) + [dimension]
        layers: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            if index:
                layers.append(ACTIVATIONS[activation]())
            layers.append(nn.Linear(width_in, width_out))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.g = nn.Sequential(*layers)
        self.register_buffer("rotation", torch.eye(dimension) if rotation else None)

    def start(self, e: torch.Tensor) -> torch.Tensor:
        """Where f starts before training: e, or e R."""
        return e if self.rotation is None else e @ self.rotation

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        x = self.start(e)
        return x + self.g(x)


def principal_rotation(vectors: torch.Tensor) -> torch.Tensor:
    """R: the eigenvectors of E^T E (uncentred principal axes) by decreasing eigenvalue.

    R is orthogonal, so e R keeps every full-size cosine exactly, while its first m
    coordinates hold as much of the vectors' energy as any m orthonormal directions can: a
    much better start for the small prefixes than the identity. Unlike centred PCA it does
    not subtract the mean, which would change the cosines at full size.
    """
    gram = vectors.double().T @ vectors.double()
    _, eigenvectors = torch.linalg.eigh(gram)  # ascending eigenvalues
    rotation = eigenvectors.flip(-1).float()
    # Fix each axis' sign (eigenvectors are defined up to sign) so fits are reproducible.
    signs = torch.sign(rotation[rotation.abs().argmax(dim=0), torch.arange(rotation.shape[1])])
    return (rotation * signs).to(vectors.dtype)


def new_adaptor_module(corpus: torch.Tensor, config: TrainConfig) -> ResidualMLP:
    """An untrained f: the identity, or the corpus' principal rotation (``config.rotation``)."""
    dimension = corpus.shape[1]
    module = ResidualMLP(
        dimension,
        config.hidden or 2 * dimension,
        config.depth,
        config.activation,
        rotation=config.rotation,
    )
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
    validation = _validation(vectors, validation_data, dims, config, device)
    batch_size = min(config.batch_size, len(vectors))
    steps = math.ceil(len(vectors) / batch_size)
    generator = _device_generator(device, config.seed)
    order = EpochOrder(len(vectors), batch_size, device)

    def step(gen: torch.Generator) -> torch.Tensor:
        return objective(module, order.next(gen))

    history, best = _fit_loop(
        module,
        step,
        steps,
        config.epochs,
        config.lr,
        config,
        validation,
        "unsupervised",
        on_epoch,
        generator,
    )
    return TrainResult(module.cpu().eval(), history, best, mined)


def train_supervised(
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
    corpus_row = {doc_id: i for i, doc_id in enumerate(corpus_ids)}
    query_row = {query_id: i for i, query_id in enumerate(query_ids)}
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
    train_queries = F.normalize(
        torch.tensor(np.asarray(queries[[query_row[q] for q in train_ids]], np.float32)).to(device),
        dim=-1,
    )
    judgments = [
        {corpus_row[d]: g for d, g in qrels[q].items() if d in corpus_row} for q in train_ids
    ]
    generator = _device_generator(device, config.seed + 1)
    objective = SupervisedObjective(
        vectors, train_queries, judgments, dims, config, config.weights("supervised"), generator
    )
    validation = _validation(vectors, validation_data, dims, config, device)
    query_batch = min(config.query_batch_size, len(train_ids))
    steps = math.ceil(len(train_ids) / query_batch)
    corpus_batch = min(config.batch_size, len(vectors))
    order = EpochOrder(len(train_ids), query_batch, device)

    def step(gen: torch.Generator) -> torch.Tensor:
        batch = order.next(gen)
        rows = torch.randint(len(vectors), (corpus_batch,), generator=gen, device=device)
        return objective(module, batch, rows)

    stage2, best = _fit_loop(
        module,
        step,
        steps,
        config.supervised_epochs,
        config.supervised_lr,
        config,
        validation,
        "supervised",
        on_epoch,
        generator,
    )
    return TrainResult(module.cpu().eval(), history + stage2, best, mined)
