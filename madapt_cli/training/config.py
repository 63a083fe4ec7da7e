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
from madapt_cli.training.modules import ACTIVATIONS

EpochCallback = Callable[[dict[str, Any]], None]


def is_int(value: Any) -> bool:
    """A whole number (int or numpy integer, not bool)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite real number (int or float, not bool)."""
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _count(least: int) -> Callable[[Any], bool]:
    return lambda value: is_int(value) and value >= least


def _optional(valid: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or valid(value)


def _positive(value: Any) -> bool:
    return is_number(value) and value > 0


def _non_negative(value: Any) -> bool:
    return is_number(value) and value >= 0


def _sizes(value: Any) -> bool:
    return value is None or all(is_int(d) and d >= 1 for d in value)


def _group(
    names: str, valid: Callable[[Any], bool], expected: str
) -> list[tuple[str, Callable[[Any], bool], str]]:
    return [(name, valid, expected) for name in names.split()]


#: TrainConfig.distill_held_out's values (`madapt fit --held-out-queries`)
HELD_OUT_CHOICES = ("none", "choose", "refit")

#: (field, valid, what it must be), checked in this order by TrainConfig.validate
_CHECKS: list[tuple[str, Callable[[Any], bool], str]] = [
    *_group(
        "epochs supervised_epochs hard_negatives distill_epochs distill_random "
        "distill_student_negatives",
        _count(0),
        "a whole number >= 0",
    ),
    *_group(
        "distill_topk distill_max_anchors distill_batch_size", _count(1), "a whole number >= 1"
    ),
    *_group("distill_temperature distill_lr", _positive, "a positive finite number"),
    *_group("batch_size query_batch_size topk patience depth", _count(1), "a whole number >= 1"),
    *_group("hidden positives_per_query", _optional(_count(1)), "a whole number >= 1"),
    *_group("lr supervised_lr temperature", _positive, "a positive finite number"),
    *_group(
        "weight_decay alpha beta gamma distill_rec_weight distill_weight",
        _optional(_non_negative),
        "a finite number >= 0",
    ),
    *_group(
        "validation_fraction proxy_fraction",
        lambda value: is_number(value) and 0 < value < 1,
        "a fraction strictly between 0 and 1",
    ),
    *_group(  # numpy's seed range
        "seed",
        lambda value: is_int(value) and 0 <= value < 2**32,
        "a whole number in 0..4294967295",
    ),
    *_group("train_dims validation_dims", _sizes, "whole numbers >= 1"),
    *_group(
        "distill_size_weights",
        lambda value: (
            value is None
            or (bool(value) and all(_non_negative(w) for w in value) and sum(value) > 0)
        ),
        "non-negative numbers, not all 0",
    ),
    *_group("proxy", lambda value: value in ("kl", "overlap"), "'kl' or 'overlap'"),
    *_group(
        "objective",
        lambda value: value in ("auto", "distill", "paper"),
        "'auto', 'distill' or 'paper'",
    ),
    *_group(
        "stage1_objective",
        lambda value: value in ("paper", "distill"),
        "'paper' or 'distill'",
    ),
    *_group(
        "dim_weighting",
        lambda value: value in ("equal", "small", "full"),
        "'equal', 'small' or 'full'",
    ),
    *_group("activation", lambda value: value in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}"),
    *_group(  # binary4: int2 too (training/quantization.py SETTINGS)
        "quantization_aware", lambda value: value in (None, "binary", "int2"), "binary or int2"
    ),
    *_group(
        "distill_start_from",
        lambda value: value is None or (is_number(value) and 0 < value <= 1),
        "a fraction in (0, 1] or null",
    ),
    *_group("distill_synthetic_anchors", _count(0), "a whole number >= 0"),
    *_group("distill_extra_weight", _non_negative, "a finite number >= 0"),
    *_group("distill_extra_dims", _sizes, "whole numbers >= 1"),
    *_group(
        "distill_held_out",
        lambda value: value in HELD_OUT_CHOICES,
        "'none', 'choose' or 'refit'",
    ),
    *_group(
        "precision",
        lambda value: value in ("auto", "bf16", "fp32"),
        "'auto', 'bf16' or 'fp32'",
    ),
    *_group(
        "smec_distill_choices",
        lambda value: value is None or all(_non_negative(w) for w in value),
        "finite numbers >= 0",
    ),
    *_group(
        "rank_loss",
        lambda value: value in (None, "pairwise", "softmax"),
        "'pairwise', 'softmax' or null",
    ),
]


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
    # stage 2; 3e-3 (was 1e-3): SciFact held-out train queries 0.730 against 0.671 at 64 dims
    supervised_lr: float = 3e-3
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
    # training arithmetic of the adaptor's MLP: "auto" = bf16 autocast on a GPU that has it,
    # float32 on the CPU; "bf16" or "fp32" to force. Evaluation is always float32.
    precision: str = "auto"
    # --- unsupervised objective (--objective): "auto" = distill when unlabelled queries are
    # given or found, else distill on corpus rows with checkpoint choice by the proxy;
    # "paper" = L_topk + L_pair + L_rec (the paper's, exactly as before)
    objective: str = "auto"
    distill_topk: int = 100  # full-size neighbours per anchor (teacher candidates)
    distill_random: int = 64  # random corpus rows added to every anchor's candidates per step
    distill_temperature: float = 0.05
    distill_lr: float = 2e-3  # was 1e-3: docs/benchmarks.md, chosen on labelled validation
    # anchors per step (--batch-size in distill); 128 until 2026-11-30: 64 raised labelled
    # validation on every SciFact seed and NFCorpus' mean (docs/benchmarks.md)
    distill_batch_size: int = 64
    distill_rec_weight: float = 0.0  # weight of L_rec (stay near the start) beside L_distill
    distill_epochs: int = 24  # 16 until every query trained (2026-11-30): docs/benchmarks.md
    distill_max_anchors: int = 100_000  # corpus-only: at most this many corpus rows as anchors
    proxy_fraction: float = 0.15  # of the anchors held out for the label-free proxy
    proxy: str = "kl"  # what chooses the checkpoint: held-out L_distill ("kl") or "overlap"
    distill_size_weights: list[float] | None = None  # one per trained size; None: dim_weighting
    # per anchor and epoch, the student's top-n rows at the two smallest sizes join the
    # candidates (training/student_negatives.py); 0: off
    distill_student_negatives: int = 20
    # unsupervised distill: from the smallest power of two >= this fraction of the full size
    # up, the adaptor gives its untrained start's prefix (config.json "start_from_dim"): there
    # the teacher is the start itself, and training moved labelled validation by about 0.001
    # either way (docs/benchmarks.md, "Distill, third pass"); below it, f's. None: f at every
    # size
    distill_start_from: float | None = 0.5
    # per training query anchor, this many mixups of it with another training query as extra
    # anchors (training/anchors.py synthetic_anchors); 0: none (2 gained on labelled
    # validation, lowering 128 in 5 of 6 runs: not the default; docs/benchmarks.md)
    distill_synthetic_anchors: int = 0
    # extra anchors beside the unlabelled queries (e.g. the documents' titles, a second
    # queries table): their own L_distill term, weighted and over these sizes (None: the
    # trained sizes), one batch of them per step; never held out for the proxy
    distill_extra_weight: float = 1.0
    distill_extra_dims: list[int] | None = None
    # unlabelled queries as anchors (--held-out-queries): "none" = every query trains, for
    # distill_epochs epochs (no proxy); "choose" = proxy_fraction of them are held out, never
    # trained on, and their distillation loss chooses the checkpoint (the start included;
    # the default until 2026-11-30); "refit" = choose's epoch count E, then training again from
    # the same start on every query for E epochs. Corpus rows as anchors always "choose".
    distill_held_out: str = "none"
    quantization_aware: str | None = None  # binary or int2: training/quantization.py
    # supervised: stage 1's objective ("distill": the training queries as unlabelled anchors;
    # --stage1-objective) and the weight of L_distill over the training queries beside L_rank
    # in stage 2 and in SMEC's stages (--distill-weight). Both off by default for the
    # Matryoshka-Adaptor: on SciFact's held-out train queries each costs 64 dims and up; on
    # NFCorpus' both help ("Supervised: the distillation term on NFCorpus" in
    # docs/benchmarks.md). SMEC's weight while this is 0: smec_distill_choices
    stage1_objective: str = "paper"
    distill_weight: float = 0.0
    # supervised SMEC: while distill_weight is 0 (--distill-weight W sets None), one fit per
    # L_distill weight here from the same start, keeping the best on the held-out training
    # queries; None or []: one fit without L_distill. [1.0]: with the graded softmax loss
    # weight 1 won every held-out choice between 0 and 1 (SciFact and NFCorpus, 3 seeds
    # each: docs/benchmarks.md), so one fit with it; [0.0, 1.0] fits both and chooses
    smec_distill_choices: list[float] | None = field(default_factory=lambda: [1.0])
    # the supervised ranking loss: "pairwise" (RankingLoss, sampled positives against every
    # lower-graded candidate), "softmax" (GradedSoftmaxLoss, one softmax over the candidates
    # with the grades as target; losses.py) or None: the method's default (matryoshka
    # pairwise, smec softmax: docs/smec.md)
    rank_loss: str | None = None

    def option_names(self, mode: str = "unsupervised", one_learning_rate: bool = False) -> dict:
        """Field -> how a user sets it: the `madapt fit` option (see commands/fit.py: in
        supervised mode ``--epochs`` and ``--lr`` set stage 2, ``--stage1-epochs`` stage 1;
        a method with ``one_learning_rate`` (SMEC) trains every stage with ``lr``), or
        ``TrainConfig.<field>`` when no option sets it."""
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
            "quantization_aware": "--quantization-aware",
            "precision": "--precision",
        }
        if mode != "supervised":  # distill (--objective auto/distill) has its own settings
            cli.update(distill_epochs="--epochs", distill_lr="--lr", distill_temperature="--tau")
            cli.update(distill_batch_size="--batch-size")
        if mode == "supervised":
            cli.update(epochs="--stage1-epochs", supervised_epochs="--epochs")
            cli.update(distill_weight="--distill-weight", stage1_objective="--stage1-objective")
            cli.update(rank_loss="--rank-loss")
            if one_learning_rate:
                cli["lr"] = "--lr"
            else:
                cli.update(lr="TrainConfig.lr (stage 1)", supervised_lr="--lr")
        return {name: cli.get(name, f"TrainConfig.{name}") for name in asdict(self)}

    def validate(self, mode: str = "unsupervised", one_learning_rate: bool = False) -> None:
        """Raise :class:`InputError` naming the option of the first hyper-parameter that is
        not a finite number in its range (``--lr must be a positive finite number, not
        nan``). ``fit_store`` calls it before any work; ``one_learning_rate``: see
        :meth:`option_names`."""
        names = self.option_names(mode, one_learning_rate)

        for field_name, valid, expected in _CHECKS:
            value = getattr(self, field_name)
            if not valid(value):
                raise InputError(f"{names[field_name]} must be {expected}, not {value!r}")
        if self.quantization_aware and mode != "supervised" and self.objective == "paper":
            raise InputError("--quantization-aware needs --objective distill or --mode supervised")

    def dim_weights(self, dims: Sequence[int]) -> list[float]:
        if self.dim_weighting == "equal":
            return [1.0] * len(dims)
        if self.dim_weighting == "small":
            return [1.0 + math.log2(max(dims) / m) for m in dims]
        if self.dim_weighting == "full":  # the largest size weighs as much as all the others
            return [1.0] * (len(dims) - 1) + [float(max(1, len(dims) - 1))]
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
