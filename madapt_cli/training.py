"""Training Matryoshka adaptors: unsupervised (corpus only) and supervised (train qrels).

Unsupervised:  L_topk + alpha L_pair + beta L_rec            (on corpus vectors)
Supervised:    L_rank + alpha L_topk + beta L_pair + gamma L_rec
(losses in :mod:`madapt_cli.losses`). Supervised training runs in two stages by default:
stage 1 is the unsupervised fit, stage 2 starts from it. Both keep the checkpoint with the
best validation nDCG@10 (mean over the validation sizes) and stop after ``patience`` epochs
without improvement. The data stay on the training device; every step costs O(batch) memory.
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from madapt_cli.adaptor import ResidualMLP, principal_rotation
from madapt_cli.errors import InputError
from madapt_cli.evaluation import ndcg_at_10, resolve_device, search_topk
from madapt_cli.files import check_output, staged_output
from madapt_cli.losses import (
    PairwiseSimilarityLoss,
    RankingLoss,
    ReconstructionLoss,
    TopKSimilarityLoss,
)

Qrels = Mapping[str, Mapping[str, int]]
EpochCallback = Callable[[dict[str, Any]], None]


def default_train_dims(dimension: int) -> list[int]:
    """Powers of two from 16 below D, plus D."""
    dims = [2**p for p in range(4, 32) if 2**p < dimension]
    return [*dims, dimension]


def check_train_dims(dims: Sequence[int], dimension: int) -> list[int]:
    dims = sorted(set(int(d) for d in dims))
    if not dims:
        raise InputError("--train-dims is empty")
    bad = [d for d in dims if not 1 <= d <= dimension]
    if bad:
        raise InputError(
            f"--train-dims {','.join(map(str, bad))} outside 1..{dimension} "
            "(the vectors' dimension)"
        )
    return dims


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
        from madapt_cli.adaptor import ACTIVATIONS

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


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite real number (int or float, not bool)."""
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


class TrainingDiverged(InputError):
    """The loss (or the weights) became NaN or infinite: training stops, nothing is written."""


@dataclass
class TrainResult:
    module: ResidualMLP
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    topk_mining_seconds: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def training_fingerprint(*parts: Any) -> str:
    """sha256 over ids (strings), vectors (float32 bytes) and qrels, in order."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(np.ascontiguousarray(part, dtype=np.float32).tobytes())
        elif isinstance(part, Mapping):
            for query_id in sorted(part):
                for doc_id, grade in sorted(part[query_id].items()):
                    digest.update(f"{query_id}\t{doc_id}\t{grade}\n".encode())
        else:
            for item in part:
                digest.update(str(item).encode("utf-8") + b"\0")
        digest.update(b"\1")
    return digest.hexdigest()


def mine_topk(
    queries: torch.Tensor, corpus: torch.Tensor, k: int, exclude_self: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k cosine neighbours over the whole corpus, chunked (never N x N in memory)."""
    exclude = None
    if exclude_self:
        rows = np.arange(queries.shape[0], dtype=np.int64)
        exclude = np.stack([rows, rows], axis=1)
    scores, indices = search_topk(queries, corpus, k, device=corpus.device, exclude=exclude)
    device = corpus.device
    return torch.from_numpy(scores).to(device), torch.from_numpy(indices).to(device)


