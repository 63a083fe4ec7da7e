"""The Matryoshka-Adaptor losses (Yoon et al., EMNLP 2024), one class per loss.

Notation: ``e`` an original unit vector, ``f(e) = e + g(e)`` its adapted version, ``M`` the
prefix sizes trained at once and ``sim_m(a, b)`` the cosine of the first ``m`` coordinates.
Every loss averages over ``m`` in ``M``, with equal weight unless ``dim_weights`` (one weight
per size, normalised to sum to 1) says otherwise. Memory is O(batch): nothing here ever sees
the whole corpus.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

_EPS = 1e-8
# prefix_cosine_gathered multiplies B x U scores when U <= this x C: dense products beat
# copying (B, C, D) candidates until U is far above C
_GATHER_RATIO = 64


def _size_weights(dims: Sequence[int], dim_weights: Sequence[float] | None) -> torch.Tensor:
    weights = torch.ones(len(dims)) if dim_weights is None else torch.tensor(dim_weights)
    if weights.shape != (len(dims),) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("dim_weights needs one non-negative weight per size")
    return weights / weights.sum()


def _cumulative_selector(dims: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """(D, |M|) 0/1 matrix whose column j selects the first ``dims[j]`` coordinates: ``x @ it``
    sums each row's first m coordinates for every m at once (one pass, not one per size)."""
    width = like.shape[-1]
    coordinate = torch.arange(width, device=like.device).unsqueeze(1)
    sizes = torch.as_tensor(list(dims), device=like.device).unsqueeze(0)
    return (coordinate < sizes).to(like.dtype)


