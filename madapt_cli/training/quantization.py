"""Quantisation-aware training (``madapt fit --quantization-aware int8|binary``).

A vector database stores the prefix ``v_m`` of an adapted vector as codes: int8 (each
coordinate rounded to one of 256 levels between a per-dimension lower and upper bound) or
binary (one sign bit per coordinate, searched by Hamming distance). Nothing in the float
objectives asks the codes to keep the ranking: at 64 dimensions the signs of a supervised
adaptor's prefix rank far worse than its floats. This module adds a term that scores each
trained prefix *as the database will* and trains it with the objective's own ranking loss:

    L = L_base(f) + w * sum over m in M of w_m * mean over s in S of L_base^m(s)

    L_base^m(symmetric)  = L_base at size m on (Q_m(f(q)), Q_m(f(d)))   both sides coded
    L_base^m(asymmetric) = L_base at size m on (v_m(f(q)), Q_m(f(d)))   float query

``L_base`` is the objective's ranking loss (L_rank of the supervised stage, L_distill of
``--objective distill``), ``w_m`` its size weights, ``v_m(x) = x[:m] / |x[:m]|`` and
``Q_m`` the database's code of ``v_m`` made differentiable with a straight-through
estimator (STE; Bengio, Leonard and Courville, "Estimating or Propagating Gradients Through
Stochastic Neurons for Conditional Computation", 2013; the clipped form of Hubara et al.,
"Binarized Neural Networks", NeurIPS 2016):

* binary: forward ``sign(x)`` (+1 where x > 0, else -1: the bit ``pack_binary`` stores), the
  cosine of two sign vectors at size m being ``1 - 2 hamming / m``, so the term ranks
  exactly by Hamming distance; backward the identity where ``|v| <= 1`` (always, for unit
  prefixes). The sign is scale-free, so ``Q_m(x) = sign(x[:m])``.
* int8: forward ``lo + step * clamp(round((v - lo) / step), 0, 255)``, ``step = (hi - lo) /
  255``, per dimension of the size-m prefix (the dequantised code a database scores); backward
  the identity inside ``[lo, hi]`` and zero outside (clipped STE). ``lo``/``hi`` are a running
  estimate (exponential moving average, momentum 0.9) of the per-dimension min/max of the
  batch's documents at size m, so the ranges follow f as it trains, as the corpus calibration
  `madapt apply` fits on the final f will.

Gradients flow through the codes to f, so training moves the first coordinates' signs (or
their spread within the int8 ranges) to carry the ranking.

Measured (``bench/qat.py``, SciFact, MiniLM, seeds 0 and 1; docs/benchmarks.md): binary lifts
the binary cells of a supervised adaptor by 0.02-0.05 nDCG@10 (128 dims with a float query
against the bits: 0.618 -> 0.641) and of the unsupervised one at 64 and 128 dims by 0.04-0.06,
at a cost of 0.014-0.021 for float32 at 32-64 dims; int8 changes nothing measurable (int8
codes already score within 0.003 of float32).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

QUANTIZATION_AWARE = ("int8", "binary")
SCORINGS = ("symmetric", "asymmetric")

#: w: the weight of the quantised term beside the float objective
DEFAULT_WEIGHT = 1.0
#: S: how the quantised prefixes are scored (averaged)
DEFAULT_SCORING: tuple[str, ...] = ("symmetric", "asymmetric")
#: momentum of the int8 ranges' running estimate
RANGE_MOMENTUM = 0.9
_LEVELS = 255  # int8: 256 codes, 255 steps


def binary_ste(x: torch.Tensor) -> torch.Tensor:
    """sign(x) (+1 where x > 0, else -1) forward; the identity, clipped to |x| <= 1, backward."""
    hard = torch.where(x > 0, 1.0, -1.0).to(x.dtype)
    clipped = x.clamp(-1.0, 1.0)
    return clipped + (hard - clipped).detach()


def int8_ste(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """The dequantised int8 code of ``x`` (per last-axis ranges ``lower``..``upper``) forward;
    the identity inside the range and zero outside (clipped STE) backward."""
    step = ((upper - lower) / _LEVELS).clamp_min(1e-12)
    clipped = torch.maximum(torch.minimum(x, upper), lower)
    codes = torch.round((clipped - lower) / step).clamp(0, _LEVELS)
    return clipped + (lower + codes * step - clipped).detach()


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
        weight: float = DEFAULT_WEIGHT,
        scoring: Sequence[str] = DEFAULT_SCORING,
    ) -> None:
        super().__init__()
        if precision not in QUANTIZATION_AWARE:
            raise ValueError(f"precision must be int8 or binary, not {precision!r}")
        if not scoring or any(s not in SCORINGS for s in scoring):
            raise ValueError(f"scoring must be among {SCORINGS}, not {scoring!r}")
        self.base, self.precision = base, precision
        self.weight, self.scoring = float(weight), tuple(scoring)
        self.dims = list(base.dims)
        weights = base.size_weights
        self.per_size = nn.ModuleList(self._at_size(base, m) for m in self.dims)
        self.register_buffer("size_weights", weights.detach().clone())
        # int8: running per-dimension ranges of each size (empty until the first batch)
        self.ranges: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def _at_size(base: nn.Module, m: int) -> nn.Module:
        """``base`` scoring whole m-wide vectors only (its one size m, weight 1)."""
        single = copy.deepcopy(base)
        single.dims = [m]
        single.size_weights = torch.ones(1, device=base.size_weights.device)
        return single

    def code(self, x: torch.Tensor, m: int, documents: torch.Tensor | None = None) -> torch.Tensor:
        """Q_m(x) with the STE; ``documents`` (int8): the batch's documents, which update the
        running ranges of size m first."""
        prefix = unit_prefix(x, m)
        if self.precision == "binary":
            return binary_ste(prefix)
        if documents is not None:
            self._update_ranges(unit_prefix(documents, m).detach().reshape(-1, m), m)
        lower, upper = self.ranges[m]
        return int8_ste(prefix, lower, upper)

    @torch.no_grad()
    def _update_ranges(self, vectors: torch.Tensor, m: int) -> None:
        low, high = vectors.min(dim=0).values, vectors.max(dim=0).values
        if m in self.ranges:
            old_low, old_high = self.ranges[m]
            low = RANGE_MOMENTUM * old_low + (1 - RANGE_MOMENTUM) * low
            high = RANGE_MOMENTUM * old_high + (1 - RANGE_MOMENTUM) * high
        self.ranges[m] = (low, high)

    def quantized_term(
        self, anchors: torch.Tensor, documents: torch.Tensor, *rest: Any
    ) -> torch.Tensor:
        """sum over m of w_m * mean over the scorings of L_base^m (module docstring)."""
        total = anchors.new_zeros(())
        for index, (m, single) in enumerate(zip(self.dims, self.per_size, strict=True)):
            coded_documents = self.code(documents, m, documents=documents)
            terms = []
            if "symmetric" in self.scoring:
                terms.append(single(self.code(anchors, m), coded_documents, *rest))
            if "asymmetric" in self.scoring:
                terms.append(single(unit_prefix(anchors, m), coded_documents, *rest))
            total = total + self.size_weights[index] * torch.stack(terms).mean()
        return total

    def forward(self, anchors: torch.Tensor, documents: torch.Tensor, *rest: Any) -> torch.Tensor:
        loss = self.base(anchors, documents, *rest)
        return loss + self.weight * self.quantized_term(anchors, documents, *rest)


#: the objective attribute holding its ranking loss, by objective class name
_RANKING_LOSS = {"SupervisedObjective": "rank_loss", "DistillationObjective": "loss"}


def add_quantization_term(objective: Any, precision: str | None) -> None:
    """Wrap ``objective``'s ranking loss in :class:`QuantizationAwareLoss` (``precision``
    None: leave it as it is). For the supervised and distillation objectives."""
    if precision is None:
        return
    attribute = _RANKING_LOSS.get(type(objective).__name__)
    if attribute is None:
        raise ValueError(f"quantisation-aware training has no term for {type(objective)}")
    base = getattr(objective, attribute)
    wrapped = QuantizationAwareLoss(base, precision, DEFAULT_WEIGHT, DEFAULT_SCORING)
    setattr(objective, attribute, wrapped)


def quantization_record(precision: str | None) -> dict[str, Any]:
    """What config.json records of the setting (empty when off)."""
    if precision is None:
        return {}
    return {
        "quantization_aware": {
            "precision": precision,
            "weight": DEFAULT_WEIGHT,
            "scoring": list(DEFAULT_SCORING),
        }
    }
