"""Each Matryoshka-Adaptor loss against values computed by hand on tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch

from madapt_cli.losses import (
    PairwiseSimilarityLoss,
    RankingLoss,
    ReconstructionLoss,
    TopKSimilarityLoss,
    prefix_cosine_matrix,
    prefix_cosine_pairs,
)


def test_prefix_cosines_agree_with_direct_computation():
    torch.manual_seed(0)
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    dims = [2, 5, 8]
    pairs = prefix_cosine_pairs(a, b, dims)
    matrix = prefix_cosine_matrix(a, b, dims)
    for k, m in enumerate(dims):
        direct = torch.nn.functional.cosine_similarity(a[:, :m], b[:, :m], dim=-1)
        torch.testing.assert_close(pairs[:, k], direct)
        torch.testing.assert_close(matrix[k].diagonal(), direct)


def test_pairwise_loss_by_hand():
    original = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # sim = 0
    adapted = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # sim_1 = 1, sim_2 = 1/sqrt(2)
    loss = PairwiseSimilarityLoss([1, 2])(original, adapted)
    assert loss.item() == pytest.approx((1.0 + 1 / math.sqrt(2)) / 2, abs=1e-6)


def test_pairwise_loss_is_zero_for_identical_vectors_at_full_size():
    x = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    assert PairwiseSimilarityLoss([4])(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert PairwiseSimilarityLoss([1, 4])(x, x).item() > 0.01  # 1-d prefixes differ


def test_topk_loss_by_hand():
    anchors = torch.tensor([[1.0, 0.0]])
    neighbours = torch.tensor([[[-1.0, 1.0]]])  # sim_1 = -1, sim_2 = -1/sqrt(2)
    original_similarity = torch.tensor([[0.5]])
    loss = TopKSimilarityLoss([1, 2])(anchors, neighbours, original_similarity)
    assert loss.item() == pytest.approx((1.5 + 0.5 + 1 / math.sqrt(2)) / 2, abs=1e-6)


def test_reconstruction_loss_by_hand():
    loss = ReconstructionLoss()(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]))
    assert loss.item() == pytest.approx(0.5)


def test_ranking_loss_by_hand():
    query = torch.tensor([[1.0, 0.0]])
    documents = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # s = 1, 0, -1 at m = 1, 2
    relevance = torch.tensor([[2.0, 1.0, 0.0]])
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    # pairs (j, k): (1, 2) weight 1, (1, 3) weight 2, (2, 3) weight 1
    expected = (softplus(-1) + 2 * softplus(-2) + softplus(-1)) / 3
    loss = RankingLoss([1, 2], temperature=1.0)(query, documents, relevance)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    sharper = RankingLoss([2], temperature=0.5)(query, documents, relevance)
    expected_sharper = (softplus(-2) + 2 * softplus(-4) + softplus(-2)) / 3
    assert sharper.item() == pytest.approx(expected_sharper, abs=1e-6)


def test_ranking_loss_ignores_queries_without_positives_and_pads_positives():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    documents = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # query 2 has no positive: it contributes no pair; query 1 has the one pair (1, 2)
    relevance = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    loss = RankingLoss([2], temperature=1.0)(queries, documents, relevance)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)
    none = RankingLoss([2])(queries, documents, torch.zeros(2, 2))
    assert none.item() == 0.0


def test_ranking_loss_gradient_pushes_positive_up():
    query = torch.tensor([[1.0, 0.0]])
    documents = torch.tensor([[0.6, 0.8], [0.8, 0.6]], requires_grad=True)
    loss = RankingLoss([2], temperature=0.1)(query, documents, torch.tensor([[1.0, 0.0]]))
    loss.backward()
    assert documents.grad[0, 0] < 0  # descending the gradient raises the positive's score
    assert documents.grad[1, 0] > 0


def test_size_weights_average_the_per_size_losses():
    anchors = torch.tensor([[1.0, 0.0]])
    neighbours = torch.tensor([[[-1.0, 1.0]]])  # errors 1.5 at m = 1, 0.5 + 1/sqrt(2) at m = 2
    target = torch.tensor([[0.5]])
    weighted = TopKSimilarityLoss([1, 2], dim_weights=[3.0, 1.0])(anchors, neighbours, target)
    assert weighted.item() == pytest.approx((3 * 1.5 + 0.5 + 1 / math.sqrt(2)) / 4, abs=1e-6)
    with pytest.raises(ValueError, match="one non-negative weight per size"):
        TopKSimilarityLoss([1, 2], dim_weights=[1.0])


def test_ranking_loss_caps_the_better_documents_per_query():
    torch.manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(1, 4), dim=-1)
    documents = torch.nn.functional.normalize(torch.randn(40, 4), dim=-1)
    relevance = torch.zeros(1, 40)
    relevance[0, :30] = 1.0  # 30 relevant, 10 not: 300 pairs in all
    full = RankingLoss([4], temperature=1.0, max_better=30)(query, documents, relevance)
    scores = (query @ documents.T)[0]
    expected = torch.nn.functional.softplus(scores[30:].unsqueeze(0) - scores[:30].unsqueeze(1))
    assert full.item() == pytest.approx(expected.mean().item(), abs=1e-6)
    capped = RankingLoss([4], temperature=1.0, max_better=5)(query, documents, relevance)
    # an estimate from 5 of the 30 relevant documents: 50 pairs, finite, same scale
    assert 0.3 * full.item() < capped.item() < 3 * full.item()