def prefix_squared_norms(x: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """``|x[:m]|^2`` for each size m: (..., D) -> (..., |M|)."""
    return (x * x) @ _cumulative_selector(dims, x)


def _coordinate_blocks(dims: Sequence[int]) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """The coordinate blocks [0, m1), [m1, m2), ... of the distinct sorted sizes, and where
    each size of ``dims`` (any order) sits among those cumulative blocks."""
    sizes = sorted(set(dims))
    blocks = list(zip([0, *sizes[:-1]], sizes, strict=True))
    return blocks, torch.tensor([sizes.index(m) for m in dims])


def prefix_cosine_pairs(a: torch.Tensor, b: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """``sim_m(a, b)`` of aligned rows: (..., D) x (..., D) -> (..., |M|), every size from one
    pass (each row's products summed by a cumulative 0/1 selector)."""
    selector = _cumulative_selector(dims, a)
    dot = (a * b) @ selector
    norm_a, norm_b = (a * a) @ selector, (b * b) @ selector
    return dot / torch.sqrt(norm_a * norm_b).clamp_min(_EPS)


def prefix_cosine_matrix(a: torch.Tensor, b: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """``sim_m(a_i, b_j)`` for all pairs: (A, D) x (B, D) -> (|M|, A, B). The products over
    coordinate block [m_(j-1), m_j) are added to those of the blocks before it, so all sizes
    cost one full-size product; each size is then scaled by the inverse prefix norms."""
    blocks, where = _coordinate_blocks(dims)
    parts = torch.stack([a[:, lo:hi] @ b[:, lo:hi].T for lo, hi in blocks])
    dot = parts.cumsum(0)[where.to(a.device)]
    norm_a = prefix_squared_norms(a, dims).T.unsqueeze(-1)  # (|M|, A, 1)
    norm_b = prefix_squared_norms(b, dims).T.unsqueeze(1)  # (|M|, 1, B)
    return dot / torch.sqrt(norm_a * norm_b).clamp_min(_EPS)


def prefix_cosine_gathered(
    anchors: torch.Tensor, rows: torch.Tensor, index: torch.Tensor, dims: Sequence[int]
) -> torch.Tensor:
    """``sim_m(anchors_i, rows_index[i, c])``: (B, D), (U, D), (B, C) -> (B, C, |M|).

    Equal to ``prefix_cosine_pairs(anchors[:, None].expand(B, C, D), rows[index], dims)``
    without its (B, C, D) copies: the norms are taken once per row and gathered; the dot
    products come from one block product per size gathered by index when the B x U scores
    are cheaper than the B x C x D copy (few distinct rows), else from the copy.
    """
    count, width = index.shape[1], max(dims)
    anchors, rows = anchors[:, :width], rows[:, :width]  # no size reads further
    norm_a = prefix_squared_norms(anchors, dims).unsqueeze(1)  # (B, 1, |M|)
    norm_r = prefix_squared_norms(rows, dims)[index]  # (B, C, |M|)
    if rows.shape[0] <= _GATHER_RATIO * max(count, 1):
        blocks, where = _coordinate_blocks(dims)
        parts = torch.stack(
            [(anchors[:, lo:hi] @ rows[:, lo:hi].T).gather(1, index) for lo, hi in blocks], -1
        )
        dot = parts.cumsum(-1)[..., where.to(anchors.device)]
    else:
        candidates = rows.index_select(0, index.flatten()).view(*index.shape, -1)
        dot = (candidates * anchors.unsqueeze(1)) @ _cumulative_selector(dims, anchors)
    return dot / torch.sqrt(norm_a * norm_r).clamp_min(_EPS)


class PrefixSizesLoss(nn.Module):
    """What every loss taken at several prefix sizes keeps: the sizes ``dims``, their weights
    normalised to sum to 1 (``size_weights``, from ``dim_weights``; equal by default), and
    the softmax temperature of those that have one."""

    def __init__(
        self,
        dims: Sequence[int],
        dim_weights: Sequence[float] | None = None,
        temperature: float | None = None,
    ) -> None:
        super().__init__()
        self.dims = list(dims)
        self.temperature = temperature
        self.register_buffer("size_weights", _size_weights(dims, dim_weights))


class TemperedPrefixLoss(PrefixSizesLoss):
    """A prefix-sizes loss over softmaxes or logits of cosines divided by ``temperature``
    (tau); its arguments in the order of the ranking and distillation losses' settings."""

    def __init__(
        self,
        dims: Sequence[int],
        temperature: float = 0.05,
        dim_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__(dims, dim_weights, temperature)


class PairwiseSimilarityLoss(PrefixSizesLoss):
    """Keep every pairwise similarity of a batch at every prefix size.

    L_pair = mean over i != j in the batch and m in M of
             | sim(e_i, e_j) - sim_m(f(e_i), f(e_j)) |
    """

    def forward(self, original: torch.Tensor, adapted: torch.Tensor) -> torch.Tensor:
        size = original.shape[0]
        if size < 2:
            return adapted.sum() * 0.0
        target = F.normalize(original, dim=-1) @ F.normalize(original, dim=-1).T
        predicted = prefix_cosine_matrix(adapted, adapted, self.dims)  # (|M|, B, B)
        off_diagonal = 1.0 - torch.eye(size, dtype=adapted.dtype, device=adapted.device)
        per_size = ((target - predicted).abs() * off_diagonal).sum(dim=(1, 2))
        return (per_size * self.size_weights).sum() / (size * (size - 1))


class TopKSimilarityLoss(PrefixSizesLoss):
    """Keep each vector's similarity to its k nearest neighbours at every prefix size.

    L_topk = mean over anchors i, j in NN_k(i) and m in M of
             | sim(e_i, e_j) - sim_m(f(e_i), f(e_j)) |

    NN_k(i) are the k nearest neighbours of e_i in the original space over the whole corpus
    (mined once, see :func:`madapt_cli.retrieval.search.mine_topk`); ``original_similarity``
    holds their cosines sim(e_i, e_j), so the original neighbour vectors need not be passed
    again.
    """

    def forward(
        self,
        adapted_anchors: torch.Tensor,  # (B, D)
        adapted_neighbours: torch.Tensor,  # (B, k, D)
        original_similarity: torch.Tensor,  # (B, k)
    ) -> torch.Tensor:
        predicted = prefix_cosine_pairs(
            adapted_anchors.unsqueeze(1).expand_as(adapted_neighbours),
            adapted_neighbours,
            self.dims,
        )  # (B, k, |M|)
        return self._mean_gap(predicted, original_similarity)

    def gathered(
        self,
        adapted_anchors: torch.Tensor,  # (B, D)
        adapted_rows: torch.Tensor,  # (U, D)
        neighbours: torch.Tensor,  # (B, k): each neighbour's row of adapted_rows
        original_similarity: torch.Tensor,  # (B, k)
    ) -> torch.Tensor:
        """:meth:`forward` with the neighbours given by index into ``adapted_rows`` (no
        (B, k, D) copy; see :func:`prefix_cosine_gathered`)."""
        predicted = prefix_cosine_gathered(adapted_anchors, adapted_rows, neighbours, self.dims)
        return self._mean_gap(predicted, original_similarity)

    def _mean_gap(self, predicted: torch.Tensor, original_similarity: torch.Tensor) -> torch.Tensor:
        per_size = (original_similarity.unsqueeze(-1) - predicted).abs().flatten(0, 1).mean(0)
        return (per_size * self.size_weights).sum()


class ReconstructionLoss(nn.Module):
    """Stay close to the original vectors.

    L_rec = mean over vectors and coordinates of | f(e) - e |   (L1)

    When the adaptor starts from a rotation R (f(e) = eR + g(eR)), the trainer passes eR as
    the original: the term then keeps g small, as it does for f(e) = e + g(e).
    """

    def forward(self, original: torch.Tensor, adapted: torch.Tensor) -> torch.Tensor:
        return (adapted - original).abs().mean()


class RankingLoss(TemperedPrefixLoss):
    """Rank more relevant documents above less relevant ones at every prefix size.

    L_rank = mean over queries i, documents j, k with y_ij > y_ik and m in M of
             (y_ij - y_ik) * log(1 + exp((s_ik[:m] - s_ij[:m]) / tau))

    where s_ij[:m] = sim_m(f(q_i), f(d_j)) (queries and documents through the same f) and y
    the graded relevance (0 for unjudged documents such as hard and in-batch negatives).
    ``relevance`` is a dense (Q, C) grade matrix over the C candidate documents of the batch;
    only documents with y_ij > 0 can be the better document j of a pair. At most
    ``max_better`` of them per query (the highest graded, ties broken at random) take that
    role in one call, so memory is O(Q x max_better x C x |M|) even when a query has
    hundreds of relevant candidates (NFCorpus).
    """

    def __init__(
        self,
        dims: Sequence[int],
        temperature: float = 0.05,
        dim_weights: Sequence[float] | None = None,
        max_better: int = 16,
    ) -> None:
        super().__init__(dims, temperature, dim_weights)
        self.max_better = max_better

    def forward(
        self, queries: torch.Tensor, documents: torch.Tensor, relevance: torch.Tensor
    ) -> torch.Tensor:
        scores = prefix_cosine_matrix(queries, documents, self.dims)  # (|M|, Q, C)
        most_positives = int((relevance > 0).sum(dim=1).max().item()) if relevance.numel() else 0
        if most_positives == 0:
            return scores.sum() * 0.0
        count = min(most_positives, self.max_better)
        if count < most_positives:  # the highest grades first, a random choice among equals
            jitter = torch.rand(relevance.shape, device=relevance.device) * 0.5
            _, better = (relevance + jitter * (relevance > 0)).topk(count, dim=1)
        else:
            _, better = relevance.topk(count, dim=1)  # (Q, P)
        better_grade = relevance.gather(1, better)
        better_scores = scores.gather(2, better.unsqueeze(0).expand(scores.shape[0], -1, -1))
        # weight[i, p, k] = y_i,better(p) - y_ik where positive (no pair otherwise)
        weight = (better_grade.unsqueeze(-1) - relevance.unsqueeze(1)).clamp_min(0.0)
        weight = weight * (better_grade > 0).unsqueeze(-1)
        pairs = (weight > 0).sum()
        if pairs == 0:
            return scores.sum() * 0.0
        margin = (scores.unsqueeze(2) - better_scores.unsqueeze(-1)) / self.temperature
        per_size = (weight.unsqueeze(0) * F.softplus(margin)).sum(dim=(1, 2, 3))
        return (per_size * self.size_weights).sum() / pairs


class GradedSoftmaxLoss(TemperedPrefixLoss):
    """Put each query's softmax mass on all of its relevant documents, in proportion to grade.

    L_list = sum over m in M of w_m * mean over queries i with a relevant candidate of
             - sum over j in C of t_ij * log softmax over k in C of (s_ik[:m] / tau)

        t_ij = y_ij / sum over k in C of y_ik

    with s_ik[:m] = sim_m(f(q_i), f(d_k)) (queries and documents through the same f), y the
    graded relevance (0 for unjudged documents such as hard and in-batch negatives) and C the
    candidate documents of the batch. ``relevance`` is a dense (Q, C) grade matrix. This is
    the softmax cross-entropy of ListNet (Cao et al., "Learning to Rank: From Pairwise Approach
    to Listwise Approach", ICML 2007) with the grades as the target distribution (the gain of
    nDCG, linear in the grade), i.e. the multi-positive InfoNCE of supervised contrastive
    learning with grade-weighted positives: every relevant candidate of a query takes part
    in one softmax, none is sampled out as "the" positive, and its memory is O(Q x C x |M|).
    """

    def forward(
        self, queries: torch.Tensor, documents: torch.Tensor, relevance: torch.Tensor
    ) -> torch.Tensor:
        scores = prefix_cosine_matrix(queries, documents, self.dims)  # (|M|, Q, C)
        gain = relevance.clamp_min(0.0)
        total = gain.sum(dim=1, keepdim=True)  # (Q, 1)
        labelled = total.squeeze(1) > 0
        if not bool(labelled.any()):
            return scores.sum() * 0.0
        target = gain[labelled] / total[labelled]  # (Q', C)
        log_p = F.log_softmax(scores[:, labelled] / self.temperature, dim=-1)
        per_size = -(target.unsqueeze(0) * log_p).sum(dim=-1).mean(dim=-1)  # (|M|,)
        return (per_size * self.size_weights).sum()


def nearest_rows(
    anchors: torch.Tensor, pool: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` rows of ``pool`` most cosine-similar to each anchor, skipping copies of the
    anchor itself (similarity >= 1 - 1e-6): (similarity (B, k'), index (B, k')), k' <= k."""
    similarity = F.normalize(anchors, dim=-1) @ F.normalize(pool, dim=-1).T
    similarity = similarity.masked_fill(similarity >= 1.0 - 1e-6, -2.0)
    k = min(k, pool.shape[0] - 1) if pool.shape[0] > 1 else 0
    if k <= 0:
        empty = anchors.new_zeros((anchors.shape[0], 0))
        return empty, empty.long()
    return similarity.topk(k, dim=1)


class MemorySimilarityLoss(nn.Module):
    """S-XBM: keep each vector's similarity to its K nearest memory rows at the selected size.

    L_unsup = mean over batch rows i, j in N_K(i) of | sim(e_i, e_j) - sim_d(f(e_i), f(e_j)) |

    N_K(i) the K memory rows most similar to e_i in the original space, sim_d the cosine over
    the selected coordinates (``mask``). The memory holds originals only: f(e_j) is recomputed
    with the current f at every step. (The package's L_topk on masked vectors.) The originals
    may be rotated (x_0 = e R, R orthogonal: the same cosines) when ``adapt`` starts there.
    """

    def __init__(self, k: int, dimension: int, sizes: Sequence[int] | None = None) -> None:
        super().__init__()
        self.k = k
        self.topk_loss = TopKSimilarityLoss([dimension])  # the full width of masked vectors
        # every size in one pass, on the prefixes of an order (no ADS masks)
        self.sized_loss = TopKSimilarityLoss(sorted(sizes)) if sizes else None

    def forward(
        self,
        adapt: Callable[[torch.Tensor], torch.Tensor],  # originals -> adapted, before any order
        originals: torch.Tensor,
        pool: torch.Tensor,
        masks: torch.Tensor | None,
        order: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The mean over the sizes: of each of ``masks`` (|sizes|, D), or, given ``order``
        (and ``sizes`` at construction), of the first m coordinates of that order."""
        similarity, index = nearest_rows(originals, pool, self.k)
        if index.shape[1] == 0:
            return (masks if masks is not None else originals).sum() * 0.0
        rows, inverse = torch.unique(index.flatten(), return_inverse=True)
        adapted = adapt(torch.cat([originals, pool[rows]]))
        anchors, neighbours = adapted[: len(originals)], adapted[len(originals) :][inverse]
        neighbours = neighbours.view(*index.shape, -1)
        if order is not None and self.sized_loss is not None:
            return self.sized_loss(anchors[:, order], neighbours[..., order], similarity)
        return torch.stack(
            [self.topk_loss(anchors * mask, neighbours * mask, similarity) for mask in masks]
        ).mean()


class ListwiseDistillationLoss(TemperedPrefixLoss):
    """Teach every prefix the full-size ranking of each anchor's candidate documents.

    L_distill = sum over m in M of w_m * mean over anchors i of KL(p_i || q_i^m)

        p_i(j)   = softmax over j in C_i of sim(e_i, e_j) / tau          (teacher, full size)
        q_i^m(j) = softmax over j in C_i of sim_m(f(e_i), f(e_j)) / tau  (student, prefix m)

    C_i are anchor i's candidates (its top-K corpus neighbours in the original space plus
    random corpus documents); anchors (unlabelled queries, or corpus rows) and documents go
    through the same f. This is listwise ranking distillation with the full-size embedding as
    the teacher and each prefix of the adapted one as a student: the softmax-over-candidates
    KL of RankDistil-style listwise distillation (Reddi et al., "RankDistil: Knowledge
    Distillation for Ranking", AISTATS 2021) and of the dense-retrieval distillation of
    Lin, Yang and Lin, "Distilling Dense Representations for Ranking using Tightly-Coupled
    Teachers" (2020). Unlike L_topk it asks only for the *order* (the relative scores) of a
    query's documents, not for their absolute cosines.

    ``valid`` (B, C) marks real candidates (False: padding, duplicates, the anchor itself);
    a masked candidate has zero teacher and student probability.
    """

    def forward(
        self,
        adapted_anchors: torch.Tensor,  # (B, D)
        adapted_candidates: torch.Tensor,  # (B, C, D)
        teacher_similarity: torch.Tensor,  # (B, C): full-size cosines of the originals
        valid: torch.Tensor | None = None,  # (B, C) bool
    ) -> torch.Tensor:
        per_size = self.per_size(adapted_anchors, adapted_candidates, teacher_similarity, valid)
        return (per_size * self.size_weights).sum()

    def per_size(
        self,
        adapted_anchors: torch.Tensor,
        adapted_candidates: torch.Tensor,
        teacher_similarity: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """mean over anchors of KL(p_i || q_i^m), one value per size m: (|M|,)."""
        student = prefix_cosine_pairs(
            adapted_anchors.unsqueeze(1).expand_as(adapted_candidates),
            adapted_candidates,
            self.dims,
        )  # (B, C, |M|)
        return self._kl(student, teacher_similarity, valid)

    def gathered(
        self,
        adapted_anchors: torch.Tensor,  # (B, D)
        adapted_rows: torch.Tensor,  # (U, D)
        candidates: torch.Tensor,  # (B, C): each candidate's row of adapted_rows
        teacher_similarity: torch.Tensor,  # (B, C)
        valid: torch.Tensor | None = None,  # (B, C) bool
    ) -> torch.Tensor:
        """:meth:`forward` with the candidates given by index into ``adapted_rows``."""
        per_size = self.per_size_gathered(
            adapted_anchors, adapted_rows, candidates, teacher_similarity, valid
        )
        return (per_size * self.size_weights).sum()

    def per_size_gathered(
        self,
        adapted_anchors: torch.Tensor,
        adapted_rows: torch.Tensor,
        candidates: torch.Tensor,
        teacher_similarity: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`per_size` with the candidates given by index (see :meth:`gathered`)."""
        student = prefix_cosine_gathered(adapted_anchors, adapted_rows, candidates, self.dims)
        return self._kl(student, teacher_similarity, valid)

    def _kl(
        self, student: torch.Tensor, teacher_similarity: torch.Tensor, valid: torch.Tensor | None
    ) -> torch.Tensor:
        student = student.movedim(-1, 0)  # (|M|, B, C)
        teacher = teacher_similarity / self.temperature
        student = student / self.temperature
        if valid is not None:
            teacher = teacher.masked_fill(~valid, -1e4)
            student = student.masked_fill(~valid, -1e4)
        log_p = F.log_softmax(teacher, dim=-1)  # (B, C)
        log_q = F.log_softmax(student, dim=-1)  # (|M|, B, C)
        return (log_p.exp() * (log_p - log_q)).sum(-1).mean(-1)  # (|M|,)
