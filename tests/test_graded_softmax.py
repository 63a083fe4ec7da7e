"""GradedSoftmaxLoss (listwise, every relevant candidate at once) and its selection by
TrainConfig.rank_loss for both supervised methods."""

from __future__ import annotations

import math

import pytest
import torch
from test_training import _hidden_signal, matryoshka_on_signal, signal_config, smec_on_signal

from madapt_cli.errors import InputError
from madapt_cli.losses import GradedSoftmaxLoss, RankingLoss
from madapt_cli.methods import smec as smec_method
from madapt_cli.methods.smec import SUPERVISED_RANK_LOSS
from madapt_cli.training import objectives
from madapt_cli.training.config import TrainConfig
from madapt_cli.training.objectives import ranking_loss


def test_graded_softmax_by_hand():
    # one query; documents at cosines 1, 0, -1 (every size agrees in 2-d here at m = 2)
    query = torch.tensor([[1.0, 0.0]])
    documents = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    relevance = torch.tensor([[2.0, 1.0, 0.0]])  # targets 2/3 and 1/3
    log_z = math.log(math.exp(1.0) + math.exp(0.0) + math.exp(-1.0))
    expected = -(2 / 3 * (1.0 - log_z) + 1 / 3 * (0.0 - log_z))
    loss = GradedSoftmaxLoss([2], temperature=1.0)(query, documents, relevance)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # at m = 1 the second document's prefix is (0,), cosine 0 as well: the same value
    both = GradedSoftmaxLoss([1, 2], temperature=1.0)(query, documents, relevance)
    assert both.item() == pytest.approx(expected, abs=1e-6)


def test_graded_softmax_skips_queries_without_relevant_candidates():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    documents = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    relevance = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    loss = GradedSoftmaxLoss([2], temperature=1.0)(queries, documents, relevance)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)
    none = GradedSoftmaxLoss([2])(queries, documents, torch.zeros(2, 2))
    assert none.item() == 0.0


