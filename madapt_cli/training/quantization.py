"""Quantisation-aware training (``madapt fit --quantization-aware binary|int2``).

A vector database may store the prefix ``v_m`` of an adapted vector as binary codes (one
sign bit per coordinate, searched by Hamming distance) or as 2-bit codes (int2: four levels
per coordinate, retrieval/int2.py). Nothing in the float
objectives asks the codes to keep the ranking: at 64 dimensions the signs of a supervised
adaptor's prefix rank far worse than its floats. This module adds a term that scores each
trained prefix *as the database will* and trains it with the objective's own ranking loss:

    L = L_base(f) + w * sum over m in M_q of w_m * mean over s in S of L_base^m(s)

    L_base^m(symmetric)  = L_base at size m on (Q_m(f(q)), Q_m(f(d)))   both sides coded
    L_base^m(asymmetric) = L_base at size m on (v_m(f(q)), Q_m(f(d)))   float query

``L_base`` is the objective's ranking loss (L_rank of the supervised stage, L_distill of
``--objective distill``), ``w_m`` its size weights, ``M_q`` the coded sizes among the
trained ones (``SETTINGS``; all of them for binary, 128 for int2), ``v_m(x) = x[:m] / |x[:m]|`` and
``Q_m`` the database's code of ``v_m`` made differentiable with a straight-through
estimator (STE; Bengio, Leonard and Courville, "Estimating or Propagating Gradients Through
Stochastic Neurons for Conditional Computation", 2013; the clipped form of Hubara et al.,
"Binarized Neural Networks", NeurIPS 2016):

binary: forward ``sign(x)`` (+1 where x > 0, else -1: the bit ``pack_binary`` stores), the
cosine of two sign vectors at size m being ``1 - 2 hamming / m``, so the term ranks exactly
by Hamming distance; backward the identity where ``|v| <= 1`` (always, for unit prefixes).
The sign is scale-free, so ``Q_m(x) = sign(x[:m])``.

int2: forward each coordinate at the nearest of the four levels of the 2-bit Lloyd-Max
quantiser of a Gaussian (Max, "Quantizing for minimum distortion", IRE Trans. Inf. Theory
1960) with that coordinate's mean and spread over the batch's documents, an approximation
of the corpus-fitted levels the database stores; backward the identity. Only the
asymmetric scoring (float query) is trained: it is the cell int2 is stored for.

An optional scale ``c`` (``QuantizationSettings.scale``) multiplies the coded cosines
before the temperature (sign codes compress cosines by about sqrt(2 / pi) against a float
query); the teacher's cosines are not scaled.

int8 has no such term: int8 codes with corpus ranges already score as the floats do, and a
straight-through int8 term measured no gain (``bench/qat.py``; docs/benchmarks.md, "Stored
precisions and quantisation-aware training").

Gradients flow through the codes to f, so training moves the first coordinates' signs to
carry the ranking; what it gains on binary cells and costs in float32 is measured in
docs/benchmarks.md.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from madapt_cli.losses import ListwiseDistillationLoss

QUANTIZATION_AWARE = ("binary", "int2")
SCORINGS = ("symmetric", "asymmetric")


@dataclass(frozen=True)
class QuantizationSettings:
    """The term's settings for one stored precision."""

    weight: float  # w: the weight of the quantised term beside the float objective
    scoring: tuple[str, ...]  # S: how the quantised prefixes are scored (averaged)
    dims: tuple[int, ...] | None = None  # M_q: the coded sizes (None: every trained size)
    scale: float = 1.0  # c: coded cosines times c before the temperature


#: per precision, the settings bench/ measured (docs/benchmarks.md, "Stored precisions and
#: quantisation-aware training"): int2 is stored at 128 dimensions for 32 bytes, and its
#: term at that size alone, float query only, chose best on labelled validation
SETTINGS = {
    "binary": QuantizationSettings(1.0, ("symmetric", "asymmetric")),
    "int2": QuantizationSettings(2.5, ("asymmetric",), (128,)),
}


def binary_ste(x: torch.Tensor) -> torch.Tensor:
    """sign(x) (+1 where x > 0, else -1) forward; the identity, clipped to |x| <= 1, backward."""
    hard = torch.where(x > 0, 1.0, -1.0).to(x.dtype)
    clipped = x.clamp(-1.0, 1.0)
    return clipped + (hard - clipped).detach()


#: the Lloyd-Max quantiser of a unit Gaussian at 2 bits: thresholds 0, +-t; levels +-a, +-b
_INT2_THRESHOLD, _INT2_INNER, _INT2_OUTER = 0.9816, 0.4528, 1.5104


def int2_ste(x: torch.Tensor) -> torch.Tensor:
    """Each coordinate at the nearest of four levels (the 2-bit Lloyd-Max quantiser of a
    Gaussian with the coordinate's mean and spread over the rows of ``x``) forward; the
    identity backward."""
    rows = x.detach().reshape(-1, x.shape[-1])
    mean, spread = rows.mean(0), rows.std(0).clamp_min(1e-6)
    z = (x.detach() - mean) / spread
    level = torch.where(z.abs() > _INT2_THRESHOLD, _INT2_OUTER, _INT2_INNER) * torch.sign(z)
    return x + (level * spread + mean - x).detach()


def unit_prefix(x: torch.Tensor, m: int) -> torch.Tensor:
    """v_m: the first m coordinates, re-normalised (what `madapt apply` stores)."""
    return F.normalize(x[..., :m], dim=-1, eps=1e-8)


