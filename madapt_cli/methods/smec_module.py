"""SMEC's module (f(e) = P x_S: stage-local residuals, ADS selectors, a permutation) and its
cross-batch memory. The design: docs/smec.md; the method and its trainer:
:mod:`madapt_cli.methods.smec`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from madapt_cli.errors import InputError
from madapt_cli.training.modules import ResidualMLP, add_to_prefix

#: logits l = ADS_SCALE * raw: the shared AdamW step moves them this much faster than the
#: MLP weights (docs/smec.md, "Learning rates"); read at call time
ADS_SCALE = 100.0


_DEAD = -1.0e4  # logit of a coordinate pruned by an earlier stage: never selected


# --- ADS -----------------------------------------------------------------------------------
def gumbel_topk_masks(
    logits: torch.Tensor,
    sizes: Sequence[int],
    temperature: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Straight-through Gumbel top-k masks, one per size: (D,) -> (|sizes|, D).

    z = logits + T * G, G ~ Gumbel(0, 1). Forward: mask_k = 1 on the k largest z, 0 elsewhere
    (exactly k ones, nested across sizes). Backward: d mask_k / d logits is the gradient of
    sigmoid((z - t_k) / T), t_k = (k-th largest z + (k+1)-th largest z) / 2.
    """
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))
    z = logits + temperature * gumbel
    ranked, order = z.detach().sort(descending=True)
    masks = []
    for k in sizes:
        hard = torch.zeros_like(z).index_fill(0, order[:k], 1.0)
        threshold = ranked[k - 1] if k == len(z) else (ranked[k - 1] + ranked[k]) / 2
        soft = torch.sigmoid((z - threshold) / temperature)
        masks.append(hard + (soft - soft.detach()))
    return torch.stack(masks)


