"""Training on synthetic vectors with planted structure (fast; no real model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from madapt_cli.errors import InputError
from madapt_cli.methods.matryoshka import new_adaptor_module, train_supervised, train_unsupervised
from madapt_cli.retrieval.evaluate import ndcg_at_10
from madapt_cli.retrieval.search import mine_topk
from madapt_cli.training.config import TrainConfig
from madapt_cli.util.dims import check_train_dims, default_train_dims


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def signal_config(**changes) -> TrainConfig:
    """Supervised settings that learn :func:`_hidden_signal` in a few seconds on the CPU."""
    settings = dict(
        train_dims=[8, 32],
        epochs=0,
        batch_size=128,
        query_batch_size=64,
        supervised_lr=1e-2,
        alpha=0.1,
        beta=0.1,
        gamma=0.1,
        temperature=0.1,
        hard_negatives=10,
        device="cpu",
        patience=20,
        seed=0,
    )
    return TrainConfig(**{**settings, **changes})


def _hidden_signal(n: int = 400, seed: int = 0) -> dict:
    """Documents and queries that match on the LAST 8 of 32 coordinates only; the first 24
    are independent noise. Truncation to 8 dims therefore cannot retrieve anything."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(n, 8))
    docs = _unit(np.hstack([rng.normal(size=(n, 24)), signal]))
    queries = _unit(np.hstack([rng.normal(size=(n, 24)), signal + 0.2 * rng.normal(size=(n, 8))]))
    doc_ids = [f"d{i}" for i in range(n)]
    query_ids = [f"q{i}" for i in range(n)]
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(n)}
    return {
        "docs": docs,
        "doc_ids": doc_ids,
        "queries": queries,
        "query_ids": query_ids,
        "qrels": qrels,
    }


def matryoshka_on_signal(data: dict, config: TrainConfig, two_stage: bool = False):
    """A supervised Matryoshka-Adaptor fit on :func:`_hidden_signal`'s data."""
    return train_supervised(
        data["docs"],
        data["doc_ids"],
        data["queries"],
        data["query_ids"],
        data["qrels"],
        config,
        two_stage=two_stage,
    )


def smec_on_signal(data: dict, config: TrainConfig):
    """A supervised SMEC fit (memory of 200 rows) on :func:`_hidden_signal`'s data."""
    from madapt_cli.methods.smec import SMECOptions, train_smec

    return train_smec(
        data["docs"],
        config,
        SMECOptions(memory_size=200),
        corpus_ids=data["doc_ids"],
        queries=data["queries"],
        query_ids=data["query_ids"],
        qrels=data["qrels"],
    )


def test_default_and_checked_train_dims():
    assert default_train_dims(384) == [16, 32, 64, 128, 256, 384]
    assert default_train_dims(64) == [16, 32, 64]
    assert check_train_dims([64, 32, 32], 384) == [32, 64]
    with pytest.raises(InputError, match=r"512 outside 1\.\.384"):
        check_train_dims([64, 512], 384)


def test_mine_topk_is_exact_and_excludes_self():
    x = torch.from_numpy(_unit(np.random.default_rng(0).normal(size=(50, 8))))
    scores, indices = mine_topk(x, x, 3, exclude_self=True)
    similarity = (x @ x.T).fill_diagonal_(-2.0)
    expected_scores, expected_indices = similarity.topk(3, dim=1)
    torch.testing.assert_close(scores, expected_scores)
    assert torch.equal(indices, expected_indices)
    assert not (indices == torch.arange(50).unsqueeze(1)).any()


def test_unsupervised_training_lowers_the_loss_and_helps_small_prefixes():
    rng = np.random.default_rng(1)
    # the informative directions sit at the end: prefixes of the raw vectors lose them
    x = _unit(rng.normal(size=(600, 24)) * np.linspace(0.2, 2.0, 24))
    config = TrainConfig(
        train_dims=[4, 8, 24],
        epochs=10,
        batch_size=128,
        lr=1e-2,
        device="cpu",
        topk=5,
        rotation=False,  # from the identity: the residual alone must do the work
    )
    result = train_unsupervised(x, config)
    losses = [r["loss"] for r in result.history]
    assert losses[-1] < 0.8 * losses[0]
    # neighbours at 8 dims agree more with the full-size neighbours than truncation does
    full = torch.from_numpy(x)
    _, truth = mine_topk(full, full, 5, exclude_self=True)

    def overlap(vectors: torch.Tensor) -> float:
        v = torch.nn.functional.normalize(vectors[:, :8], dim=-1)
        _, found = mine_topk(v, v, 5, exclude_self=True)
        return np.mean(
            [len(set(a) & set(b)) / 5 for a, b in zip(found.tolist(), truth.tolist(), strict=True)]
        )

    with torch.no_grad():
        adapted = result.module(full)
    assert overlap(adapted) > overlap(full) + 0.05


