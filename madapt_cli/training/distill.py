"""Unsupervised listwise distillation (``--objective distill``): each trained prefix size
learns the full-size ranking of its anchors' candidate documents (:class:`~madapt_cli.losses.
ListwiseDistillationLoss`). The Matryoshka-Adaptor trains with it in unsupervised mode and,
with ``--stage1-objective distill``, in its supervised stage 1."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from madapt_cli.errors import InputError
from madapt_cli.training.anchors import ExtraAnchorTerm, extra_anchor_term, synthetic_anchors
from madapt_cli.training.config import EpochCallback, TrainConfig, TrainResult, seed_everything
from madapt_cli.training.loop import EpochOrder, Stage, fit_loop
from madapt_cli.training.modules import ResidualMLP, new_adaptor_module
from madapt_cli.training.objectives import DistillationObjective
from madapt_cli.training.quantization import add_quantization_term
from madapt_cli.training.student_negatives import StudentNegativesObjective
from madapt_cli.training.validation import RankingProxy, build_validation, selection_dims
from madapt_cli.util.device import device_generator, resolve_device
from madapt_cli.util.dims import check_train_dims, default_train_dims


def distill_train_dims(dimension: int, start_from: int | None = None) -> list[int]:
    """``--objective distill``'s default sizes: powers of two from 32, plus the full size
    (16 is left out: training it too costs 0.005-0.01 nDCG@10 at 64 and 128 on SciFact);
    only those below ``start_from`` when given: from there up the adaptor gives its start,
    so training those sizes would only cost time (their output columns are then never
    computed: ``Stage.width``)."""
    dims = [d for d in default_train_dims(dimension) if d >= 32] or default_train_dims(dimension)
    below = [d for d in dims if start_from is None or d < start_from]
    return below or dims


def train_distill(
    corpus: np.ndarray,
    anchors: np.ndarray | None,
    config: TrainConfig,
    validation_data: dict[str, Any] | None = None,
    on_epoch: EpochCallback | None = None,
    monitor_data: dict[str, Any] | None = None,
    extra_anchors: np.ndarray | None = None,
) -> TrainResult:
    """Unsupervised listwise distillation (``--objective distill``): each trained prefix
    learns the full-size ranking of the top ``config.distill_topk`` corpus rows (plus random
    ones) of each anchor. ``anchors``: unlabelled query vectors; None: corpus rows (at most
    ``config.distill_max_anchors``, drawn with the seed).

    Unlabelled queries all train for ``config.distill_epochs`` epochs by default
    (``config.distill_held_out`` "none"). With "choose", and always for corpus rows,
    ``config.proxy_fraction`` of the anchors are held out (not trained on) for the label-free
    proxy (:class:`RankingProxy`), which chooses the checkpoint, the untrained start (epoch 0)
    included, with early stopping after ``config.patience`` epochs without gain; "refit" then
    trains again from the same start on every query for the chosen epoch count. The proxy's
    choice: the lowest held-out L_distill averaged over the sizes below the full one
    (``config.proxy`` "kl"), or the highest overlap@10 ("overlap"). With corpus rows as
    anchors a checkpoint must also reach the start's overlap@10 at every size, else the start
    is kept. With ``validation_data`` (judged queries, ``--qrels``) their nDCG@10 chooses
    instead, as for ``--objective paper``. ``monitor_data`` (bench only): judged queries
    whose nDCG@10 is recorded at each epoch without steering anything. ``extra_anchors``
    (e.g. the documents' titles): more unlabelled anchors, never held out, with their own
    L_distill term (:func:`extra_anchor_term`) added to each step's loss."""
    seed_everything(config.seed)
    device = resolve_device(config.device)
    dimension = corpus.shape[1]
    default_dims = distill_train_dims(dimension, start_from_dim(config, dimension))
    dims = check_train_dims(config.train_dims or default_dims, dimension)
    vectors = F.normalize(torch.tensor(np.asarray(corpus, np.float32)).to(device), dim=-1)
    module = new_adaptor_module(vectors, config)
    anchor_vectors, rows, proxy_index, train_index = _split_anchors(
        vectors, anchors, config, judged=bool(validation_data)
    )
    started = time.perf_counter()
    objective = _training_objective(vectors, anchor_vectors, rows, train_index, dims, config)
    mined = time.perf_counter() - started
    validation = build_validation(vectors, validation_data, dims, config, device)
    if validation is None and len(proxy_index) > 0:
        monitor = build_validation(vectors, monitor_data, dims, config, device)
        validation = _ranking_proxy(
            vectors, anchor_vectors, rows, proxy_index, dims, config, monitor
        )
    extra = extra_anchor_term(vectors, extra_anchors, dims, config)
    width = max([*dims, *(extra.objective.loss.dims if extra else [])])
    run = _DistillRun(vectors, config, extra, on_epoch, width)
    history, best = run(module, objective, validation, "distill", config.distill_epochs)
    refit = config.distill_held_out == "refit" and rows is None and len(proxy_index) > 0
    if refit and best and best["epoch"]:
        # the proxy chose the epoch count; the held-out queries are worth training on too
        seed_everything(config.seed)
        module = new_adaptor_module(vectors, config)
        everything = np.arange(len(anchor_vectors))
        started = time.perf_counter()
        objective = _training_objective(vectors, anchor_vectors, rows, everything, dims, config)
        mined += time.perf_counter() - started
        again, _ = run(module, objective, None, "distill-refit", int(best["epoch"]))
        history, best = history + again, {**best, "refit_epochs": int(best["epoch"])}
    return TrainResult(module.cpu().eval(), history, best, mined)


def _training_objective(
    vectors: torch.Tensor,
    anchor_vectors: torch.Tensor,
    rows: np.ndarray | None,
    index: np.ndarray,
    dims: list[int],
    config: TrainConfig,
) -> DistillationObjective:
    """L_distill over the anchors ``index`` (with their mixups when configured, queries
    only), student negatives and the quantisation term as configured."""
    device = vectors.device
    train_rows = None if rows is None else torch.from_numpy(rows[index]).to(device)
    train_anchors = anchor_vectors[torch.from_numpy(index).to(device)]
    if rows is None and config.distill_synthetic_anchors > 0:  # queries only, never rows
        extra = synthetic_anchors(train_anchors, config.distill_synthetic_anchors, config.seed)
        train_anchors = torch.cat([train_anchors, extra])
    objective = distillation_objective(
        vectors,
        train_anchors,
        dims,
        config,
        distill_size_weights(config, dims),
        train_rows,
        mine=True,
    )
    add_quantization_term(objective, config.quantization_aware)
    return objective


class _DistillRun:
    """One :func:`fit_loop` of L_distill (and the extra anchors' term) over an objective's
    anchors: ``(module, objective, validation, stage name, epochs) -> (history, best)``."""

    def __init__(
        self,
        vectors: torch.Tensor,
        config: TrainConfig,
        extra: ExtraAnchorTerm | None,
        on_epoch: EpochCallback | None,
        width: int | None = None,
    ) -> None:
        self.vectors, self.config = vectors, config
        self.extra, self.on_epoch = extra, on_epoch
        self.width = width  # the largest size any term reads (Stage.width)

    def __call__(
        self,
        module: ResidualMLP,
        objective: DistillationObjective,
        validation: Any,
        name: str,
        epochs: int,
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        config, device, extra = self.config, self.vectors.device, self.extra
        count = len(objective.anchors)
        batch_size = min(config.distill_batch_size, count)
        steps = math.ceil(count / batch_size)
        generator = device_generator(device, config.seed)
        order = EpochOrder(count, batch_size, device)
        taken = [0]

        def step(gen: torch.Generator) -> torch.Tensor:
            if taken[0] % steps == 0 and isinstance(objective, StudentNegativesObjective):
                objective.refresh(module)  # each epoch: the student's current mistakes
            taken[0] += 1
            loss = objective(module, order.next(gen), gen)
            return loss if extra is None else loss + extra(module, gen)

        stage = Stage(name, epochs, steps, config.distill_lr, bf16_on_cpu=True, width=self.width)
        return fit_loop(module, step, stage, config, validation, self.on_epoch, generator)


def start_from_dim(config: TrainConfig, dimension: int) -> int | None:
    """config.json's ``start_from_dim`` of an unsupervised distill fit: the smallest power of
    two of at least ``config.distill_start_from`` x the full size, at most the full size
    (None without that setting). Fixed by the dimension alone, so that the trained sizes
    (``--train-dims``) can be those below it."""
    if config.distill_start_from is None:
        return None
    size = 1
    while size < config.distill_start_from * dimension:
        size *= 2
    return min(size, dimension)


def distill_size_weights(config: TrainConfig, dims: list[int]) -> list[float]:
    """L_distill's weight of each trained size: ``config.distill_size_weights`` (one per
    size) when given, else ``config.dim_weights``."""
    weights = config.distill_size_weights
    if weights is None:
        return config.dim_weights(dims)
    if len(weights) != len(dims):
        raise InputError(
            f"TrainConfig.distill_size_weights has {len(weights)} weights for {len(dims)} "
            f"trained sizes ({', '.join(map(str, dims))})"
        )
    return [float(w) for w in weights]


def distillation_objective(
    vectors: torch.Tensor,
    anchors: torch.Tensor,
    dims: list[int],
    config: TrainConfig,
    dim_weights: list[float] | None,
    anchor_rows: torch.Tensor | None = None,
    mine: bool = False,
) -> DistillationObjective:
    """A :class:`DistillationObjective`; with ``mine`` and
    ``config.distill_student_negatives``, a :class:`StudentNegativesObjective` over the two
    smallest trained sizes."""
    if mine and config.distill_student_negatives > 0:
        objective: DistillationObjective = StudentNegativesObjective(
            vectors,
            anchors,
            dims,
            config,
            dim_weights,
            anchor_rows,
            mined_dims=sorted(dims)[:2],
            count=config.distill_student_negatives,
        )
    else:
        objective = DistillationObjective(vectors, anchors, dims, config, dim_weights, anchor_rows)
    return objective


def _split_anchors(
    vectors: torch.Tensor, anchors: np.ndarray | None, config: TrainConfig, judged: bool
) -> tuple[torch.Tensor, np.ndarray | None, np.ndarray, np.ndarray]:
    """The anchors (unlabelled queries, or corpus rows drawn with the seed when None), their
    corpus rows (None for queries), and which anchors the proxy holds out and which train
    (none held out when ``judged`` queries choose the checkpoint)."""
    device = vectors.device
    rng = np.random.default_rng(config.seed)
    if anchors is None:
        count = min(len(vectors), config.distill_max_anchors)
        rows = np.sort(rng.permutation(len(vectors))[:count])
        anchor_vectors = vectors[torch.from_numpy(rows).to(device)]
    else:
        rows = None
        anchor_vectors = F.normalize(
            torch.tensor(np.asarray(anchors, np.float32)).to(device), dim=-1
        )
    if len(anchor_vectors) == 0:
        raise InputError("no anchors to learn from: the queries table has no selected query")
    order_all = rng.permutation(len(anchor_vectors))
    held = round(len(anchor_vectors) * config.proxy_fraction) if len(anchor_vectors) >= 10 else 0
    if judged or (anchors is not None and config.distill_held_out == "none"):
        held = 0
    return anchor_vectors, rows, np.sort(order_all[:held]), np.sort(order_all[held:])


def _ranking_proxy(
    vectors: torch.Tensor,
    anchor_vectors: torch.Tensor,
    rows: np.ndarray | None,
    proxy_index: np.ndarray,
    dims: list[int],
    config: TrainConfig,
    monitor: Any,
) -> RankingProxy:
    """The label-free proxy over the held-out anchors (:class:`RankingProxy`)."""
    device = vectors.device
    dimension = vectors.shape[1]
    held_out = anchor_vectors[torch.from_numpy(proxy_index).to(device)]
    held_rows = None if rows is None else rows[proxy_index]
    selection = selection_dims(config, dims, dimension)
    return RankingProxy(
        vectors,
        held_out,
        sorted(set(dims) | set(selection)),
        selection,
        held_rows,
        monitor,
        held_out_kl=distillation_objective(
            vectors,
            held_out,
            dims,
            config,
            None,
            None if held_rows is None else torch.from_numpy(held_rows).to(device),
        ).held_out_kl,
        select_by_kl=config.proxy == "kl",
        # corpus rows as anchors did not reliably beat the start (docs/benchmarks.md):
        # a checkpoint must match the start's overlap@10 at every size to replace it
        no_size_below_start=rows is not None,
    )
