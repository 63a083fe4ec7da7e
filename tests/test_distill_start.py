"""The unsupervised distill fit from start_from_dim up gives its start's prefix on every path,
and mixups of the training queries as extra anchors (issue 17, the unsupervised floors)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_distill import _config as _distill_config
from test_distill import _subspace_problem

from madapt_cli.errors import InputError
from madapt_cli.methods.matryoshka import train_distill
from madapt_cli.training.config import TrainConfig


# --- the start's prefix from start_from_dim up ----------------------------------------------------
def test_fit_records_start_from_dim_and_every_path_honours_it(tmp_path, capsys):
    from test_eval_cli import make_store, run_cli

    from madapt_cli.methods.adaptor import Adaptor
    from madapt_cli.pipelines.apply import transform_sizes
    from madapt_cli.pipelines.export import build_core
    from madapt_cli.retrieval.evaluate import ndcg_at_10

    store, qrels_path, (queries, query_ids, corpus, corpus_ids, qrels) = make_store(tmp_path)
    fit = ("--train-dims", "4,8,16", "--epochs", "3", "--batch-size", "16", "--device", "cpu")
    code, out, err = run_cli(capsys, "fit", store, "--out", tmp_path / "ad", *fit)
    assert code == 0, err
    assert "from 16 dims up it gives the untrained start's prefix" in out  # the user is told
    config = json.loads((tmp_path / "ad" / "config.json").read_text())
    assert config["start_from_dim"] == 16  # the smallest power of two >= half of 24
    adaptor = Adaptor.load(tmp_path / "ad")
    # the fit moved f away from its start, else the test proves nothing
    probe = np.random.default_rng(1).standard_normal((50, 24)).astype(np.float32)
    unit = torch.from_numpy(probe / np.linalg.norm(probe, axis=1, keepdims=True))
    with torch.no_grad():
        started, adapted = adaptor.module.start(unit), adaptor.module(unit)
    assert float((started - adapted).abs().max()) > 1e-3
    sized = transform_sizes(adaptor, probe, [4, 8, 16, 24])
    for dim, source in ((4, adapted), (8, adapted), (16, started), (24, started)):
        expected = F.normalize(source[:, :dim], dim=-1).numpy()
        np.testing.assert_allclose(adaptor.transform(probe, dim=dim), expected, atol=1e-6)
        np.testing.assert_allclose(sized[dim], expected, atol=1e-6)
        build_core(adaptor, dim)  # raises when the exported program differs from transform
    # madapt eval (one prefix search per side of start_from_dim) scores what transform gives
    code, out, err = run_cli(
        capsys, "eval", store, "--qrels", qrels_path, "--adaptor", tmp_path / "ad",
        "--dims", "4,8,16,24", "--metrics", "ndcg@10", "--json",
    )  # fmt: skip
    assert code == 0, err
    rows = {r["dim"]: r["metrics"]["ndcg@10"] for r in json.loads(out)["results"]}
    for dim in (4, 8, 16, 24):
        exact = ndcg_at_10(
            adaptor.transform(queries, dim), query_ids, adaptor.transform(corpus, dim),
            corpus_ids, qrels,
        )  # fmt: skip
        assert rows[dim] == pytest.approx(exact, abs=1e-6), dim
    # a bad value is refused on load, naming the file
    config["start_from_dim"] = 25
    (tmp_path / "ad" / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"'start_from_dim' must be a whole number in 1\.\.24"):
        Adaptor.load(tmp_path / "ad")


def test_start_from_dim_off_keeps_f_everywhere():
    from madapt_cli.methods.matryoshka import start_from_dim

    assert start_from_dim(TrainConfig(), 384) == 256
    assert start_from_dim(TrainConfig(distill_start_from=None), 384) is None
    assert start_from_dim(TrainConfig(distill_start_from=1.0), 384) == 384
    assert start_from_dim(TrainConfig(distill_start_from=0.9), 384) == 384
    assert start_from_dim(TrainConfig(), 768) == 512
    assert start_from_dim(TrainConfig(train_dims=[32, 64]), 384) == 256
    with pytest.raises(InputError, match="distill_start_from must be a fraction"):
        TrainConfig(distill_start_from=0.0).validate()


# --- synthetic anchors ----------------------------------------------------------------------------
def test_synthetic_anchors_lie_near_the_queries():
    from madapt_cli.training.anchors import synthetic_anchors

    generator = torch.Generator().manual_seed(7)  # not the anchors' seed: other draws
    queries = F.normalize(torch.randn(40, 64, generator=generator), dim=-1)
    mixed = synthetic_anchors(queries, 3, seed=0)
    assert mixed.shape == (120, 64)
    # a mixup of two nearly orthogonal queries stays close to one of them (a random unit
    # vector's best cosine to 40 random queries is about 0.4)
    assert float((mixed @ queries.T).max(dim=1).values.min()) > 0.55
    assert torch.equal(mixed, synthetic_anchors(queries, 3, seed=0))  # seeded
    assert synthetic_anchors(queries, 0, seed=0).shape == (0, 64)


def test_synthetic_anchors_train():
    corpus, queries = _subspace_problem()
    config = _distill_config(distill_epochs=8, distill_synthetic_anchors=1)
    result = train_distill(corpus, queries, config)
    assert result.best["held-out kl"]["4"] < 0.7 * result.history[0]["held-out kl"]["4"]