def test_the_principal_rotation_start_keeps_full_size_cosines_and_helps_prefixes():
    rng = np.random.default_rng(2)
    x = _unit(rng.normal(size=(500, 24)) * np.linspace(0.2, 2.0, 24))
    full = torch.from_numpy(x)
    module = new_adaptor_module(full, TrainConfig(device="cpu"))
    with torch.no_grad():
        start = module(full)
    rotation = module.rotation
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(24), atol=1e-5, rtol=0)
    torch.testing.assert_close(start @ start.T, full @ full.T, atol=1e-5, rtol=0)
    energy = (start**2).mean(dim=0)  # the leading coordinates carry the most energy
    assert torch.all(energy[:-1] >= energy[1:] - 1e-6)
    assert energy[:4].sum() > (full**2).mean(dim=0)[:4].sum() * 2
    assert torch.equal(new_adaptor_module(full, TrainConfig(device="cpu")).rotation, rotation)


def test_supervised_training_moves_the_signal_into_the_first_dimensions():
    data = _hidden_signal()
    config = signal_config(supervised_epochs=20)
    result = matryoshka_on_signal(data, config)
    stage = [r for r in result.history if r["stage"] == "supervised"]
    assert stage[0]["epoch"] == 0  # validation of the starting point (the identity)
    before = stage[0]["ndcg@10"]["8"]
    after = result.best["ndcg@10"]["8"]
    assert before < 0.1
    assert after > before + 0.3  # on the held-out validation queries
    with torch.no_grad():
        docs = result.module(torch.from_numpy(data["docs"]))
        queries = result.module(torch.from_numpy(data["queries"]))
    score = ndcg_at_10(queries, data["query_ids"], docs, data["doc_ids"], data["qrels"], 8)
    assert score > before + 0.3


def test_supervised_refuses_qrels_that_match_nothing():
    data = _hidden_signal(n=20)
    with pytest.raises(InputError, match="do the ids match"):
        train_supervised(
            data["docs"],
            data["doc_ids"],
            data["queries"],
            data["query_ids"],
            {"other": {"x": 1}},
            TrainConfig(device="cpu"),
        )


def test_epoch_order_covers_every_index_once_per_epoch_in_a_new_order():
    from madapt_cli.training.loop import EpochOrder

    order = EpochOrder(10, 4, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    epochs = [torch.cat([order.next(generator) for _ in range(3)]) for _ in range(2)]
    for epoch in epochs:  # batches of 4, 4 and a short 2
        assert sorted(epoch.tolist()) == list(range(10))
    assert epochs[0].tolist() != epochs[1].tolist()


def test_epoch_progress_counts_planned_epochs_and_ends_where_training_stopped():
    from madapt_cli.training.progress import EpochProgress

    events, records = [], []
    progress = EpochProgress(records.append, events.append)
    progress.plan([3, 5])
    progress({"stage": "unsupervised", "epoch": 0, "loss": None, "ndcg@10": {"8": 0.5}})
    for epoch in (1, 2):  # stage 1 stops early, after 2 of its 3 epochs
        progress({"stage": "unsupervised", "epoch": epoch, "loss": 0.5})
    progress({"stage": "supervised", "epoch": 1, "loss": 0.25, "ndcg@10": {"8": 0.625}})
    progress.finish()
    assert len(records) == 4
    assert [(e.done, e.total) for e in events] == [(0, 8), (1, 8), (2, 8), (3, 7), (3, 3)]
    assert events[3].message == "supervised epoch 1 loss 0.2500 val 8:0.625"
    assert [e.finished for e in events] == [False] * 4 + [True]
    assert {e.task for e in events} == {"fit"} and {e.unit for e in events} == {"epochs"}
