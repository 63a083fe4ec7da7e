"""Quantisation-aware training (``madapt fit --quantization-aware binary``).

A vector database may store the prefix ``v_m`` of an adapted vector as binary codes (one
sign bit per coordinate, searched by Hamming distance). Nothing in the float
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

The code is binary: forward ``sign(x)`` (+1 where x > 0, else -1: the bit ``pack_binary``
stores), the cosine of two sign vectors at size m being ``1 - 2 hamming / m``, so the term
ranks exactly by Hamming distance; backward the identity where ``|v| <= 1`` (always, for unit
prefixes). The sign is scale-free, so ``Q_m(x) = sign(x[:m])``.

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
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

QUANTIZATION_AWARE = ("binary",)
SCORINGS = ("symmetric", "asymmetric")

#: w: the weight of the quantised term beside the float objective
DEFAULT_WEIGHT = 1.0
#: S: how the quantised prefixes are scored (averaged)
DEFAULT_SCORING: tuple[str, ...] = ("symmetric", "asymmetric")


def binary_ste(x: torch.Tensor) -> torch.Tensor:
    """sign(x) (+1 where x > 0, else -1) forward; the identity, clipped to |x| <= 1, backward."""
    hard = torch.where(x > 0, 1.0, -1.0).to(x.dtype)
    clipped = x.clamp(-1.0, 1.0)
    return clipped + (hard - clipped).detach()


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
            raise ValueError(f"precision must be binary, not {precision!r}")
        if not scoring or any(s not in SCORINGS for s in scoring):
            raise ValueError(f"scoring must be among {SCORINGS}, not {scoring!r}")
        self.base, self.precision = base, precision
        self.weight, self.scoring = float(weight), tuple(scoring)
        self.dims = list(base.dims)
        weights = base.size_weights
        self.per_size = nn.ModuleList(self._at_size(base, m) for m in self.dims)
        self.register_buffer("size_weights", weights.detach().clone())

    @staticmethod
    def _at_size(base: nn.Module, m: int) -> nn.Module:
        """``base`` scoring whole m-wide vectors only (its one size m, weight 1)."""
        single = copy.deepcopy(base)
        single.dims = [m]
        single.size_weights = torch.ones(1, device=base.size_weights.device)
        return single

    @staticmethod
    def code(x: torch.Tensor, m: int) -> torch.Tensor:
        """Q_m(x): the sign bits of the unit prefix, with the STE."""
        return binary_ste(unit_prefix(x, m))

    def quantized_term(
        self, anchors: torch.Tensor, documents: torch.Tensor, *rest: Any
    ) -> torch.Tensor:
        """sum over m of w_m * mean over the scorings of L_base^m (module docstring)."""
        total = anchors.new_zeros(())
        for index, (m, single) in enumerate(zip(self.dims, self.per_size, strict=True)):
            coded_documents = self.code(documents, m)
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
_RANKING_LOSS = {
    "SupervisedObjective": "rank_loss",
    "DistillationObjective": "loss",
    "StudentNegativesObjective": "loss",  # training/student_negatives.py's subclass
}


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
