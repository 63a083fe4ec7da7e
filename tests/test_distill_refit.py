"""``TrainConfig.distill_held_out`` (``madapt fit --held-out-queries``): "none" trains on
every unlabelled query; "choose" holds some out for the proxy's checkpoint choice; "refit"
lets the proxy choose the epoch count, then trains again from the same start on every
query, the held-out ones included."""

from __future__ import annotations

import json

import numpy as np
import torch
from test_distill import _config as distill_config
from test_eval_cli import make_store, run_cli

from madapt_cli.methods.matryoshka import train_distill
from madapt_cli.training.config import TrainConfig


def _problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    corpus = rng.standard_normal((400, 32)).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((32, 4)))[0]
    queries = (rng.standard_normal((120, 4)) @ basis.T).astype(np.float32)
    return corpus, queries + 0.05 * rng.standard_normal(queries.shape).astype(np.float32)


def _config(**changes) -> TrainConfig:
    """test_distill's small distill settings, with this file's changes."""
    settings = {
        "hidden": 32,
        "distill_topk": 20,
        "distill_random": 8,
        "distill_student_negatives": 4,
        "distill_epochs": 4,
        "distill_batch_size": 32,
        "proxy_fraction": 0.25,
    }
    return distill_config(**{**settings, **changes})


def _outputs(module: torch.nn.Module, corpus: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return module(torch.from_numpy(corpus[:64]))


def test_refit_trains_every_query_for_the_chosen_epochs():
    corpus, queries = _problem()
    held_out = train_distill(corpus, queries, _config())
    refit = train_distill(corpus, queries, _config(distill_held_out="refit"))
    chosen = held_out.best["epoch"]
    assert chosen == 4  # the held-out loss still falls at the last epoch here
    assert refit.best == {**held_out.best, "refit_epochs": chosen}
    stages = [r["stage"] for r in refit.history]
    assert stages == ["distill"] * 5 + ["distill-refit"] * chosen
    assert "held-out kl" not in refit.history[-1]
    # the same start, seed and schedule on all 120 queries: what a fit without any
    # held-out query gives, and not what the 90 training queries alone give
    everything = train_distill(corpus, queries, _config(distill_held_out="none"))
    assert everything.best is None and len(everything.history) == 4  # no proxy: no epoch 0
    assert torch.equal(_outputs(refit.module, corpus), _outputs(everything.module, corpus))
    assert not torch.allclose(_outputs(refit.module, corpus), _outputs(held_out.module, corpus))


def test_refit_follows_the_proxy_epoch_and_leaves_corpus_anchors_alone():
    corpus, queries = _problem()
    # a learning rate far too high: the refit runs as many epochs as the proxy chose
    wild = train_distill(
        corpus, queries, _config(distill_held_out="refit", distill_lr=0.3, distill_epochs=3)
    )
    refits = [r for r in wild.history if r["stage"] == "distill-refit"]
    assert len(refits) == wild.best["epoch"]
    # corpus rows as anchors keep their every-size guard: no refit
    rows = train_distill(corpus, None, _config(distill_held_out="refit", distill_epochs=2))
    assert all(r["stage"] == "distill" for r in rows.history)
    assert "refit_epochs" not in (rows.best or {})


def test_held_out_queries_option(tmp_path, capsys):
    store, _, _ = make_store(tmp_path)
    fit = ("fit", store, "--train-dims", "4,8,16", "--epochs", "3", "--batch-size", "8")
    code, out, err = run_cli(capsys, *fit, "--out", tmp_path / "ad", "--held-out-queries", "refit")
    assert code == 0, err
    config = json.loads((tmp_path / "ad" / "config.json").read_text())
    assert config["held_out_queries"] == "refit"
    assert config["hyperparameters"]["distill_held_out"] == "refit"
    refits = [r for r in config["validation_curve"] if r["stage"] == "distill-refit"]
    assert len(refits) == config["best_validation"]["epoch"]
    said = "then trained again on every query" in " ".join(out.split())
    assert said == bool(refits)
    for option, message in (
        (("--held-out-queries", "some"), "--held-out-queries must be one of none, choose, refit"),
        (("--held-out-queries", "none", "--objective", "paper"), "needs --mode unsupervised"),
    ):
        code, _, err = run_cli(capsys, *fit, "--out", tmp_path / "bad", *option)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()
