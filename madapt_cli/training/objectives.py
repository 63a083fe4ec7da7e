"""One training step of each objective: the losses of madapt_cli.losses over batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from madapt_cli.losses import (
    GradedSoftmaxLoss,
    ListwiseDistillationLoss,
    PairwiseSimilarityLoss,
    RankingLoss,
    ReconstructionLoss,
    TopKSimilarityLoss,
)
from madapt_cli.retrieval.search import mine_topk, search_topk
from madapt_cli.training.config import TrainConfig


def adapt_rows(
    module: torch.nn.Module, corpus: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(start(e), f(e)) of the corpus rows ``rows``; a module with ``start_of`` (the
    residual MLP) rotates the corpus once rather than at every step."""
    if hasattr(module, "start_of"):
        started = module.start_of(corpus, rows)
        return started, module.from_start(started)
    original = corpus[rows]
    return module.start(original), module(original)


@torch.no_grad()
def adapt_all(module: torch.nn.Module, vectors: torch.Tensor) -> torch.Tensor:
    """f of every row of ``vectors`` (a corpus: a module with ``adapted_corpus`` keeps it
    until its weights change), in chunks that bound the memory of f's hidden layer."""
    if hasattr(module, "adapted_corpus"):
        return module.adapted_corpus(vectors)
    return torch.cat([module(chunk) for chunk in vectors.split(65_536)])


def ranking_loss(
    dims: Sequence[int],
    config: TrainConfig,
    dim_weights: Sequence[float] | None = None,
    default: str = "pairwise",
) -> RankingLoss | GradedSoftmaxLoss:
    """The supervised ranking loss ``config.rank_loss`` names (None: ``default``, the
    method's), at ``config.temperature``."""
    if (config.rank_loss or default) == "softmax":
        return GradedSoftmaxLoss(dims, config.temperature, dim_weights)
    return RankingLoss(dims, config.temperature, dim_weights)


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
        started, adapted = adapt_rows(module, self.corpus, rows)
        anchor_index = inverse[: len(batch)]
        anchors = adapted[anchor_index]
        # a missing neighbour is the anchor itself, with target 1
        neighbour_index = torch.where(
            valid, inverse[len(batch) :].view(neighbours.shape), anchor_index.unsqueeze(1)
        )
        target = torch.where(valid, self.neighbour_scores[batch], 1.0)
        loss = weights["topk"] * self.topk_loss.gathered(anchors, adapted, neighbour_index, target)
        loss = loss + weights["pair"] * self.pair_loss(self.corpus[batch], anchors)
        return loss + weights["rec"] * self.rec_loss(started, adapted)


