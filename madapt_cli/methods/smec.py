"""SMEC: sequential Matryoshka embedding compression (Zhang et al., EMNLP 2025).

``madapt fit --method smec``: sizes are reduced in stages (SMRL, ``--sequential``), each stage
learning which coordinates to keep (ADS, ``--ads``) with neighbours from a cross-batch memory
(S-XBM). By default one stage trains every size with S-XBM (sequential stages and ADS off:
they cost quality at 64 dims, docs/smec.md); supervised, the ranking loss is the graded
softmax over every relevant candidate, S-XBM weighs 0.1 beside it and L_distill weighs 1
(chosen on held-out training queries; ``--distill-weight auto`` makes each fit choose again).
It is `madapt fit --mode supervised`'s default method. This module holds the options, the
staged trainer and the :class:`SMEC` method; the module being trained is in
:mod:`madapt_cli.methods.smec_module`. Design notes and the choices' measurements:
docs/smec.md.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from madapt_cli.data import Qrels
from madapt_cli.errors import InputError
from madapt_cli.losses import (
    GradedSoftmaxLoss,
    ListwiseDistillationLoss,
    MemorySimilarityLoss,
    RankingLoss,
)
from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.methods.base import Fitted, Method, TrainingData
from madapt_cli.methods.smec_module import CrossBatchMemory, SMECModule
from madapt_cli.training.config import (
    EpochCallback,
    TrainConfig,
    TrainResult,
    is_int,
    is_number,
    seed_everything,
)
from madapt_cli.training.loop import EpochOrder, Stage, fit_loop
from madapt_cli.training.modules import architecture, check_architecture, principal_rotation
from madapt_cli.training.objectives import SupervisedObjective, ranking_loss
from madapt_cli.training.progress import EpochProgress
from madapt_cli.training.validation import (
    build_validation,
    split_training_queries,
    training_queries,
)
from madapt_cli.util.device import device_generator, resolve_device
from madapt_cli.util.dims import check_train_dims

METHOD = "smec"
SUPERVISED_ALPHA = 0.1  # weight of L_unsup beside L_rank when --alpha is not given
# the ranking loss when TrainConfig.rank_loss is None: GradedSoftmaxLoss, chosen on the held-out
# training queries against RankingLoss (docs/smec.md, "Third pass")
SUPERVISED_RANK_LOSS = "softmax"


@dataclass
class SMECOptions:
    """The switches of ``--method smec``; recorded in the artifact's config.json."""

    # sequential stages and ADS are off by default: on SciFact (3 seeds, CPU and H100) one
    # stage of all sizes with S-XBM beats both the full SMEC and the Matryoshka-Adaptor at
    # 64 dims; the sequential stages stopped before converging and ADS swung by seed
    # (docs/smec.md, "Defaults")
    sequential: bool = False
    ads: bool = False
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
            if (value is not None or name == "memory_size") and (not is_int(value) or value < 1):
                fail(name, "a whole number >= 1")
        for name in ("temperature_start", "temperature_end"):
            if not is_number(getattr(self, name)) or not getattr(self, name) > 0:
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