def test_graded_softmax_uses_every_positive_with_its_grade():
    """Unlike a sampled positive, each relevant document is pulled up in proportion to
    its grade, and the unjudged one pushed down."""
    query = torch.tensor([[1.0, 0.0]])
    documents = torch.nn.functional.normalize(
        torch.randn(5, 2, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    documents = documents.clone().requires_grad_(True)
    relevance = torch.tensor([[2.0, 1.0, 1.0, 0.0, 0.0]])
    GradedSoftmaxLoss([2], temperature=0.1)(query, documents, relevance).backward()
    # the gradient on a document's first coordinate (along the query) is
    # (p_j - t_j) / tau: the loss falls when the positives rise only while p_j < t_j
    with torch.no_grad():
        p = torch.softmax(torch.nn.functional.normalize(documents, dim=-1) @ query[0] / 0.1, dim=0)
    target = relevance[0] / relevance.sum()
    for j in range(5):
        if target[j] > p[j] + 1e-3:
            assert (documents.grad[j] @ query[0]).item() < 0
        if target[j] == 0:
            assert (documents.grad[j] @ query[0]).item() >= 0


def test_graded_softmax_learns_the_grade_order():
    """Free documents trained on the loss end ranked by grade, and the loss approaches its
    minimum, the entropy of the targets (where softmax(s / tau) equals t)."""
    generator = torch.Generator().manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(1, 8, generator=generator), dim=-1)
    documents = torch.randn(4, 8, generator=generator).requires_grad_(True)
    relevance = torch.tensor([[2.0, 1.0, 1.0, 0.0]])
    loss_fn = GradedSoftmaxLoss([4, 8], temperature=0.05)
    optimiser = torch.optim.Adam([documents], lr=0.05)
    for _ in range(300):
        optimiser.zero_grad()
        loss = loss_fn(query, documents, relevance)
        loss.backward()
        optimiser.step()
    cosine = torch.nn.functional.cosine_similarity(query, documents.detach())
    assert cosine[0] > cosine[1] and cosine[0] > cosine[2]
    assert min(cosine[1], cosine[2]) > cosine[3]
    entropy = -sum(t * math.log(t) for t in (0.5, 0.25, 0.25))
    assert entropy <= loss.item() < entropy + 0.05


def test_rank_loss_setting_chooses_the_class():
    # None: the method's default (the Matryoshka-Adaptor's pairwise, SMEC's softmax)
    assert isinstance(ranking_loss([4], TrainConfig()), RankingLoss)
    assert isinstance(ranking_loss([4], TrainConfig(), default="softmax"), GradedSoftmaxLoss)
    assert SUPERVISED_RANK_LOSS == "softmax"
    pairwise = TrainConfig(rank_loss="pairwise")
    assert isinstance(ranking_loss([4], pairwise, default="softmax"), RankingLoss)
    softmax = ranking_loss([2, 4], TrainConfig(rank_loss="softmax", temperature=0.1))
    assert isinstance(softmax, GradedSoftmaxLoss)
    assert softmax.temperature == 0.1
    assert softmax.dims == [2, 4]
    with pytest.raises(InputError, match="--rank-loss must be"):
        TrainConfig(rank_loss="listnet").validate("supervised")


def test_both_supervised_methods_learn_the_hidden_signal_with_the_softmax_loss(monkeypatch):
    """The Matryoshka-Adaptor's stage 2 with rank_loss="softmax" and SMEC by default both
    train on GradedSoftmaxLoss and move the signal (the last 8 of 32 coordinates) into the
    first 8."""
    data = _hidden_signal()
    config = signal_config(supervised_epochs=20, rank_loss="softmax")
    result = matryoshka_on_signal(data, config)
    stage = [r for r in result.history if r["stage"] == "supervised"]
    assert stage[0]["ndcg@10"]["8"] < 0.1
    assert result.best["ndcg@10"]["8"] > stage[0]["ndcg@10"]["8"] + 0.3
    built: list[type] = []
    original = smec_method.ranking_loss

    def recording(*args, **kwargs):
        built.append(type(loss := original(*args, **kwargs)))
        return loss

    monkeypatch.setattr(smec_method, "ranking_loss", recording)
    # the ranking loss alone: L_distill (SMEC's default weight 1) would teach the full-size
    # ranking, which the 24 noise coordinates dominate here (--distill-weight auto keeps
    # weight 0 on these data: tests/test_smec_supervised.py)
    config = signal_config(supervised_epochs=10, lr=1e-2, smec_distill_choices=None)
    smec = smec_on_signal(_hidden_signal(n=200), config)
    start = smec.history[0]["ndcg@10"]["8"]
    assert smec.best["ndcg@10"]["8"] > start + 0.2
    assert built and set(built) == {GradedSoftmaxLoss}


def test_the_supervised_objective_trains_on_the_chosen_loss(monkeypatch):
    built: list[type] = []
    original = objectives.ranking_loss

    def recording(dims, config, dim_weights=None):
        loss = original(dims, config, dim_weights)
        built.append(type(loss))
        return loss

    monkeypatch.setattr(objectives, "ranking_loss", recording)
    corpus = torch.nn.functional.normalize(torch.randn(30, 8), dim=-1)
    queries = corpus[:4] + 0.1
    judgments = [{0: 2, 5: 1}, {1: 1}, {2: 1}, {3: 1}]
    config = TrainConfig(rank_loss="softmax", hard_negatives=5, device="cpu")
    objective = objectives.SupervisedObjective(
        corpus,
        queries,
        judgments,
        [4, 8],
        config,
        config.weights("supervised"),
        torch.Generator().manual_seed(0),
        regularise=False,
    )
    assert built == [GradedSoftmaxLoss] and isinstance(objective.rank_loss, GradedSoftmaxLoss)
    candidates, relevance = objective.sample_candidates(torch.arange(4))
    assert relevance[0, candidates == 0].item() == 2.0
    assert relevance[0, candidates == 5].item() == 1.0