class Validation:
    """nDCG@10 of held-out queries against the adapted corpus, at each size."""

    def __init__(
        self,
        corpus: torch.Tensor,
        corpus_ids: Sequence[str],
        queries: torch.Tensor,
        query_ids: Sequence[str],
        qrels: Qrels,
        dims: Sequence[int],
        selection_dims: Sequence[int],
        full_size_tolerance: float = 0.005,
    ) -> None:
        self.corpus, self.corpus_ids = corpus, list(corpus_ids)
        self.queries, self.query_ids = queries, list(query_ids)
        self.qrels, self.dims, self.selection_dims = qrels, list(dims), list(selection_dims)
        self.full_size_tolerance = full_size_tolerance
        self.original_full_size: float | None = None

    def keeps_full_size(self, record: dict[str, Any]) -> bool:
        """A checkpoint is eligible only if its full-size nDCG@10 stays within
        ``full_size_tolerance`` of the original vectors' (f = identity)."""
        full = self.corpus.shape[1]
        if str(full) not in record["ndcg@10"]:
            return True
        if self.original_full_size is None:
            self.original_full_size = ndcg_at_10(
                self.queries,
                self.query_ids,
                self.corpus,
                self.corpus_ids,
                self.qrels,
                full,
                device=self.corpus.device,
            )
        return record["ndcg@10"][str(full)] >= self.original_full_size - self.full_size_tolerance

    @torch.no_grad()
    def __call__(self, module: torch.nn.Module) -> dict[str, Any]:
        was_training = module.training
        module.eval()
        corpus = torch.cat([module(c) for c in self.corpus.split(65_536)])
        queries = torch.cat([module(q) for q in self.queries.split(65_536)])
        module.train(was_training)
        device = self.corpus.device
        scores = {
            str(d): ndcg_at_10(
                queries, self.query_ids, corpus, self.corpus_ids, self.qrels, d, device=device
            )
            for d in self.dims
        }
        selected = float(np.mean([scores[str(d)] for d in self.selection_dims]))
        return {"ndcg@10": scores, "score": selected}