class SupervisedObjective:
    """L_rank over labelled positives, hard and in-batch negatives, plus the unsupervised
    terms on a random corpus batch as regularisers (``regularise``; a method with its own
    regulariser, SMEC's S-XBM, turns them off and skips their corpus top-k mining)."""

    def __init__(
        self,
        corpus: torch.Tensor,
        queries: torch.Tensor,
        judgments: list[dict[int, int]],  # per training query: corpus row -> grade
        dims: Sequence[int],
        config: TrainConfig,
        weights: dict,
        generator: torch.Generator,
        regularise: bool = True,
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
        self.rank_loss = ranking_loss(dims, config, dim_weights).to(device)
        self.unsupervised = (
            UnsupervisedObjective(
                corpus, dims, config.topk, {"topk": 1.0, "pair": 1.0, "rec": 1.0}, dim_weights
            )
            if regularise
            else None
        )
        # L_distill over the training queries' full-size neighbours (config.distill_weight)
        self.distill = (
            DistillationObjective(corpus, queries, dims, config, dim_weights)
            if config.distill_weight > 0
            else None
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
        documents = adapt_rows(module, self.corpus, candidates)[1]
        loss = self.weights["rank"] * self.rank_loss(queries, documents, relevance)
        if self.distill is not None:
            loss = loss + self.config.distill_weight * self.distill(module, batch, self.generator)
        if self.unsupervised is None:
            return loss
        return loss + self.unsupervised.terms(module, corpus_batch, self.weights)


def self_exclusions(anchor_rows: torch.Tensor | None) -> np.ndarray | None:
    """(anchor, corpus row) pairs that a search must skip: each anchor that is a corpus row
    (corpus-only anchors) is not its own neighbour. None when anchors are queries."""
    if anchor_rows is None:
        return None
    rows = anchor_rows.cpu().numpy().astype(np.int64)
    return np.stack([np.arange(len(rows), dtype=np.int64), rows], axis=1)


class DistillationObjective:
    """L_distill (:class:`~madapt_cli.losses.ListwiseDistillationLoss`) of a batch of anchors.

    Each anchor's candidates are its ``config.distill_topk`` nearest corpus rows in the
    original full-size space (mined exactly, once) plus ``config.distill_random`` random
    corpus rows drawn per step (shared by the batch). ``anchors`` are unit vectors:
    unlabelled queries, or corpus rows (``anchor_rows``: their rows, never their own
    candidates).
    """

    def __init__(
        self,
        corpus: torch.Tensor,
        anchors: torch.Tensor,
        dims: Sequence[int],
        config: TrainConfig,
        dim_weights: Sequence[float] | None = None,
        anchor_rows: torch.Tensor | None = None,
    ) -> None:
        self.corpus, self.anchors, self.anchor_rows = corpus, anchors, anchor_rows
        depth = min(config.distill_topk, corpus.shape[0])
        scores, index = search_topk(
            anchors, corpus, depth, device=corpus.device, exclude=self_exclusions(anchor_rows)
        )
        self.teacher = torch.from_numpy(scores).to(corpus.device)
        self.neighbours = torch.from_numpy(index).to(corpus.device)
        self.random = config.distill_random
        self.rec_weight, self.rec_loss = config.distill_rec_weight, ReconstructionLoss()
        self.loss = ListwiseDistillationLoss(dims, config.distill_temperature, dim_weights).to(
            corpus.device
        )

    def candidates(
        self, batch: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidate corpus rows (B, C), their full-size cosines to the anchors (B, C) and
        which are real (B, C): padding, duplicates and the anchor itself are not."""
        rows = self.neighbours[batch]
        valid = rows >= 0
        teacher = torch.where(valid, self.teacher[batch], 0.0)
        if self.random > 0:
            count = self.corpus.shape[0]
            extra = torch.randint(count, (self.random,), generator=generator, device=batch.device)
            extra_rows = extra.expand(len(batch), -1)
            extra_valid = ~(extra_rows.unsqueeze(-1) == rows.unsqueeze(1)).any(-1)
            if self.anchor_rows is not None:
                extra_valid &= extra_rows != self.anchor_rows[batch].unsqueeze(1)
            extra_teacher = self.anchors[batch] @ self.corpus[extra].T
            rows = torch.cat([rows, extra_rows], dim=1)
            valid = torch.cat([valid, extra_valid], dim=1)
            teacher = torch.cat([teacher, extra_teacher], dim=1)
        return rows, teacher, valid

    def __call__(
        self, module: torch.nn.Module, batch: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        rows, teacher, valid = self.candidates(batch, generator)
        unique, inverse = torch.unique(rows.clamp_min(0).flatten(), return_inverse=True)
        started, adapted = adapt_rows(module, self.corpus, unique)
        anchors = module(self.anchors[batch])
        if isinstance(self.loss, ListwiseDistillationLoss):
            loss = self.loss.gathered(anchors, adapted, inverse.view(rows.shape), teacher, valid)
        else:  # a wrapped loss (quantisation-aware training) takes the candidates themselves
            documents = adapted[inverse].view(*rows.shape, -1)
            loss = self.loss(anchors, documents, teacher, valid)
        if self.rec_weight > 0:
            loss = loss + self.rec_weight * self.rec_loss(started, adapted)
        return loss

    @torch.no_grad()
    def held_out_kl(
        self,
        module: torch.nn.Module,
        adapted: tuple[torch.Tensor, torch.Tensor] | None = None,
        seed: int = 0,
    ) -> dict[str, float]:
        """The label-free distillation proxy: L_distill per size on all of this objective's
        anchors (held out from training), with one fixed draw of random candidates.
        ``adapted``: f of the whole corpus and of the anchors, when the caller has them
        (the proxy's overlap@10 needs them too), so they are not computed twice."""
        generator = torch.Generator(device=self.corpus.device).manual_seed(seed)
        batch = torch.arange(len(self.anchors), device=self.corpus.device)
        rows, teacher, valid = self.candidates(batch, generator)
        if adapted is None:
            unique, inverse = torch.unique(rows.clamp_min(0).flatten(), return_inverse=True)
            documents = adapt_rows(module, self.corpus, unique)[1]
            anchors, index = module(self.anchors), inverse.view(rows.shape)
        else:
            (documents, anchors), index = adapted, rows.clamp_min(0)
        per_size = self.loss.per_size_gathered(anchors, documents, index, teacher, valid)
        return {str(d): float(v) for d, v in zip(self.loss.dims, per_size, strict=True)}
