"""Supervised training with L_distill: stage 1 on the training queries as unlabelled anchors
(``stage1_objective="distill"``) and L_distill beside L_rank in stage 2 (``distill_weight``);
SMEC's supervised L_unsup weight."""

from __future__ import annotations

import pytest
import torch
from test_training import _hidden_signal, matryoshka_on_signal, signal_config, smec_on_signal

from madapt_cli.errors import InputError
from madapt_cli.retrieval.evaluate import ndcg_at_10
from madapt_cli.training.config import TrainConfig


def _config(**changes) -> TrainConfig:
    return signal_config(
        **{
            "supervised_epochs": 12,
            "distill_topk": 20,
            "distill_random": 8,
            # SMEC: one fit at distill_weight (no choice)
            "smec_distill_choices": None,
            **changes,
        }
    )


def _train(config: TrainConfig, two_stage: bool = False):
    data = _hidden_signal()
    result = matryoshka_on_signal(data, config, two_stage)
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
        ({"stage1_objective": "ranking"}, "^--stage1-objective must be 'paper' or 'distill'"),
        ({"distill_weight": -1.0}, "^--distill-weight must be a finite number >= 0"),
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


def test_smec_supervised_default_alpha_is_0_1(one_thread):
    """SMEC's supervised L_unsup weight: 0.1 unless --alpha says otherwise (docs/smec.md)."""

    data = _hidden_signal(n=120)

    def weights(alpha):
        config = _config(alpha=alpha, supervised_epochs=2, train_dims=[8, 16])
        result = smec_on_signal(data, config)
        return list(result.module.state_dict().values())

    default, explicit, heavier = weights(None), weights(0.1), weights(0.3)
    assert all(torch.equal(a, b) for a, b in zip(default, explicit, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(default, heavier, strict=True))


def test_smec_distill_term_changes_training_and_still_learns(one_thread):
    """``distill_weight`` > 0 adds L_distill of the training queries at each SMEC size: the
    weights differ from a fit without it, and the hidden signal is still learnt."""

    data = _hidden_signal()

    def fit(weight):
        config = _config(distill_weight=weight, lr=1e-2, supervised_epochs=8)
        result = smec_on_signal(data, config)
        with torch.no_grad():
            docs = result.module(torch.from_numpy(data["docs"]))
            queries = result.module(torch.from_numpy(data["queries"]))
        score = ndcg_at_10(queries, data["query_ids"], docs, data["doc_ids"], data["qrels"], 8)
        return list(result.module.state_dict().values()), score

    plain, plain_score = fit(0.0)
    mixed, mixed_score = fit(0.3)
    # truncation to 8 of these dims retrieves nothing (< 0.1); the full-size teacher is
    # mostly noise here, so the term costs some of what the labels teach, not all of it
    assert plain_score > 0.5 and mixed_score > 0.25
    assert not all(torch.equal(a, b) for a, b in zip(plain, mixed, strict=True))


def test_cli_distill_options_reach_the_config_and_bad_ones_are_refused(
    tmp_path, monkeypatch, capsys
):
    """`madapt fit --distill-weight/--stage1-objective` set the TrainConfig fields recorded in
    config.json; out of range, or without --mode supervised, they are one-line errors."""
    import sys

    from test_apply import make_store
    from test_fit_cli import write_qrels

    from madapt_cli import Adaptor
    from madapt_cli.cli import main

    make_store(tmp_path / "store", {"corpus": 60, "queries": 12}, dimension=16)
    qrels = write_qrels(
        tmp_path / "train.tsv", [(f"queries-{i}", f"corpus-{i}", 1) for i in range(12)]
    )

    def run(*args) -> int:
        monkeypatch.setattr(
            sys, "argv", ["madapt", "fit", str(tmp_path / "store"), *map(str, args)]
        )
        try:
            main()
        except SystemExit as done:
            return done.code if isinstance(done.code, int) else 0
        return 0

    common = ["--train-dims", "8,16", "--epochs", "1", "--stage1-epochs", "1", "--topk", "3"]
    supervised = ["--mode", "supervised", "--method", "matryoshka", "--qrels", qrels, *common]
    out = tmp_path / "sup"
    options = ["--distill-weight", "0.5", "--stage1-objective", "distill", "--rank-loss", "softmax"]
    assert run(*supervised, *options, "--out", out) == 0
    settings = Adaptor.load(out).config["hyperparameters"]
    assert settings["distill_weight"] == 0.5 and settings["stage1_objective"] == "distill"
    assert settings["rank_loss"] == "softmax"
    refused = [
        [*supervised, "--distill-weight", "-1"],
        [*supervised, "--stage1-objective", "ranking"],
        [*common, "--distill-weight", "0.5"],
        ["--mode", "supervised", "--qrels", qrels, "--stage1-objective", "distill"],
        [*supervised, "--rank-loss", "listwise"],
        [*common, "--rank-loss", "softmax"],
        [*supervised, "--distill-weight", "auto"],
        [*supervised, "--distill-weight", "half"],
    ]
    errors = []
    for index, args in enumerate(refused):
        bad = tmp_path / f"bad{index}"
        capsys.readouterr()
        assert run(*args, "--out", bad) == 2, args
        errors.append(capsys.readouterr().err)
        assert errors[-1].startswith("error: ") and "Traceback" not in errors[-1]
        assert not bad.exists()
    assert "--distill-weight must be a finite number >= 0" in errors[0]
    assert "need --mode supervised" in errors[2] and "needs --method matryoshka" in errors[3]
    assert "--rank-loss must be 'pairwise', 'softmax' or null" in errors[4]
    assert "--rank-loss needs --mode supervised" in errors[5]
    assert "--distill-weight auto needs --method smec" in errors[6]
    assert "--distill-weight must be a finite number >= 0 or auto, not 'half'" in errors[7]