# --- one step of each objective ---------------------------------------------------------------
class UnsupervisedObjective:
    """L_topk + w_pair L_pair + w_rec L_rec on a batch of corpus rows and their neighbours."""

    def __init__(
        self,
        corpus: torch.Tensor,
        dims: Sequence[int],
        topk: int,
        weights: dict,
        dim_weights: Sequence[float] | None = None,
    ) -> None:
        self.corpus = corpus
        self.neighbour_scores, self.neighbours = mine_topk(corpus, corpus, topk, exclude_self=True)
        self.topk_loss = TopKSimilarityLoss(dims, dim_weights).to(corpus.device)
        self.pair_loss = PairwiseSimilarityLoss(dims, dim_weights).to(corpus.device)
        self.rec_loss, self.weights = ReconstructionLoss(), weights

    def __call__(self, module: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return self.terms(module, batch, self.weights)

    def terms(
        self, module: torch.nn.Module, batch: torch.Tensor, weights: dict[str, float]
    ) -> torch.Tensor:
        """weights["topk"] L_topk + weights["pair"] L_pair + weights["rec"] L_rec on ``batch``
        (also the supervised objective's regularisers, with its own weights)."""
        neighbours = self.neighbours[batch]  # (B, k); -1 when the corpus has fewer than k + 1
        valid = neighbours >= 0
        rows, inverse = torch.unique(
            torch.cat([batch, neighbours.clamp_min(0).flatten()]), return_inverse=True
        )
        original = self.corpus[rows]
        adapted = module(original)
        anchors = adapted[inverse[: len(batch)]]
        adapted_neighbours = adapted[inverse[len(batch) :]].view(*neighbours.shape, -1)
        target = torch.where(valid, self.neighbour_scores[batch], 1.0)  # a row vs itself: 1
        adapted_neighbours = torch.where(
            valid.unsqueeze(-1), adapted_neighbours, anchors.unsqueeze(1)
        )
        loss = weights["topk"] * self.topk_loss(anchors, adapted_neighbours, target)
        loss = loss + weights["pair"] * self.pair_loss(self.corpus[batch], anchors)
        return loss + weights["rec"] * self.rec_loss(module.start(original), adapted)


class SupervisedObjective:
    """L_rank over labelled positives, hard and in-batch negatives, plus the unsupervised
    terms on a random corpus batch as regularisers."""

    def __init__(
        self,
        corpus: torch.Tensor,
        queries: torch.Tensor,
        judgments: list[dict[int, int]],  # per training query: corpus row -> grade
        dims: Sequence[int],
        config: TrainConfig,
        weights: dict,
        generator: torch.Generator,
    ) -> None:
        device = corpus.device
        self.corpus, self.queries, self.generator = corpus, queries, generator
        self.config, self.weights = config, weights
        width = max(1, max(sum(1 for g in j.values() if g > 0) for j in judgments))
        # positives padded with row N (sorted last) and grade 0, sorted by row per query
        rows = torch.full((len(judgments), width), corpus.shape[0], dtype=torch.long)
        grades = torch.zeros((len(judgments), width))
        for i, judged in enumerate(judgments):
            positive = sorted((r, g) for r, g in judged.items() if g > 0)
            if positive:
                rows[i, : len(positive)] = torch.tensor([r for r, _ in positive])
                grades[i, : len(positive)] = torch.tensor([float(g) for _, g in positive])
        self.positive_rows, self.positive_grades = rows.to(device), grades.to(device)
        depth = min(corpus.shape[0], config.hard_negatives + width)
        _, retrieved = mine_topk(queries, corpus, depth)
        relevant = self.grades_of(torch.arange(len(judgments), device=device), retrieved) > 0
        # first `hard_negatives` retrieved rows that are not positives (stable order)
        order = torch.argsort(relevant.float() * depth + torch.arange(depth, device=device), dim=1)
        self.hard_negatives = retrieved.gather(1, order)[:, : config.hard_negatives]
        dim_weights = config.dim_weights(dims)
        self.rank_loss = RankingLoss(dims, config.temperature, dim_weights).to(device)
        self.unsupervised = UnsupervisedObjective(
            corpus, dims, config.topk, {"topk": 1.0, "pair": 1.0, "rec": 1.0}, dim_weights
        )

    def grades_of(self, query_rows: torch.Tensor, corpus_rows: torch.Tensor) -> torch.Tensor:
        """Grade of each (query, corpus row): (Q,) x (Q, C) -> (Q, C); 0 when unjudged."""
        sorted_rows = self.positive_rows[query_rows]
        slot = torch.searchsorted(sorted_rows, corpus_rows.contiguous()).clamp_max(
            sorted_rows.shape[1] - 1
        )
        hit = sorted_rows.gather(1, slot) == corpus_rows
        return torch.where(hit, self.positive_grades[query_rows].gather(1, slot), 0.0)

    def sample_candidates(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to P random positives and the hard negatives of each query of ``batch``: the
        candidate corpus rows (C,) and their grades (Q, C)."""
        noise = torch.rand(
            self.positive_rows[batch].shape, generator=self.generator, device=batch.device
        )
        noise = noise.masked_fill(self.positive_grades[batch] <= 0, -1.0)
        count = min(self.config.positives_per_query, noise.shape[1])
        picked = self.positive_rows[batch].gather(1, noise.topk(count, dim=1).indices)
        candidates = torch.cat([picked.flatten(), self.hard_negatives[batch].flatten()])
        candidates = torch.unique(candidates[candidates < self.corpus.shape[0]])
        return candidates, self.grades_of(batch, candidates.expand(len(batch), -1))

    def __call__(
        self, module: torch.nn.Module, batch: torch.Tensor, corpus_batch: torch.Tensor
    ) -> torch.Tensor:
        candidates, relevance = self.sample_candidates(batch)
        queries = module(self.queries[batch])
        documents = module(self.corpus[candidates])
        loss = self.weights["rank"] * self.rank_loss(queries, documents, relevance)
        return loss + self.unsupervised.terms(module, corpus_batch, self.weights)


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


def split_training_queries(
    corpus_ids: Sequence[str],
    queries: np.ndarray,
    query_ids: Sequence[str],
    qrels: Qrels,
    dev_qrels: Qrels | None,
    config: TrainConfig,
) -> tuple[list[str], dict[str, Any] | None]:
    """Training query ids and validation data: the qrels queries with a vector and a
    positively judged corpus document; without ``dev_qrels``, ``validation_fraction`` of them
    are held out for early stopping (and not trained on)."""
    corpus_row = {doc_id: i for i, doc_id in enumerate(corpus_ids)}
    query_row = {query_id: i for i, query_id in enumerate(query_ids)}
    usable = sorted(
        q
        for q, judged in qrels.items()
        if q in query_row and any(g > 0 and d in corpus_row for d, g in judged.items())
    )
    if not usable:
        raise InputError(
            "no query of the train qrels has a positive judgement on a document of the corpus "
            "table and a vector in the queries table: do the ids match?"
        )
    if dev_qrels is None:
        shuffled = random.Random(config.seed).sample(usable, len(usable))
        held = max(1, round(len(usable) * config.validation_fraction)) if len(usable) > 4 else 0
        validation_ids, train_ids = sorted(shuffled[:held]), sorted(shuffled[held:])
        validation_qrels = {q: dict(qrels[q]) for q in validation_ids}
    else:
        train_ids = usable
        validation_qrels = {q: dict(j) for q, j in dev_qrels.items() if q in query_row}
        if not validation_qrels:
            raise InputError("no query of the dev qrels has a vector in the queries table")
    return train_ids, validation_set(corpus_ids, queries, query_ids, validation_qrels)


def validation_set(
    corpus_ids: Sequence[str], queries: np.ndarray, query_ids: Sequence[str], judged: Qrels
) -> dict[str, Any] | None:
    """The validation data of :class:`Validation`: the judged queries that have a vector
    (None when there are none)."""
    query_row = {query_id: i for i, query_id in enumerate(query_ids)}
    ids = sorted(q for q in judged if q in query_row)
    if not ids:
        return None
    return {
        "corpus_ids": list(corpus_ids),
        "query_ids": ids,
        "queries": queries[[query_row[q] for q in ids]],
        "qrels": {q: dict(judged[q]) for q in ids},
    }


# --- the loops ---------------------------------------------------------------------------------
def _fit_loop(
    module: ResidualMLP,
    step: Callable[[torch.Generator], torch.Tensor],
    steps_per_epoch: int,
    epochs: int,
    lr: float,
    config: TrainConfig,
    validation: Validation | None,
    stage: str,
    on_epoch: EpochCallback | None,
    generator: torch.Generator,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """AdamW over ``epochs``; keeps the best validated state (the last one without validation)."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=config.weight_decay)
    total_steps = max(1, steps_per_epoch * epochs)
    warmup = max(1, total_steps // 20)

    def schedule(step: int) -> float:  # linear warm-up, then cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_state = None
    if validation is not None:  # epoch 0: where training starts (the identity, or stage 1)
        best = {"stage": stage, "epoch": 0, "loss": None, **validation(module)}
        best_state = copy.deepcopy(module.state_dict())
        history.append(best)
        if on_epoch:
            on_epoch(best)
    stale = 0
    for epoch in range(1, epochs + 1):
        module.train()
        total = torch.zeros((), device=next(module.parameters()).device)
        for step_number in range(1, steps_per_epoch + 1):
            loss = step(generator)
            # the steps already synchronise (torch.unique), so this check costs little
            if not bool(torch.isfinite(loss.detach()).all()):
                raise _diverged(
                    stage, epoch, step_number, steps_per_epoch, lr, float(loss.detach())
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.detach()
        # a finite loss can still take a step to non-finite weights (an overflowing gradient)
        if not all(bool(torch.isfinite(p.detach()).all()) for p in module.parameters()):
            raise _diverged(stage, epoch, steps_per_epoch, steps_per_epoch, lr, None)
        record: dict[str, Any] = {
            "stage": stage,
            "epoch": epoch,
            "loss": float(total) / steps_per_epoch,
        }
        if validation is not None:
            record.update(validation(module))
        history.append(record)
        if on_epoch:
            on_epoch(record)
        if validation is None:
            continue
        if record["score"] > best["score"] + 1e-6 and validation.keeps_full_size(record):
            best, best_state, stale = record, copy.deepcopy(module.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    return history, best


def _diverged(
    stage: str, epoch: int, step: int, steps: int, lr: float, loss: float | None
) -> TrainingDiverged:
    what = f"the loss became {loss}" if loss is not None else "the weights became non-finite"
    return TrainingDiverged(
        f"training diverged: {what} in stage '{stage}', epoch {epoch}, step {step} of "
        f"{steps}; nothing was written. Likely causes: a learning rate too high for these "
        f"vectors (it was {lr:g}: try a smaller --lr) or extreme values in the input vectors"
    )


class EpochOrder:
    """Batches of ``batch`` indices into ``range(count)``: a fresh random permutation each
    epoch, walked in order (the last batch of an epoch may be short)."""

    def __init__(self, count: int, batch: int, device: torch.device) -> None:
        self.count, self.batch, self.device = count, batch, device
        self.permutation: torch.Tensor | None = None
        self.position = 0

    def next(self, generator: torch.Generator) -> torch.Tensor:
        if self.permutation is None or self.position >= self.count:
            self.permutation = torch.randperm(self.count, generator=generator, device=self.device)
            self.position = 0
        start, self.position = self.position, self.position + self.batch
        return self.permutation[start : start + self.batch]


def _device_generator(device: torch.device, seed: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


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


def _validation(
    vectors: torch.Tensor,
    data: dict[str, Any] | None,
    dims: list[int],
    config: TrainConfig,
    device: torch.device,
) -> Validation | None:
    if not data:
        return None
    dimension = vectors.shape[1]
    selection = config.validation_dims or [d for d in dims if d < dimension] or [dimension]
    queries = F.normalize(torch.tensor(np.asarray(data["queries"], np.float32)).to(device), dim=-1)
    report_dims = sorted(set(dims) | set(selection))
    return Validation(
        vectors,
        data["corpus_ids"],
        queries,
        data["query_ids"],
        data["qrels"],
        report_dims,
        selection,
    )


def config_record(config: TrainConfig) -> dict[str, Any]:
    return asdict(config)


# --- from a store to an artifact -----------------------------------------------------------------
def fit_store(
    store_path: str | Path,
    out: str | Path,
    *,
    method: str = "matryoshka",
    mode: str = "unsupervised",
    qrels_path: str | Path | None = None,
    dev_qrels_path: str | Path | None = None,
    config: TrainConfig | None = None,
    name: str | None = None,
    on_epoch: EpochCallback | None = None,
    smec: Any = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fit an adaptor on the ``corpus`` (and ``queries``) tables of a store and write the
    artifact directory ``out`` (atomically: a failed fit leaves no partial artifact).
    ``out`` is checked before anything is read: it may not be, hold or lie inside an input,
    and only an adaptor madapt wrote is replaced, with ``overwrite``.
    Returns the artifact's config. ``smec`` (:class:`madapt_cli.smec.SMECOptions`) and
    ``resume`` (an SMEC adaptor directory) only apply to ``method="smec"``."""
    from madapt_cli.adaptor import METHODS, Adaptor, fit_pca
    from madapt_cli.data import read_qrels
    from madapt_cli.stores import open_store

    config = config or TrainConfig()
    if method not in METHODS:
        raise InputError(f"unknown --method {method!r}: use {', '.join(METHODS)}")
    if mode not in ("unsupervised", "supervised"):
        raise InputError(f"unknown --mode {mode!r}: use unsupervised or supervised")
    out = Path(out)
    inputs = (store_path, qrels_path, dev_qrels_path, resume)  # OUT may not touch any of them
    check_output(out, "adaptor", overwrite=overwrite, inputs=inputs)
    store = open_store(store_path)
    store.require_table("corpus")
    metadata = store.metadata("corpus")
    dimension = store.schema("corpus").field("vector").type.list_size
    dims = check_train_dims(config.train_dims or default_train_dims(dimension), dimension)
    config.train_dims = dims
    if config.validation_dims:
        check_train_dims(config.validation_dims, dimension)
    config.validate(mode, method)  # every hyper-parameter, before any training work
    if method == "smec":
        from madapt_cli.smec import SMECOptions

        (smec or SMECOptions()).validate()
    if mode == "supervised" and method != "pca" and qrels_path is None:
        raise InputError("--mode supervised needs --qrels TRAIN.tsv (query-id, corpus-id, score)")
    qrels = read_qrels(qrels_path) if qrels_path is not None else None
    dev_qrels = read_qrels(dev_qrels_path) if dev_qrels_path is not None else None

    record: dict[str, Any] = {
        "name": name or out.resolve().name,
        "method": method,
        "dimension": dimension,
        "base_provider": metadata.get("provider"),
        "base_model": metadata.get("model"),
        "base_normalized": metadata.get("normalized"),
        "source_store": str(Path(store_path).resolve()),
    }
    if method == "pca":
        digest_ids: list[str] = []
        batches = []
        for ids, vectors in store.iter_vectors("corpus"):
            batches.append(vectors)
            digest_ids.extend(ids)
        if not digest_ids:
            raise InputError(f"table 'corpus' of {store_path} is empty")
        module = fit_pca(batches, dimension)
        record.update(
            architecture={"type": "pca", "centered": True},
            mode="unsupervised",
            train_dims=None,
            training_rows=len(digest_ids),
            training_data_sha256=training_fingerprint(digest_ids, *batches),
        )
        history, best = [], None
    else:
        corpus_ids, corpus = store.read_vectors("corpus")
        if len(corpus_ids) < 2:
            raise InputError(f"table 'corpus' of {store_path} has {len(corpus_ids)} rows; need 2+")
        query_ids: list[str] = []
        queries = np.zeros((0, dimension), np.float32)
        if qrels is not None or dev_qrels is not None:
            store.require_table("queries")
            query_metadata = store.metadata("queries")
            for key in ("model", "dimension"):
                if query_metadata.get(key) != metadata.get(key):
                    raise InputError(
                        f"tables 'queries' and 'corpus' differ in {key}: "
                        f"{query_metadata.get(key)!r} vs {metadata.get(key)!r}"
                    )
            query_ids, queries = store.read_vectors("queries")
        if method == "smec":  # SMEC's staged trainer: madapt_cli.smec (issue 7)
            from madapt_cli.smec import train_for_store

            result, smec_record = train_for_store(
                corpus,
                corpus_ids,
                queries,
                query_ids,
                qrels,
                dev_qrels,
                mode,
                config,
                smec,
                resume,
                metadata,
                on_epoch,
            )
            labelled = (query_ids, queries, qrels) if mode == "supervised" else ()
            fingerprint = training_fingerprint(corpus_ids, corpus, *labelled)
        elif mode == "supervised":
            result = train_supervised(
                corpus,
                corpus_ids,
                queries,
                query_ids,
                qrels,
                config,
                dev_qrels,
                on_epoch,
                two_stage=config.epochs > 0,
            )
            fingerprint = training_fingerprint(corpus_ids, corpus, query_ids, queries, qrels)
        else:
            validation_data = None
            judged = dev_qrels if dev_qrels is not None else qrels
            if judged is not None:
                validation_data = validation_set(corpus_ids, queries, query_ids, judged)
                if validation_data is None:
                    raise InputError("no query of the qrels has a vector in the 'queries' table")
            result = train_unsupervised(corpus, config, validation_data, on_epoch)
            fingerprint = training_fingerprint(corpus_ids, corpus)
        module, history, best = result.module, result.history, result.best
        record.update(
            architecture={
                "type": "residual_mlp",
                "hidden": config.hidden or 2 * dimension,
                "depth": config.depth,
                "activation": config.activation,
                "rotation": config.rotation,
            },
            mode=mode,
            train_dims=dims,
            training_rows=len(corpus_ids),
            training_data_sha256=fingerprint,
            topk_mining_seconds=round(result.topk_mining_seconds, 3),
        )
        if method == "smec":
            record.update(smec_record)
    from madapt_cli import __version__

    record.update(
        seed=config.seed,
        hyperparameters=config_record(config),
        madapt_version=__version__,
        validation_curve=history,
        best_validation=best,
    )
    adaptor = Adaptor(module.cpu(), record)
    with staged_output(out, "adaptor", overwrite=overwrite, inputs=inputs) as staging:
        adaptor.save(staging)
    return adaptor.config
