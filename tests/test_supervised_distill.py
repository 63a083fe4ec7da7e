"""Supervised training with L_distill: stage 1 on the training queries as unlabelled anchors
(``stage1_objective="distill"``) and L_distill beside L_rank in stage 2 (``distill_weight``);
SMEC's supervised L_unsup weight."""

from __future__ import annotations

import pytest
import torch
from test_training import _hidden_signal

from madapt_cli.errors import InputError
from madapt_cli.methods.matryoshka import train_supervised
from madapt_cli.retrieval.evaluate import ndcg_at_10
from madapt_cli.training.config import TrainConfig


def _config(**changes) -> TrainConfig:
    settings = dict(
        train_dims=[8, 32],
        epochs=0,
        supervised_epochs=12,
        batch_size=128,
        query_batch_size=64,
        supervised_lr=1e-2,
        alpha=0.1,
        beta=0.1,
        gamma=0.1,
        temperature=0.1,
        hard_negatives=10,
        distill_topk=20,
        distill_random=8,
        device="cpu",
        patience=20,
        seed=0,
    )
    settings.update(changes)
    return TrainConfig(**settings)


def _train(config: TrainConfig, two_stage: bool = False):
    data = _hidden_signal()
    result = train_supervised(
        data["docs"],
        data["doc_ids"],
        data["queries"],
        data["query_ids"],
        data["qrels"],
        config,
        two_stage=two_stage,
    )
    with torch.no_grad():
        docs = result.module(torch.from_numpy(data["docs"]))
        queries = result.module(torch.from_numpy(data["queries"]))
    score = ndcg_at_10(queries, data["query_ids"], docs, data["doc_ids"], data["qrels"], 8)
    return result, score


def test_distill_term_changes_training_and_still_learns_the_hidden_signal():
    plain, _ = _train(_config())
    mixed, mixed_score = _train(_config(distill_weight=0.1))
    assert mixed_score > 0.5  # truncation to 8 of these dims retrieves nothing (< 0.1)
    weights = [
        torch.equal(a, b)
        for a, b in zip(
            plain.module.state_dict().values(), mixed.module.state_dict().values(), strict=True
        )
    ]
    assert not all(weights)
    losses = [r["loss"] for r in mixed.history if r["stage"] == "supervised" and r["epoch"] > 0]
    assert all(loss is not None and loss == loss for loss in losses)


def test_distill_stage1_runs_on_the_training_queries_then_stage2():
    result, _ = _train(_config(epochs=3, stage1_objective="distill", distill_lr=3e-3), True)
    stages = [r["stage"] for r in result.history]
    assert stages[0] == "distill" and "supervised" in stages
    assert "unsupervised" not in stages
    # early stopping of stage 1 on the held-out judged queries: nDCG@10 recorded
    assert "ndcg@10" in result.history[0]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"stage1_objective": "ranking"}, "stage1_objective must be 'paper' or 'distill'"),
        ({"distill_weight": -1.0}, "distill_weight must be a finite number >= 0"),
    ],
)
def test_bad_supervised_distill_settings(changes, message):
    with pytest.raises(InputError, match=message):
        _config(**changes).validate("supervised")


@pytest.fixture()
def one_thread():
    """Bit-equal weights across two fits need one torch thread: on two, the order of float
    sums (and so the last bits) varies from run to run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_smec_supervised_default_alpha_is_0_3(one_thread):
    """SMEC's supervised L_unsup weight: 0.3 unless --alpha says otherwise (docs/smec.md)."""
    from madapt_cli.methods.smec import SMECOptions, train_smec

    data = _hidden_signal(n=120)

    def weights(alpha):
        config = _config(alpha=alpha, supervised_epochs=2, train_dims=[8, 16])
        result = train_smec(
            data["docs"],
            config,
            SMECOptions(memory_size=200),
            corpus_ids=data["doc_ids"],
            queries=data["queries"],
            query_ids=data["query_ids"],
            qrels=data["qrels"],
        )
        return list(result.module.state_dict().values())

    default, explicit, heavier = weights(None), weights(0.3), weights(1.0)
    assert all(torch.equal(a, b) for a, b in zip(default, explicit, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(default, heavier, strict=True))
