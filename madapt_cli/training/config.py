"""Training hyper-parameters and results."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from madapt_cli.errors import InputError

EpochCallback = Callable[[dict[str, Any]], None]


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite real number (int or float, not bool)."""
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


@dataclass
class TrainConfig:
    """Hyper-parameters; every field is recorded in the artifact's config.json."""

    train_dims: list[int] | None = None  # None: default_train_dims(D)
    hidden: int | None = None  # None: 2 D
    depth: int = 2
    activation: str = "gelu"
    epochs: int = 10  # unsupervised (stage 1)
    supervised_epochs: int = 30  # stage 2
    batch_size: int = 128  # corpus vectors per step (anchors; their neighbours come along)
    query_batch_size: int = 64  # training queries per supervised step
    rotation: bool = True  # start from the corpus' principal rotation (not the identity)
    lr: float = 3e-3  # stage 1 (peak; linear warm-up, cosine decay)
    supervised_lr: float = 1e-3  # stage 2
    weight_decay: float = 0.0
    topk: int = 10
    alpha: float | None = None  # None: the mode's default (see weights())
    beta: float | None = None
    gamma: float | None = None
    temperature: float = 0.05
    hard_negatives: int = 50  # mined per training query in the original space
    positives_per_query: int = 8  # sampled per query and step
    patience: int = 5
    validation_fraction: float = 0.2  # of train queries held out when no dev qrels
    validation_dims: list[int] | None = None  # None: the train dims below D
    dim_weighting: str = "equal"  # or "small": weight 1 + log2(D / m) on size m
    seed: int = 0
    device: str = "auto"

    def option_names(self, mode: str = "unsupervised", method: str = "matryoshka") -> dict:
        """Field -> how a user sets it: the `madapt fit` option (see commands/fit.py: in
        supervised mode ``--epochs`` and ``--lr`` set stage 2, ``--stage1-epochs`` stage 1;
        SMEC trains every stage with ``lr``), or ``TrainConfig.<field>`` when no option
        sets it."""
        cli = {
            "train_dims": "--train-dims",
            "hidden": "--hidden",
            "depth": "--depth",
            "epochs": "--epochs",
            "batch_size": "--batch-size",
            "lr": "--lr",
            "topk": "--topk",
            "alpha": "--alpha",
            "beta": "--beta",
            "gamma": "--gamma",
            "temperature": "--tau",
            "hard_negatives": "--hard-negatives",
            "patience": "--patience",
            "seed": "--seed",
            "device": "--device",
        }
        if mode == "supervised":
            cli.update(epochs="--stage1-epochs", supervised_epochs="--epochs")
            if method == "smec":
                cli["lr"] = "--lr"
            else:
                cli.update(lr="TrainConfig.lr (stage 1)", supervised_lr="--lr")
        return {name: cli.get(name, f"TrainConfig.{name}") for name in asdict(self)}

    def validate(self, mode: str = "unsupervised", method: str = "matryoshka") -> None:
        """Raise :class:`InputError` naming the option of the first hyper-parameter that is
        not a finite number in its range (``--lr must be a positive finite number, not
        nan``). ``fit_store`` calls it before any work."""
        names = self.option_names(mode, method)

        def fail(field_name: str, expected: str) -> None:
            value = getattr(self, field_name)
            raise InputError(f"{names[field_name]} must be {expected}, not {value!r}")

        for name in ("epochs", "supervised_epochs", "hard_negatives"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "a whole number >= 0")
        for name in ("batch_size", "query_batch_size", "topk", "patience", "depth"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "a whole number >= 1")
        for name in ("hidden", "positives_per_query"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                fail(name, "a whole number >= 1")
        for name in ("lr", "supervised_lr", "temperature"):
            value = getattr(self, name)
            if not _is_number(value) or not value > 0:
                fail(name, "a positive finite number")
        for name in ("weight_decay", "alpha", "beta", "gamma"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or value < 0):
                fail(name, "a finite number >= 0")
        if not _is_number(self.validation_fraction) or not 0 < self.validation_fraction < 1:
            fail("validation_fraction", "a fraction strictly between 0 and 1")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:  # numpy's seed range
            fail("seed", "a whole number in 0..4294967295")
        for name in ("train_dims", "validation_dims"):
            value = getattr(self, name)
            if value is not None and not all(_is_int(d) and d >= 1 for d in value):
                fail(name, "whole numbers >= 1")
        if self.dim_weighting not in ("equal", "small"):
            fail("dim_weighting", "'equal' or 'small'")
        from madapt_cli.methods.matryoshka import ACTIVATIONS

        if self.activation not in ACTIVATIONS:
            fail("activation", f"one of {', '.join(ACTIVATIONS)}")

    def dim_weights(self, dims: Sequence[int]) -> list[float]:
        if self.dim_weighting == "equal":
            return [1.0] * len(dims)
        if self.dim_weighting == "small":
            return [1.0 + math.log2(max(dims) / m) for m in dims]
        raise InputError(f"unknown dim weighting {self.dim_weighting!r}: use equal or small")

    def weights(self, mode: str) -> dict[str, float]:
        """Loss weights: unsupervised alpha = beta = 1; supervised alpha = beta = gamma = 0.3
        (measured on SciFact: 0.3 gains 0.015 nDCG@10 at 64 and 128 dims over 1.0, and full
        size still gains)."""

        def pick(value: float | None, default: float) -> float:
            return default if value is None else float(value)

        if mode == "unsupervised":
            return {"topk": 1.0, "pair": pick(self.alpha, 1.0), "rec": pick(self.beta, 1.0)}
        return {
            "rank": 1.0,
            "topk": pick(self.alpha, 0.3),
            "pair": pick(self.beta, 0.3),
            "rec": pick(self.gamma, 0.3),
        }


@dataclass
class TrainResult:
    module: torch.nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    topk_mining_seconds: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def config_record(config: TrainConfig) -> dict[str, Any]:
    return asdict(config)