class DimensionSelector(nn.Module):
    """Learnable importance logits l = raw * ADS_SCALE over the D coordinates (ADS).

    Coordinates outside ``alive`` get a fixed logit of -1e4 and are never chosen.
    """

    def __init__(self, alive: torch.Tensor) -> None:
        super().__init__()
        self.raw = nn.Parameter(torch.zeros(alive.shape[0]))
        self.register_buffer("alive", alive.to(torch.bool))

    def logits(self) -> torch.Tensor:
        return torch.where(self.alive, self.raw * ADS_SCALE, torch.full_like(self.raw, _DEAD))

    @torch.no_grad()
    def init_from_energy(self, energy: torch.Tensor) -> None:
        """l_i = log(energy_i) - mean over alive j of log(energy_j) (see "ADS initial
        importance" in docs/smec.md); ``energy`` the mean squared value per coordinate."""
        log_energy = energy.to(self.raw).clamp_min(1e-12).log()
        log_energy = log_energy - log_energy[self.alive].mean()
        self.raw.copy_(torch.where(self.alive, log_energy, 0.0) / ADS_SCALE)

    def masks(
        self, sizes: Sequence[int], temperature: float, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Training masks (|sizes|, D): Gumbel top-k, straight-through."""
        return gumbel_topk_masks(self.logits(), sizes, temperature, generator)

    def ranking(self, positions: torch.Tensor) -> torch.Tensor:
        """``positions`` (coordinate ids) re-ordered by decreasing logit, ties by position."""
        logits = self.logits().detach()[positions]
        order = sorted(range(len(positions)), key=lambda i: (-float(logits[i]), i))
        return positions[torch.as_tensor(order, dtype=torch.long, device=positions.device)]


# --- the module ----------------------------------------------------------------------------
class SMECStage(nn.Module):
    """x -> x + a * g(x): a stage-local residual writing only to the coordinates ``a``
    (``writes``: the alive ones while the stage trains, the kept ones once it is folded), plus
    the stage's selector (used when the stage does ADS). ``architecture``: g's hidden, depth
    and activation (the rotation is the module's, not a stage's)."""

    def __init__(self, alive: torch.Tensor, architecture: dict[str, Any]) -> None:
        super().__init__()
        dimension = alive.shape[0]
        g_only = {**architecture, "rotation": False}
        self.residual = ResidualMLP.from_architecture(dimension, g_only)
        self.selector = DimensionSelector(alive)
        self.register_buffer("writes", alive.to(torch.float32))

    def forward(self, x: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        """x + a * g(x); g in ``autocast_dtype`` (mixed precision) when given, the sum in x's."""
        residual = self.residual.g_of(x, autocast_dtype)  # the first `width` while cut
        return add_to_prefix(x, self.writes[: residual.shape[-1]].to(x.dtype) * residual)


class SMECModule(nn.Module):
    """f(e) = P x_S, x_s = x_{s-1} + a_s * g_s(x_{s-1}); see docs/smec.md.

    ``stage_specs`` lists, per stage, its sizes and whether it selects with ADS. ``forward``
    gives the permuted (prefix-truncatable) output; while a stage is being trained with ADS,
    its current logits order its alive positions (what validation should see).
    """

    def __init__(
        self, dimension: int, architecture: dict[str, Any], stage_specs: Sequence[dict] = ()
    ) -> None:
        super().__init__()
        self.dimension, self.architecture = dimension, dict(architecture)
        self.architecture["rotation"] = bool(self.architecture.get("rotation", False))
        self.stages = nn.ModuleList()
        self.specs: list[dict[str, Any]] = []
        self.register_buffer("permutation", torch.arange(dimension))
        # x_0 = e R (R set by train_smec or loaded); None: x_0 = e (and older artifacts)
        rotation = torch.eye(dimension) if self.architecture["rotation"] else None
        self.register_buffer("rotation", rotation)
        self.training_stage: int | None = None
        # set by the training loop (config.precision): the stages' g while training only
        self.autocast_dtype: torch.dtype | None = None
        for spec in stage_specs:
            self.add_stage(spec["sizes"], spec["ads"])

    @property
    def smallest_size(self) -> int:
        return min(self.specs[-1]["sizes"]) if self.specs else self.dimension

    def add_stage(self, sizes: Sequence[int], ads: bool) -> SMECStage:
        """A new identity stage over the coordinates alive now (the first ``smallest_size``)."""
        sizes = sorted({int(s) for s in sizes}, reverse=True)
        if not sizes or sizes[0] >= self.smallest_size or sizes[-1] < 1:
            raise InputError(f"stage sizes {sizes} must lie in 1..{self.smallest_size - 1}")
        alive = torch.zeros(self.dimension, dtype=torch.bool, device=self.permutation.device)
        alive[self.permutation[: self.smallest_size]] = True
        stage = SMECStage(alive, self.architecture)
        self.stages.append(stage.to(self.permutation.device))
        self.specs.append({"sizes": sizes, "ads": bool(ads)})
        return stage

    def start(self, e: torch.Tensor) -> torch.Tensor:
        """x_0: e R, or e without a rotation."""
        return e if self.rotation is None else e @ self.rotation

    def residual(self, e: torch.Tensor) -> torch.Tensor:
        """x_S in the coordinate order before P (the rotated coordinates when R is set)."""
        return self.from_start(self.start(e))

    def from_start(self, x: torch.Tensor) -> torch.Tensor:
        """x_S from x_0 = :meth:`start` (e): training rotates its rows once, not every step."""
        dtype = self.autocast_dtype if self.training else None  # evaluation: float32
        for stage in self.stages:
            x = stage(x, dtype)
        return x

    @torch.no_grad()
    def coordinate_energy(self, vectors: torch.Tensor, chunk: int = 65_536) -> torch.Tensor:
        """Mean squared value of each coordinate of x_S over ``vectors``: (D,)."""
        total = torch.zeros(self.dimension, dtype=torch.float64, device=vectors.device)
        for piece in vectors.split(chunk):
            total += self.residual(piece).double().pow(2).sum(0)
        return (total / max(1, len(vectors))).float()

    def init_importance(self, index: int, vectors: torch.Tensor) -> None:
        """Stage ``index``'s selector logits from the energy of its input over ``vectors``
        (call right after :meth:`add_stage`, while the new stage is still the identity)."""
        self.stages[index].selector.init_from_energy(self.coordinate_energy(vectors))

    def order(self) -> torch.Tensor:
        """P, or while stage ``training_stage`` trains with ADS, P with its alive positions
        ordered by its current logits (the fold it would make now)."""
        index = self.training_stage
        if index is None or not self.specs[index]["ads"]:
            return self.permutation
        alive = int(self.stages[index].selector.alive.sum())
        ranked = self.stages[index].selector.ranking(self.permutation[:alive])
        return torch.cat([ranked, self.permutation[alive:]])

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.residual(e)[:, self.order()]

    def prefix_order(self, index: int) -> torch.Tensor | None:
        """The coordinate order whose first m coordinates are stage ``index``'s size-m
        selection, or None while that stage learns its selection (ADS in training mode:
        Gumbel top-k masks, not prefixes of any order)."""
        if self.specs[index]["ads"] and self.training:
            return None
        return self.order()

    def selection_masks(
        self, index: int, temperature: float, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Masks (|sizes|, D) of stage ``index``'s sizes: Gumbel top-k with ADS (in training
        mode), otherwise the first coordinates of the current order."""
        stage, sizes = self.stages[index], self.specs[index]["sizes"]
        if self.specs[index]["ads"] and self.training:
            return stage.selector.masks(sizes, temperature, generator)
        order = self.order()
        masks = torch.zeros((len(sizes), self.dimension), device=order.device)
        for row, size in enumerate(sizes):
            masks[row, order[:size]] = 1.0
        return masks

    def cut_to(self, width: int | None) -> bool:
        """While the last stage trains on prefixes of at most ``width`` coordinates of the
        identity order (no ADS so far), compute only those outputs of its g
        (:meth:`ResidualMLP.cut_to`, exact under the same condition); None: all, every stage.
        False (and nothing cut) when the order or the stage's weights do not allow it."""
        if width is None:
            for stage in self.stages:
                stage.residual.cut_to(None)
            return True
        identity = torch.arange(width, device=self.permutation.device)
        if not self.stages or not torch.equal(self.order()[:width], identity):
            return False
        return self.stages[-1].residual.cut_to(width)

    def freeze_all_but(self, index: int | None) -> None:
        for position, stage in enumerate(self.stages):
            stage.requires_grad_(position == index)
        self.training_stage = index

    def fold(self, index: int) -> None:
        """Fix stage ``index``'s selection into P, restrict its residual to the coordinates it
        kept (the ones it pruned get back their values from before the stage, i.e. what the
        larger sizes were trained with) and freeze everything."""
        self.training_stage = index
        self.permutation.copy_(self.order())
        kept = self.permutation[: max(self.specs[index]["sizes"])]
        writes = torch.zeros_like(self.stages[index].writes)
        self.stages[index].writes.copy_(writes.index_fill(0, kept, 1.0))
        self.freeze_all_but(None)

    def describe(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "stages": self.specs}


# --- S-XBM -------------------------------------------------------------------------------------
class CrossBatchMemory:
    """FIFO ring of original corpus embeddings (detached copies, never adapted vectors).

    ``enqueue`` overwrites the oldest rows once ``capacity`` is reached; ``contents`` returns
    the rows oldest first.
    """

    def __init__(self, capacity: int, dimension: int, device: torch.device | str = "cpu") -> None:
        if capacity < 1:
            raise InputError("--memory-size must be positive")
        self.capacity = capacity
        self.rows = torch.zeros((capacity, dimension), device=device)
        self.size = 0
        self.head = 0  # next slot to write

    def enqueue(self, originals: torch.Tensor) -> None:
        originals = originals.detach()[-self.capacity :]
        count = originals.shape[0]
        slots = (self.head + torch.arange(count, device=self.rows.device)) % self.capacity
        self.rows[slots] = originals.to(self.rows.dtype)
        self.head = (self.head + count) % self.capacity
        self.size = min(self.capacity, self.size + count)

    def contents(self) -> torch.Tensor:
        if self.size < self.capacity:
            return self.rows[: self.size]
        return torch.cat([self.rows[self.head :], self.rows[: self.head]])
