"""SMEC: sequential Matryoshka embedding compression (Zhang et al., EMNLP 2025).

An adaptor made of three parts, each switchable (``madapt fit --method smec``):

* **SMRL, sequential Matryoshka learning.** Sizes are reduced in stages, D -> n_1 -> n_2 -> ...
  -> ``to_dim`` (default: the powers of two below D). Stage s trains only the loss of its own
  size n_s, until validation nDCG@10 at n_s stops improving, and is then frozen. Without
  ``sequential`` a single stage trains every size at once (Matryoshka style).
* **ADS, adaptive dimension selection.** Each stage owns an importance logit per coordinate
  (:class:`DimensionSelector`); the n_s coordinates kept at its size are drawn by straight-through
  Gumbel top-k (:func:`gumbel_topk_masks`) with an annealed temperature, so pruning keeps the
  most useful coordinates instead of the first ones. Without ``ads`` a stage keeps the first
  n_s coordinates of the current order.
* **S-XBM, selectable cross-batch memory.** A FIFO (:class:`CrossBatchMemory`, default 5,000
  rows) of ORIGINAL, detached corpus embeddings from past batches; each batch vector is tied
  to its K most similar memory rows by :class:`MemorySimilarityLoss`. Without ``xbm`` the
  neighbours come from the current batch only.

Design decisions (ours: the paper leaves them open)

* **The module.** f(e) = P x_S with x_0 = e R and x_s = x_{s-1} + a_s * g_s(x_{s-1}): one
  stage-local residual MLP g_s per stage (the :class:`~madapt_cli.adaptor.ResidualMLP` of the
  Matryoshka adaptor, zero-initialised so a new stage starts as the identity) whose output is
  masked by a_s, the 0/1 vector of the coordinates still alive when stage s starts (the n_{s-1}
  first ones of the current order). P is a permutation of the coordinates.
* **The start.** R is the corpus' uncentred principal rotation
  (:func:`~madapt_cli.adaptor.principal_rotation`, the same start as the Matryoshka adaptor;
  ``TrainConfig.rotation``, ``--no-rotation`` for R = I, i.e. x_0 = e). It is orthogonal, so
  full-size cosines are unchanged, and its first coordinates carry the most energy, so every
  stage starts from a good truncation instead of the raw coordinate order. R is a fixed
  buffer (``rotation``, saved in the safetensors file; ``architecture.rotation`` in
  config.json); artifacts without it load with R = I.
* **What "frozen" means.** When stage s ends, its residual g_s and its selector logits stop
  training (``requires_grad`` off, bit-for-bit unchanged afterwards) and its selection is
  folded into P; its write mask a_s shrinks from the alive coordinates to the n_s it kept, so
  the coordinates it pruned get back exactly the values the larger sizes were trained with
  (its own size never reads them, so its output is unchanged). Later stages only write to
  coordinates they keep, so every coordinate pruned at stage s (positions n_s..n_{s-1}) is
  fixed for good. The kept coordinates keep being refined for the smaller sizes, which may
  cost the larger sizes a little (measured in docs/benchmarks.md); that is the price of
  letting each stage optimise its own size only, which is the point of SMRL.
* **The fold.** After stage s, the alive positions P[:n_{s-1}] are re-ordered by the stage's
  logits (most important first, ties by position), so the n_s kept coordinates become the
  prefix. f'(e) = P (x_S) = P e + P(sum of masked residuals): the permutation is a ``long``
  buffer applied after the residuals and saved in the safetensors file, so outputs are plain
  prefix-truncatable vectors and ``apply``/``eval`` treat SMEC like any adaptor.
* **Gumbel top-k, straight-through.** z = l + T * G (G standard Gumbel noise, T the
  temperature, annealed geometrically from ``temperature_start`` to ``temperature_end`` over a
  stage; scaling the noise by T makes the selection converge to the top-k of l). Forward: the
  hard mask of the k largest z, exactly k ones. Backward: the gradient of the soft mask
  sigmoid((z - t_k) / T), t_k halfway between the k-th and (k+1)-th largest z. The masked
  vector x * mask has the cosine of the kept coordinates, so every loss is the package's loss
  at the full width applied to masked vectors.
* **ADS initial importance.** A stage's logits do not start at zero (which would make the
  first Gumbel draws uniform) but at l_i = log(mean over the corpus of x_{s-1,i}^2), the
  log-energy of each alive coordinate of the stage's input, shifted to mean 0 over the alive
  coordinates (a shift changes no selection). With this scale (factor 1), Gumbel top-k at
  temperature T draws the kept coordinates without replacement with probabilities
  proportional to energy^(1/T): at T = 1 a draw is an energy-weighted sample (so the noise
  does not wipe the prior out, but coordinates of similar energy still get explored), and as
  T anneals it concentrates on the high-energy ones. With the rotation this prefers the
  principal axes (whose energies are the eigenvalues); without it, it prefers the raw
  coordinates that carry the most of the vectors' length. The logits still move: one AdamW
  step moves them by up to ``ADS_SCALE`` * lr (0.3 at lr 3e-3), and the log-energies of the
  alive coordinates span a few units, so a stage of a few dozen steps can re-order them.
* **Learning rates.** The logits are l = ``ADS_SCALE`` * raw, raw the trained parameter: the
  shared AdamW step moves them ``ADS_SCALE`` times faster than the MLP weights, so a selection
  can settle within a stage of a few dozen steps. Every new stage starts at the identity on
  top of the stages before it (the first on top of the rotation), so SMEC uses
  ``TrainConfig.lr`` (``--lr``, default 3e-3) in both modes and has no unsupervised warm-up
  stage; ``--epochs`` is the budget of each stage. (SciFact, 40 epochs over 4 stages: 1e-3
  (one seed) and 6e-3 (three seeds) gave a lower held-out nDCG@10 at 64 than 3e-3.) With the
  energy start, ``ADS_SCALE`` 10 and 30 were measured too (SciFact and NFCorpus, three seeds,
  held-out train queries): no better on average at 64 (SciFact 0.685 / 0.697 / 0.700 for 10 /
  30 / 100, NFCorpus 0.278 / 0.276 / 0.278), so 100 stays. At 100 the logits can outrun the
  prior in a stage's first epoch (NFCorpus, one seed: 0.326 -> 0.257 at 128 after one epoch);
  early stopping keeps the stage's start then.

Objectives (``alpha`` = ``TrainConfig.alpha``, default 1):
    supervised:    L = mean_m L_rank(m) + alpha * mean_m L_unsup(m)
    unsupervised:  L = mean_m L_unsup(m)
with m the sizes of the stage, L_rank the package's :class:`~madapt_cli.losses.RankingLoss`
on adapted queries and documents (same f) and L_unsup the S-XBM loss below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from madapt_cli.data import Qrels
from madapt_cli.errors import InputError
from madapt_cli.losses import MemorySimilarityLoss, RankingLoss
from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.methods.matryoshka import ResidualMLP, principal_rotation
from madapt_cli.training.config import (
    EpochCallback,
    TrainConfig,
    TrainResult,
    _is_int,
    _is_number,
    seed_everything,
)
from madapt_cli.training.loop import EpochOrder, _fit_loop
from madapt_cli.training.objectives import SupervisedObjective
from madapt_cli.training.validation import _validation, split_training_queries, validation_set
from madapt_cli.util.device import _device_generator, resolve_device
from madapt_cli.util.dims import check_train_dims

METHOD = "smec"


ADS_SCALE = 100.0


_DEAD = -1.0e4  # logit of a coordinate pruned by an earlier stage: never selected


@dataclass
class SMECOptions:
    """The switches of ``--method smec``; recorded in the artifact's config.json."""

    sequential: bool = True
    ads: bool = True
    xbm: bool = True
    memory_size: int = 5000
    memory_topk: int | None = None  # None: TrainConfig.topk
    to_dim: int | None = None  # None: the smallest stage size
    temperature_start: float = 1.0
    temperature_end: float = 0.05

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first option out of its range (``fit_store``
        calls it before any work). ``temperature_*`` have no `madapt fit` option."""
        names = {"memory_size": "--memory-size", "to_dim": "--to-dim"}

        def fail(name: str, expected: str) -> None:
            where = names.get(name, f"SMECOptions.{name}")
            raise InputError(f"{where} must be {expected}, not {getattr(self, name)!r}")

        for name in ("memory_size", "memory_topk", "to_dim"):
            value = getattr(self, name)
            if (value is not None or name == "memory_size") and (not _is_int(value) or value < 1):
                fail(name, "a whole number >= 1")
        for name in ("temperature_start", "temperature_end"):
            if not _is_number(getattr(self, name)) or not getattr(self, name) > 0:
                fail(name, "a positive finite number")
        for name in ("sequential", "ads", "xbm"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "true or false")


# --- stages and their sizes ----------------------------------------------------------------
def stage_sizes(start: int, to_dim: int, train_dims: Sequence[int] | None = None) -> list[int]:
    """Stage sizes below ``start`` down to ``to_dim``: ``train_dims`` strictly between them
    (default: the powers of two), then ``to_dim``. 384 -> 32: [256, 128, 64, 32]."""
    if not 1 <= to_dim < start:
        raise InputError(f"--to-dim {to_dim} must be in 1..{start - 1}")
    if train_dims is None:
        train_dims = [2**p for p in range(0, 32) if 2**p < start]
    between = sorted({int(d) for d in train_dims if to_dim < d < start}, reverse=True)
    return [*between, to_dim]


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
        importance" in the module docstring); ``energy`` the mean squared value per coordinate."""
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
    the stage's selector (used when the stage does ADS)."""

    def __init__(self, alive: torch.Tensor, hidden: int, depth: int, activation: str) -> None:
        super().__init__()
        dimension = alive.shape[0]
        self.residual = ResidualMLP(dimension, hidden, depth, activation)
        self.selector = DimensionSelector(alive)
        self.register_buffer("writes", alive.to(torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.writes.to(x.dtype) * self.residual.g(x)


class SMECModule(nn.Module):
    """f(e) = P x_S, x_s = x_{s-1} + a_s * g_s(x_{s-1}); see the module docstring.

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
        arch = self.architecture
        stage = SMECStage(alive, int(arch["hidden"]), int(arch["depth"]), str(arch["activation"]))
        self.stages.append(stage.to(self.permutation.device))
        self.specs.append({"sizes": sizes, "ads": bool(ads)})
        return stage

    def start(self, e: torch.Tensor) -> torch.Tensor:
        """x_0: e R, or e without a rotation."""
        return e if self.rotation is None else e @ self.rotation

    def residual(self, e: torch.Tensor) -> torch.Tensor:
        """x_S in the coordinate order before P (the rotated coordinates when R is set)."""
        x = self.start(e)
        for stage in self.stages:
            x = stage(x)
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


def build_smec_module(config: dict[str, Any]) -> SMECModule:
    """The untrained module an SMEC config.json describes (for :meth:`Adaptor.load`)."""
    smec = config["smec"]
    return SMECModule(int(config["dimension"]), smec["architecture"], smec["stages"])


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


# --- one step of each objective ------------------------------------------------------------------
@dataclass
class StageStep:
    """Everything one training step of a stage needs; ``__call__`` returns the loss."""

    module: SMECModule
    index: int
    corpus: torch.Tensor
    batch_size: int
    temperatures: tuple[float, float]
    total_steps: int
    memory: CrossBatchMemory | None
    unsup: MemorySimilarityLoss
    alpha: float
    supervised: SupervisedObjective | None = None
    rank_loss: RankingLoss | None = None  # at the full width of masked vectors
    query_order: EpochOrder | None = None  # batches of training queries (supervised)
    steps_done: int = 0

    def temperature(self) -> float:
        start, end = self.temperatures
        progress = min(1.0, self.steps_done / max(1, self.total_steps - 1))
        return start * (end / start) ** progress

    def __call__(self, generator: torch.Generator) -> torch.Tensor:
        masks = self.module.selection_masks(self.index, self.temperature(), generator)
        self.steps_done += 1
        device = self.corpus.device
        rows = torch.randint(
            len(self.corpus), (self.batch_size,), generator=generator, device=device
        )
        originals = self.corpus[rows]
        if self.memory is not None:
            self.memory.enqueue(originals)
            pool = self.memory.contents()
        else:
            pool = originals
        loss = self.alpha * self.unsup(self.module, originals, pool, masks)
        if self.supervised is None:
            return loss
        batch = self.query_order.next(generator)
        candidates, relevance = self.supervised.sample_candidates(batch)
        queries = self.module.residual(self.supervised.queries[batch])
        documents = self.module.residual(self.corpus[candidates])
        rank = torch.stack(
            [self.rank_loss(queries * mask, documents * mask, relevance) for mask in masks]
        ).mean()
        return rank + loss


# --- the sequential trainer ---------------------------------------------------------------------
def train_smec(
    corpus: np.ndarray,
    config: TrainConfig,
    options: SMECOptions,
    *,
    corpus_ids: Sequence[str] | None = None,
    queries: np.ndarray | None = None,
    query_ids: Sequence[str] | None = None,
    qrels: Qrels | None = None,
    dev_qrels: Qrels | None = None,
    validation_data: dict[str, Any] | None = None,
    module: SMECModule | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train new SMEC stages (on top of ``module`` when resuming) down to ``options.to_dim``.

    Supervised when ``qrels`` is given (training queries split as in
    :func:`madapt_cli.training.train_supervised`), unsupervised otherwise (``validation_data``
    optional). Each stage runs ``config.supervised_epochs`` (supervised) or ``config.epochs``
    epochs with early stopping on its own sizes' validation nDCG@10.
    """
    supervised = qrels is not None
    config.validate("supervised" if supervised else "unsupervised", METHOD)
    options.validate()
    seed_everything(config.seed)
    device = resolve_device(config.device)
    dimension = corpus.shape[1]
    vectors = F.normalize(torch.from_numpy(np.array(corpus, np.float32)).to(device), dim=-1)
    if module is None:  # a resumed module keeps the start it was trained from
        module = SMECModule(
            dimension,
            {
                "hidden": config.hidden or 2 * dimension,
                "depth": config.depth,
                "activation": config.activation,
                "rotation": config.rotation,
            },
        ).to(device)
        if config.rotation:
            module.rotation.copy_(principal_rotation(vectors))
    module = module.to(device)
    start = module.smallest_size
    train_dims = check_train_dims(config.train_dims, dimension) if config.train_dims else None
    to_dim = options.to_dim or (min(train_dims) if train_dims else min(32, start // 2))
    if start < dimension and to_dim >= start:
        raise InputError(
            f"--to-dim {to_dim} is not below {start}, the smallest size this adaptor already has"
        )
    sizes = stage_sizes(start, to_dim, train_dims)
    plan = [[s] for s in sizes] if options.sequential else [sizes]
    objective, epochs, lr = None, config.epochs, config.lr  # see "Learning rates"
    if supervised:
        train_ids, validation_data = split_training_queries(
            corpus_ids, queries, query_ids, qrels, dev_qrels, config
        )
        row = {q: i for i, q in enumerate(query_ids)}
        corpus_row = {d: i for i, d in enumerate(corpus_ids)}
        train_queries = F.normalize(
            torch.from_numpy(np.asarray(queries[[row[q] for q in train_ids]], np.float32)).to(
                device
            ),
            dim=-1,
        )
        judgments = [
            {corpus_row[d]: g for d, g in qrels[q].items() if d in corpus_row} for q in train_ids
        ]
        objective = SupervisedObjective(
            vectors,
            train_queries,
            judgments,
            [dimension],
            config,
            config.weights("supervised"),
            _device_generator(device, config.seed + 1),
        )
        epochs = config.supervised_epochs
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for stage_sizes_now in plan:
        module.add_stage(stage_sizes_now, options.ads)
        index = len(module.stages) - 1
        if options.ads:
            module.init_importance(index, vectors)
        module.freeze_all_but(index)
        validation = _validation(
            vectors,
            validation_data,
            stage_sizes_now,
            _with_validation_dims(config, stage_sizes_now),
            device,
        )
        step, steps = _stage_step(module, index, vectors, objective, config, options, epochs)
        label = "smec " + ",".join(map(str, stage_sizes_now))
        stage_history, best = _fit_loop(
            module,
            step,
            steps,
            epochs,
            lr,
            config,
            validation,
            label,
            on_epoch,
            _device_generator(device, config.seed),
        )
        module.fold(index)
        history += stage_history
    return TrainResult(module.cpu().eval(), history, best)


def _with_validation_dims(config: TrainConfig, sizes: list[int]) -> TrainConfig:
    from dataclasses import replace

    return replace(config, validation_dims=list(sizes))


def _stage_step(
    module: SMECModule,
    index: int,
    vectors: torch.Tensor,
    objective: SupervisedObjective | None,
    config: TrainConfig,
    options: SMECOptions,
    epochs: int,
) -> tuple[StageStep, int]:
    batch_size = min(config.batch_size, len(vectors))
    if objective is None:
        steps = math.ceil(len(vectors) / batch_size)
    else:
        steps = math.ceil(
            len(objective.queries) / min(config.query_batch_size, len(objective.queries))
        )
    memory = (
        CrossBatchMemory(options.memory_size, vectors.shape[1], vectors.device)
        if options.xbm
        else None
    )
    alpha = 1.0 if config.alpha is None else float(config.alpha)
    step = StageStep(
        module=module,
        index=index,
        corpus=vectors,
        batch_size=batch_size,
        temperatures=(options.temperature_start, options.temperature_end),
        total_steps=steps * epochs,
        memory=memory,
        unsup=MemorySimilarityLoss(options.memory_topk or config.topk, vectors.shape[1]).to(
            vectors.device
        ),
        alpha=alpha if objective is not None else 1.0,
        supervised=objective,
        rank_loss=RankingLoss([vectors.shape[1]], config.temperature).to(vectors.device),
        query_order=EpochOrder(
            len(objective.queries),
            min(config.query_batch_size, len(objective.queries)),
            vectors.device,
        )
        if objective is not None
        else None,
    )
    return step, steps


def options_record(options: SMECOptions) -> dict[str, Any]:
    return asdict(options)


def train_for_store(
    corpus: np.ndarray,
    corpus_ids: Sequence[str],
    queries: np.ndarray,
    query_ids: Sequence[str],
    qrels: Qrels | None,
    dev_qrels: Qrels | None,
    mode: str,
    config: TrainConfig,
    options: SMECOptions | None,
    resume: str | Path | None,
    metadata: dict[str, Any],
    on_epoch: EpochCallback | None = None,
) -> tuple[TrainResult, dict[str, Any]]:
    """``fit_store``'s SMEC path: load ``resume`` (if any), train the new stages, and return
    the config.json entries that describe the artifact (``smec``, ``architecture``; resumed
    training keeps the earlier validation curve)."""
    options = options or SMECOptions()
    module, earlier = None, {}
    if resume is not None:
        adaptor = load_for_resume(resume, corpus.shape[1])
        adaptor.check_compatible(metadata, "the store's corpus vectors")
        module, earlier = adaptor.module, adaptor.config
    if mode == "supervised":
        result = train_smec(
            corpus,
            config,
            options,
            corpus_ids=corpus_ids,
            queries=queries,
            query_ids=query_ids,
            qrels=qrels,
            dev_qrels=dev_qrels,
            module=module,
            on_epoch=on_epoch,
        )
    else:
        judged = dev_qrels if dev_qrels is not None else qrels
        validation = validation_set(corpus_ids, queries, query_ids, judged) if judged else None
        if judged and validation is None:
            raise InputError("no query of the qrels has a vector in the 'queries' table")
        result = train_smec(
            corpus, config, options, validation_data=validation, module=module, on_epoch=on_epoch
        )
    description = result.module.describe()
    record = {
        "architecture": {"type": "smec", **description["architecture"]},
        "smec": {
            **description,
            "options": options_record(options),
            "resumed_from": str(Path(resume).resolve()) if resume is not None else None,
        },
    }
    result.history = list(earlier.get("validation_curve") or []) + result.history
    return result, record


def cli_options(
    method: str,
    config: TrainConfig,
    lr: float | None,
    to_dim: int | None,
    resume: Path | None,
    sequential: bool,
    ads: bool,
    xbm: bool,
    memory_size: int,
) -> SMECOptions | None:
    """The SMEC options of `madapt fit` (None for other methods, which must not get them)."""
    if method != METHOD:
        given = [
            flag
            for flag, used in [
                ("--to-dim", to_dim is not None),
                ("--resume", resume is not None),
                ("--no-sequential", not sequential),
                ("--no-ads", not ads),
                ("--no-xbm", not xbm),
                ("--memory-size", memory_size != SMECOptions.memory_size),
            ]
            if used
        ]
        if given:
            raise InputError(f"{given[0]} only applies to --method smec")
        return None
    if memory_size < 1:
        raise InputError("--memory-size must be positive")
    if to_dim is not None and to_dim < 1:
        raise InputError("--to-dim must be positive")
    if lr is not None:  # SMEC stages start at the identity: one learning rate, config.lr
        config.lr = lr
    return SMECOptions(
        sequential=sequential, ads=ads, xbm=xbm, memory_size=memory_size, to_dim=to_dim
    )


def load_for_resume(path: str | Path, dimension: int | None = None) -> Adaptor:
    """The SMEC adaptor at ``path``, to continue to a smaller size (``--resume``)."""
    adaptor = Adaptor.load(path)
    if adaptor.method != METHOD:
        raise InputError(
            f"--resume {path}: a {adaptor.method!r} adaptor; only smec adaptors can be resumed"
        )
    if dimension is not None and adaptor.dimension != dimension:
        raise InputError(
            f"--resume {path}: the adaptor takes {adaptor.dimension}-d vectors, the store has "
            f"{dimension}-d"
        )
    return adaptor