class QuantizationAwareLoss(nn.Module):
    """``L_base`` plus the quantised term of the module docstring, for a ranking loss whose
    forward is ``(anchors (A, D), documents (..., D), *rest)`` and which has ``dims`` and
    ``size_weights`` (:class:`~madapt_cli.losses.RankingLoss`,
    :class:`~madapt_cli.losses.ListwiseDistillationLoss`)."""

    def __init__(
        self,
        base: nn.Module,
        precision: str,
        weight: float = 1.0,
        scoring: Sequence[str] = SCORINGS,
        dims: Sequence[int] | None = None,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        if precision not in QUANTIZATION_AWARE:
            raise ValueError(f"precision must be binary or int2, not {precision!r}")
        if not scoring or any(s not in SCORINGS for s in scoring):
            raise ValueError(f"scoring must be among {SCORINGS}, not {scoring!r}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, not {scale!r}")
        trained = list(base.dims)
        chosen = trained if dims is None else [m for m in trained if m in set(dims)]
        if not chosen:
            raise ValueError(f"none of the sizes {list(dims or [])} is trained ({trained})")
        self.base, self.precision = base, precision
        self.weight, self.scoring, self.scale = float(weight), tuple(scoring), float(scale)
        self.dims = chosen
        weights = base.size_weights[[trained.index(m) for m in chosen]]
        self.per_size = nn.ModuleList(self._at_size(base, m, self.scale) for m in self.dims)
        self.register_buffer("size_weights", weights.detach().clone())
        self.scales_teacher = isinstance(base, ListwiseDistillationLoss)

    @staticmethod
    def _at_size(base: nn.Module, m: int, scale: float) -> nn.Module:
        """``base`` scoring whole m-wide vectors only (its one size m, weight 1), its
        temperature divided by the scale c (the teacher is divided by c too, in
        :meth:`quantized_term`, so only the student's logits grow)."""
        single = copy.deepcopy(base)
        single.dims = [m]
        single.size_weights = torch.ones(1, device=base.size_weights.device)
        single.temperature = base.temperature / scale
        return single

    def code(self, x: torch.Tensor, m: int) -> torch.Tensor:
        """Q_m(x): the sign bits (or 2-bit levels) of the unit prefix, with the STE."""
        if self.precision == "int2":
            return int2_ste(unit_prefix(x, m))
        return binary_ste(unit_prefix(x, m))

    def coded_per_size(
        self, anchors: torch.Tensor, documents: torch.Tensor, *rest: Any
    ) -> torch.Tensor:
        """mean over the scorings of L_base^m, one value per coded size m: (|M_q|,)."""
        if self.scales_teacher and self.scale != 1.0:  # rest[0]: the teacher's cosines
            rest = (rest[0] / self.scale, *rest[1:])
        values = []
        for m, single in zip(self.dims, self.per_size, strict=True):
            coded_documents = self.code(documents, m)
            terms = []
            if "symmetric" in self.scoring:
                terms.append(single(self.code(anchors, m), coded_documents, *rest))
            if "asymmetric" in self.scoring:
                terms.append(single(unit_prefix(anchors, m), coded_documents, *rest))
            values.append(torch.stack(terms).mean())
        return torch.stack(values)

    def quantized_term(
        self, anchors: torch.Tensor, documents: torch.Tensor, *rest: Any
    ) -> torch.Tensor:
        """sum over m of w_m * mean over the scorings of L_base^m (module docstring)."""
        return (self.size_weights * self.coded_per_size(anchors, documents, *rest)).sum()

    def forward(self, anchors: torch.Tensor, documents: torch.Tensor, *rest: Any) -> torch.Tensor:
        loss = self.base(anchors, documents, *rest)
        return loss + self.weight * self.quantized_term(anchors, documents, *rest)


#: the objective attribute holding its ranking loss, by objective class name
_RANKING_LOSS = {
    "SupervisedObjective": "rank_loss",
    "DistillationObjective": "loss",
    "StudentNegativesObjective": "loss",  # training/student_negatives.py's subclass
}


def coded_sizes(settings: QuantizationSettings, trained: Sequence[int]) -> list[int] | None:
    """The settings' sizes that are trained, or None (every trained size) when none is."""
    if settings.dims is None:
        return None
    chosen = [m for m in trained if m in set(settings.dims)]
    return chosen or None


def add_quantization_term(objective: Any, precision: str | None) -> None:
    """Wrap ``objective``'s ranking loss in :class:`QuantizationAwareLoss` with the
    precision's :data:`SETTINGS` (``precision`` None: leave it as it is). For the supervised
    and distillation objectives."""
    if precision is None:
        return
    attribute = _RANKING_LOSS.get(type(objective).__name__)
    if attribute is None:
        raise ValueError(f"quantisation-aware training has no term for {type(objective)}")
    base = getattr(objective, attribute)
    settings = SETTINGS[precision]
    wrapped = QuantizationAwareLoss(
        base,
        precision,
        settings.weight,
        settings.scoring,
        coded_sizes(settings, base.dims),
        settings.scale,
    )
    setattr(objective, attribute, wrapped)


def quantization_record(precision: str | None) -> dict[str, Any]:
    """What config.json records of the setting (empty when off)."""
    if precision is None:
        return {}
    settings = asdict(SETTINGS[precision])
    settings["scoring"] = list(settings["scoring"])
    if settings["dims"] is not None:
        settings["dims"] = list(settings["dims"])
    return {"quantization_aware": {"precision": precision, **settings}}