def stage_plan(
    start: int, dimension: int, config: TrainConfig, options: SMECOptions
) -> list[list[int]]:
    """The sizes of each new stage, from ``start`` (D, or the smallest size of a resumed
    adaptor) down to ``options.to_dim`` (default: the smallest train dim, or min(32, start /
    2)): one size per stage, or every size in one stage without ``options.sequential``."""
    train_dims = check_train_dims(config.train_dims, dimension) if config.train_dims else None
    to_dim = options.to_dim or (min(train_dims) if train_dims else min(32, start // 2))
    if start < dimension and to_dim >= start:
        raise InputError(
            f"--to-dim {to_dim} is not below {start}, the smallest size this adaptor already has"
        )
    sizes = stage_sizes(start, to_dim, train_dims)
    return [[s] for s in sizes] if options.sequential else [sizes]


# --- one step of each objective ------------------------------------------------------------------
@dataclass
class StageStep:
    """Everything one training step of a stage needs; ``__call__`` returns the loss."""

    module: SMECModule
    index: int
    corpus: torch.Tensor  # x_0 = module.start(e) of every corpus row (rotated once per stage)
    batch_size: int
    temperatures: tuple[float, float]
    total_steps: int
    memory: CrossBatchMemory | None
    unsup: MemorySimilarityLoss
    alpha: float
    supervised: SupervisedObjective | None = None
    rank_loss: RankingLoss | GradedSoftmaxLoss | None = None  # full width, masked vectors
    # the same losses at every stage size in one pass, on prefixes (no ADS masks)
    sized_rank_loss: RankingLoss | GradedSoftmaxLoss | None = None
    sized_distill_loss: ListwiseDistillationLoss | None = None
    query_order: EpochOrder | None = None  # batches of training queries (supervised)
    queries: torch.Tensor | None = None  # x_0 of the training queries (supervised)
    steps_done: int = 0

    def temperature(self) -> float:
        start, end = self.temperatures
        progress = min(1.0, self.steps_done / max(1, self.total_steps - 1))
        return start * (end / start) ** progress

    def __call__(self, generator: torch.Generator) -> torch.Tensor:
        # without ADS the sizes are prefixes of one order: every size costs one pass
        order = self.module.prefix_order(self.index)
        masks = None
        if order is None:
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
        loss = self.alpha * self.unsup(self.module.from_start, originals, pool, masks, order)
        if self.supervised is None:
            return loss
        batch = self.query_order.next(generator)
        candidates, relevance = self.supervised.sample_candidates(batch)
        if order is None:
            return loss + self.masked_terms(batch, candidates, relevance, masks, generator)
        return loss + self.prefix_terms(batch, candidates, relevance, order, generator)

    def prefix_terms(
        self,
        batch: torch.Tensor,
        candidates: torch.Tensor,
        relevance: torch.Tensor,
        order: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """L_rank + ``config.distill_weight`` x L_distill of the training queries ``batch``
        at every size (the prefixes of ``order``), from one pass of f over the queries and
        the union of their rank and distillation candidates (the hard negatives are mostly
        distillation candidates too)."""
        distill = self.supervised.distill
        rows = candidates
        if distill is not None:
            distill_rows, teacher, valid = distill.candidates(batch, generator)
            rows = torch.cat([candidates, distill_rows.clamp_min(0).flatten()])
        rows, inverse = torch.unique(rows, return_inverse=True)
        vectors = torch.cat([self.queries[batch], self.corpus[rows]])
        adapted = self.module.from_start(vectors)[:, order]
        queries, documents = adapted[: len(batch)], adapted[len(batch) :]
        rank_documents = documents[inverse[: len(candidates)]]
        rank = self.sized_rank_loss(queries, rank_documents, relevance)
        if distill is None:
            return rank
        index = inverse[len(candidates) :].view(distill_rows.shape)
        term = self.sized_distill_loss.gathered(queries, documents, index, teacher, valid)
        return rank + self.supervised.config.distill_weight * term

    def masked_terms(
        self,
        batch: torch.Tensor,
        candidates: torch.Tensor,
        relevance: torch.Tensor,
        masks: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """:meth:`prefix_terms` at each of the ADS ``masks`` (full-width masked vectors)."""
        queries = self.module.from_start(self.queries[batch])
        documents = self.module.from_start(self.corpus[candidates])
        rank = torch.stack(
            [self.rank_loss(queries * mask, documents * mask, relevance) for mask in masks]
        ).mean()
        distill = self.supervised.distill
        if distill is None:
            return rank
        rows, teacher, valid = distill.candidates(batch, generator)
        unique, inverse = torch.unique(rows.clamp_min(0).flatten(), return_inverse=True)
        documents = self.module.from_start(self.corpus[unique])[inverse].view(*rows.shape, -1)
        term = torch.stack(
            [distill.loss(queries * mask, documents * mask, teacher, valid) for mask in masks]
        ).mean()
        return rank + self.supervised.config.distill_weight * term


# --- the sequential trainer ---------------------------------------------------------------------
def new_smec_module(vectors: torch.Tensor, config: TrainConfig) -> SMECModule:
    """An SMEC module without stages on ``vectors``' device: x_0 = e R, R the principal
    rotation of ``vectors`` (or the identity without ``config.rotation``)."""
    dimension = vectors.shape[1]
    module = SMECModule(dimension, architecture(config, dimension)).to(vectors.device)
    if config.rotation:
        module.rotation.copy_(principal_rotation(vectors))
    return module


def train_smec(  # noqa: PLR0913 - the public training API (bench/, tests) takes arrays
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
    :func:`madapt_cli.methods.matryoshka.train_supervised`), unsupervised otherwise
    (``validation_data`` optional). Each stage runs ``config.supervised_epochs``
    (supervised) or ``config.epochs`` epochs at ``config.lr`` with early stopping on its own
    sizes' validation nDCG@10. Supervised with :func:`distill_choices`: one fit per
    L_distill weight from the same start (by default one, weight 1), and the one whose last
    stage has the best held-out score is kept (its weight in ``best["distill_weight"]``).
    """
    supervised = qrels is not None
    config.validate("supervised" if supervised else "unsupervised", one_learning_rate=True)
    options.validate()
    device = resolve_device(config.device)
    vectors = F.normalize(torch.from_numpy(np.array(corpus, np.float32)).to(device), dim=-1)
    split = None
    if supervised:
        split = split_training_queries(corpus_ids, queries, query_ids, qrels, dev_qrels, config)
        validation_data = split[1]
    choices = distill_choices(config) if supervised else []
    if len(choices) > 1 and not validation_data:
        choices = []  # nothing to choose on: one fit at config.distill_weight
    history: list[dict[str, Any]] = []
    kept: TrainResult | None = None
    for weight in choices or [None]:
        candidate = config if weight is None else replace(config, distill_weight=weight)
        seed_everything(config.seed)  # every candidate from the same start and draws
        start = copy.deepcopy(module) if module is not None else None
        labelled = None if split is None else (split[0], corpus_ids, queries, query_ids, qrels)
        name = "" if len(choices) < 2 else f" distill {weight:g}"
        result = _train_stages(
            vectors, candidate, options, start, validation_data, on_epoch, name, labelled
        )
        history += result.history
        if weight is not None and result.best is not None:
            result.best["distill_weight"] = weight
        if kept is None or _score(result) > _score(kept) + 1e-6:
            kept = result
    return TrainResult(kept.module, history, kept.best)


def trained_distill_weight(result: TrainResult, config: TrainConfig) -> float:
    """The L_distill weight of ``result``'s fit (:func:`train_smec` with ``config``): the
    chosen one, the only candidate, or ``config.distill_weight``."""
    best = result.best or {}
    if "distill_weight" in best:
        return float(best["distill_weight"])
    choices = distill_choices(config)
    return choices[0] if len(choices) == 1 else float(config.distill_weight)


def _score(result: TrainResult) -> float:
    return -math.inf if result.best is None else float(result.best["score"])


def distill_choices(config: TrainConfig) -> list[float]:
    """The L_distill weights a supervised SMEC fit chooses from on its held-out training
    queries: ``config.smec_distill_choices`` while ``config.distill_weight`` is 0 (the
    default; ``--distill-weight W`` fixes the weight), else none (one fit)."""
    if config.distill_weight > 0 or not config.smec_distill_choices:
        return []
    return sorted({float(w) for w in config.smec_distill_choices})


def _train_stages(
    vectors: torch.Tensor,
    config: TrainConfig,
    options: SMECOptions,
    module: SMECModule | None,
    validation_data: dict[str, Any] | None,
    on_epoch: EpochCallback | None,
    name: str,
    labelled: tuple | None,
) -> TrainResult:
    """The stages of one fit; ``labelled``: (training query ids, corpus ids, query vectors,
    query ids, qrels) when supervised."""
    device, dimension = vectors.device, vectors.shape[1]
    if module is None:  # a resumed module keeps the start it was trained from
        module = new_smec_module(vectors, config)
    module = module.to(device)
    plan = stage_plan(module.smallest_size, dimension, config, options)
    objective, epochs = None, config.epochs  # see "Learning rates" in docs/smec.md
    if labelled is not None:
        train_ids, corpus_ids, queries, query_ids, qrels = labelled
        train_queries, judgments = training_queries(
            corpus_ids, queries, query_ids, qrels, train_ids, device
        )
        objective = SupervisedObjective(
            vectors,
            train_queries,
            judgments,
            [dimension],
            config,
            config.weights("supervised"),
            device_generator(device, config.seed + 1),
            regularise=False,  # S-XBM is SMEC's regulariser (StageStep)
        )
        epochs = config.supervised_epochs
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for sizes in plan:
        module.add_stage(sizes, options.ads)
        index = len(module.stages) - 1
        if options.ads:
            module.init_importance(index, vectors)
        module.freeze_all_but(index)
        selection = replace(config, validation_dims=list(sizes))
        validation = build_validation(vectors, validation_data, sizes, selection, device)
        step, steps = _stage_step(module, index, vectors, objective, config, options, epochs)
        label = "smec " + ",".join(map(str, sizes)) + name
        # the stage reads prefixes up to its largest size (unless ADS picks among all)
        width = None if options.ads else max(sizes)
        # supervised: bf16 on a CPU with it too, measured not to move the fit (docs/benchmarks.md)
        bf16 = labelled is not None
        stage = Stage(label, epochs, steps, config.lr, bf16_on_cpu=bf16, width=width)
        generator = device_generator(device, config.seed)
        stage_history, best = fit_loop(module, step, stage, config, validation, on_epoch, generator)
        module.fold(index)
        history += stage_history
    return TrainResult(module.cpu().eval(), history, best)


def _stage_step(
    module: SMECModule,
    index: int,
    vectors: torch.Tensor,
    objective: SupervisedObjective | None,
    config: TrainConfig,
    options: SMECOptions,
    epochs: int,
) -> tuple[StageStep, int]:
    sizes = sorted(module.specs[index]["sizes"])
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
    # supervised default 0.1: chosen on held-out train queries against 0, 0.03, 0.3 and 1
    # (docs/smec.md, "Defaults")
    alpha = SUPERVISED_ALPHA if config.alpha is None else float(config.alpha)
    with torch.no_grad():  # R is fixed while the stages train: rotate every row once
        started = module.start(vectors)
        queries = module.start(objective.queries) if objective is not None else None
    step = StageStep(
        module=module,
        index=index,
        corpus=started,
        batch_size=batch_size,
        temperatures=(options.temperature_start, options.temperature_end),
        total_steps=steps * epochs,
        memory=memory,
        unsup=MemorySimilarityLoss(options.memory_topk or config.topk, vectors.shape[1], sizes).to(
            vectors.device
        ),
        alpha=alpha if objective is not None else 1.0,
        supervised=objective,
        rank_loss=ranking_loss([vectors.shape[1]], config, default=SUPERVISED_RANK_LOSS).to(
            vectors.device
        ),
        sized_rank_loss=ranking_loss(sizes, config, default=SUPERVISED_RANK_LOSS).to(
            vectors.device
        ),
        sized_distill_loss=ListwiseDistillationLoss(sizes, config.distill_temperature).to(
            vectors.device
        ),
        query_order=EpochOrder(
            len(objective.queries),
            min(config.query_batch_size, len(objective.queries)),
            vectors.device,
        )
        if objective is not None
        else None,
        queries=queries,
    )
    return step, steps


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


def _check_stages(smec: dict[str, Any], dimension: int, config_path: Path) -> None:
    stages = smec.get("stages")
    if not isinstance(stages, list) or not all(
        isinstance(stage, dict)
        and isinstance(stage.get("sizes"), list)
        and stage["sizes"]
        and all(is_int(size) and size >= 1 and size < dimension for size in stage["sizes"])
        for stage in stages
    ):
        raise InputError(
            f"{config_path}: 'smec.stages' must list stages whose 'sizes' are whole "
            f"numbers in 1..{dimension - 1}"
        )


class SMEC(Method):
    """``--method smec``: staged training to ever smaller sizes; ``--resume`` continues an
    SMEC adaptor to a smaller ``--to-dim``."""

    name = METHOD
    flags: ClassVar[dict[str, tuple[str, Any]]] = {
        "to_dim": ("--to-dim", None),
        "resume": ("--resume", None),
        "sequential": ("--sequential", SMECOptions.sequential),
        "ads": ("--ads", SMECOptions.ads),
        "xbm": ("--no-xbm", True),
        "memory_size": ("--memory-size", SMECOptions.memory_size),
    }
    one_learning_rate = True  # every stage starts at the identity: docs/smec.md

    def cli_options(self, values: dict[str, Any]) -> SMECOptions:
        if values["memory_size"] < 1:
            raise InputError("--memory-size must be positive")
        if values["to_dim"] is not None and values["to_dim"] < 1:
            raise InputError("--to-dim must be positive")
        keys = ("sequential", "ads", "xbm", "memory_size", "to_dim")
        return SMECOptions(**{key: values[key] for key in keys})

    def check_options(self, options: Any) -> SMECOptions:
        options = options or SMECOptions()
        options.validate()
        return options

    def check_config(self, config: dict[str, Any], config_path: Path) -> None:
        smec = config.get("smec")
        if not isinstance(smec, dict):
            raise InputError(f"{config_path}: 'smec' must be an object (the SMEC stages)")
        _check_stages(smec, config["dimension"], config_path)
        check_architecture(smec.get("architecture"), "'smec.architecture'", config_path)

    def build_module(self, config: dict[str, Any]) -> SMECModule:
        smec = config["smec"]
        return SMECModule(int(config["dimension"]), smec["architecture"], smec["stages"])

    def default_train_dims(self, dimension: int) -> list[int]:
        """The stages' default sizes (:func:`stage_plan`): powers of two from min(32, D / 2)
        below D (384: 256, 128, 64, 32), and D."""
        smallest = min(32, max(1, dimension // 2))
        return [*(2**p for p in range(32) if smallest <= 2**p < dimension), dimension]

    def weights_dimension(self, state: dict[str, torch.Tensor]) -> int | None:
        permutation = state.get("permutation")
        return None if permutation is None or permutation.dim() < 1 else int(permutation.shape[0])

    def fit(
        self,
        data: TrainingData,
        config: TrainConfig,
        options: SMECOptions,
        progress: EpochProgress,
        resume: Path | None = None,
    ) -> Fitted:
        corpus_ids, corpus, query_ids, queries = data.read()
        module, earlier = None, {}
        if resume is not None:
            adaptor = load_for_resume(resume, data.dimension)
            adaptor.check_vectors_metadata(data.metadata, "the store's corpus vectors")
            module, earlier = adaptor.module, adaptor.config
        start = module.smallest_size if module is not None else data.dimension
        stages = len(stage_plan(start, data.dimension, config, options))
        if data.supervised:  # one fit per candidate L_distill weight (at most)
            stages *= max(1, len(distill_choices(config)))
        progress.plan([config.supervised_epochs if data.supervised else config.epochs] * stages)
        if data.supervised:
            result = train_smec(
                corpus,
                config,
                options,
                corpus_ids=corpus_ids,
                queries=queries,
                query_ids=query_ids,
                qrels=data.qrels,
                dev_qrels=data.dev_qrels,
                module=module,
                on_epoch=progress,
            )
        else:
            validation = data.validation()
            result = train_smec(
                corpus,
                config,
                options,
                validation_data=validation,
                module=module,
                on_epoch=progress,
            )
        description = result.module.describe()
        record = {
            "architecture": {"type": "smec", **description["architecture"]},
            "mode": data.mode,
            "train_dims": config.train_dims,
            "training_rows": len(corpus_ids),
            "training_data_sha256": data.sha256(),
            "topk_mining_seconds": round(result.topk_mining_seconds, 3),
            "smec": {
                **description,
                "options": asdict(options),
                # supervised: the L_distill weight trained with
                "distill_weight": trained_distill_weight(result, config)
                if data.supervised
                else None,
                # supervised: the ranking loss trained with
                "rank_loss": (config.rank_loss or SUPERVISED_RANK_LOSS)
                if data.supervised
                else None,
                "resumed_from": str(Path(resume).resolve()) if resume is not None else None,
            },
        }
        history = list(earlier.get("validation_curve") or []) + result.history
        return Fitted(result.module, record, history, result.best)
