"""L_distill's per-size temperatures and calibrated student scales, and the cosine fidelity
guard of the large prefixes (issue 17, the unsupervised floors)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from madapt_cli.errors import InputError
from madapt_cli.losses import CosineFidelityLoss, ListwiseDistillationLoss, prefix_cosine_pairs
from madapt_cli.methods.matryoshka import train_distill
from madapt_cli.training.config import TrainConfig


def _candidates(seed: int = 0, batch: int = 6, count: int = 12, dim: int = 16):
    generator = torch.Generator().manual_seed(seed)
    anchors = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1)
    candidates = F.normalize(torch.randn(batch, count, dim, generator=generator), dim=-1)
    teacher = (anchors.unsqueeze(1) * candidates).sum(-1)
    return anchors, candidates, teacher


def _kl_at(cosines: torch.Tensor, teacher: torch.Tensor, tau: float, scale: float) -> float:
    log_p = F.log_softmax(teacher / tau, -1)
    log_q = F.log_softmax(scale * cosines / tau, -1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


# --- the loss ---------------------------------------------------------------------------------
def test_size_temperatures_score_each_size_at_its_own_tau():
    anchors, candidates, teacher = _candidates()
    dims = [4, 8, 16]
    loss = ListwiseDistillationLoss(dims, 0.05, size_temperatures=[0.02, 0.05, 0.1])
    per_size = loss.per_size(anchors, candidates, teacher)
    cosines = prefix_cosine_pairs(anchors.unsqueeze(1).expand_as(candidates), candidates, dims)
    for k, tau in enumerate([0.02, 0.05, 0.1]):
        assert float(per_size[k]) == pytest.approx(_kl_at(cosines[..., k], teacher, tau, 1.0))
    # a copy restricted to one size (as the quantisation-aware wrapper makes) keeps its tau
    single = copy.deepcopy(loss)
    single.dims = [4]
    single.size_weights = torch.ones(1)
    assert float(single.per_size(anchors, candidates, teacher)[0]) == pytest.approx(
        float(per_size[0])
    )
    with pytest.raises(ValueError, match="one temperature per size"):
        ListwiseDistillationLoss(dims, 0.05, size_temperatures=[0.02])


def test_calibrated_scale_is_the_kl_minimum():
    anchors, candidates, teacher = _candidates()
    dims = [4, 8, 16]
    loss = ListwiseDistillationLoss(dims, 0.05)
    cosines = prefix_cosine_pairs(anchors.unsqueeze(1).expand_as(candidates), candidates, dims)
    cosines[..., 2] = 0.5 * teacher  # full size: the teacher's logits at half their spread
    before = loss.per_size_from_cosines(cosines, teacher, None)
    scales = loss.calibrate_scales(cosines, teacher, None)
    after = loss.per_size_from_cosines(cosines, teacher, None)
    assert scales[16] == pytest.approx(2.0, rel=1e-4)
    assert float(after[2]) == pytest.approx(0.0, abs=1e-6)
    grid = np.exp(np.linspace(-2.5, 2.5, 401))
    for k, m in enumerate(dims):
        assert float(after[k]) <= float(before[k]) + 1e-6
        best = min(_kl_at(cosines[..., k], teacher, 0.05, s) for s in grid)
        assert float(after[k]) <= best + 1e-4  # no grid point beats Newton's answer
        assert scales[m] != 1.0
    # training uses the calibrated scales: the loss of the student is the calibrated one
    assert float(loss.per_size_from_cosines(cosines, teacher, None)[0]) == pytest.approx(
        float(after[0])
    )


def test_fidelity_is_zero_for_the_originals_and_ignores_masked_candidates():
    anchors, candidates, teacher = _candidates(count=10)
    rows = candidates[0]  # (10, D): every anchor's candidates are these rows
    index = torch.arange(10).expand(6, 10)
    teacher = anchors @ rows.T
    fidelity = CosineFidelityLoss([16])
    assert float(fidelity.gathered(anchors, rows, index, teacher)) == pytest.approx(0, abs=1e-6)
    # an 8-dim prefix departs from the full-size cosines: positive
    assert float(CosineFidelityLoss([8]).gathered(anchors, rows, index, teacher)) > 0.01
    wrong = teacher.clone()
    wrong[:, -3:] += 1.0
    valid = torch.ones(6, 10, dtype=torch.bool)
    valid[:, -3:] = False
    assert float(fidelity.gathered(anchors, rows, index, wrong, valid)) == pytest.approx(
        0, abs=1e-6
    )
    assert float(fidelity.gathered(anchors, rows, index, wrong)) > 0.1


# --- training -----------------------------------------------------------------------------------
def _subspace_problem(seed: int = 0):
    """Isotropic corpus; queries in a random 4-dim subspace (as in test_distill.py)."""
    rng = np.random.default_rng(seed)
    corpus = rng.standard_normal((600, 32)).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((32, 4)))[0]
    queries = (rng.standard_normal((300, 4)) @ basis.T).astype(np.float32)
    queries += 0.05 * rng.standard_normal(queries.shape).astype(np.float32)
    return corpus, queries


def _config(**changes) -> TrainConfig:
    settings = dict(
        train_dims=[4, 8, 32],
        device="cpu",
        hidden=64,
        distill_topk=30,
        distill_random=16,
        distill_epochs=8,
        distill_lr=3e-3,
        batch_size=64,
        patience=100,
    )
    settings.update(changes)
    return TrainConfig(**settings)


def _full_size_gap(module: torch.nn.Module, corpus: np.ndarray, queries: np.ndarray) -> float:
    """Mean |sim(q, d) - sim(f(q), f(d))| over each query's 30 nearest corpus rows."""
    docs = F.normalize(torch.from_numpy(corpus), dim=-1)
    anchors = F.normalize(torch.from_numpy(queries), dim=-1)
    teacher, index = (anchors @ docs.T).topk(30, dim=1)
    with torch.no_grad():
        fidelity = CosineFidelityLoss([docs.shape[1]])
        return float(fidelity.gathered(module(anchors), module(docs), index, teacher))


def test_fidelity_keeps_the_full_size_cosines_closer_to_the_originals():
    corpus, queries = _subspace_problem()
    free = train_distill(corpus, queries, _config())
    guarded = train_distill(corpus, queries, _config(distill_fidelity_weight=3.0))
    assert _full_size_gap(guarded.module, corpus, queries) < 0.7 * _full_size_gap(
        free.module, corpus, queries
    )
    # and the small prefix still learns
    assert guarded.best["held-out kl"]["4"] < 0.8 * guarded.history[0]["held-out kl"]["4"]


def test_student_scale_trains_and_size_temperatures_are_checked():
    corpus, queries = _subspace_problem()
    result = train_distill(corpus, queries, _config(distill_student_scale=True))
    start, best = result.history[0], result.best
    # both KLs at each one's best scale, so the start's is already lower than unscaled
    assert best["held-out kl"]["4"] < 0.9 * start["held-out kl"]["4"]
    with pytest.raises(InputError, match="distill_size_temperatures has 2 temperatures for 3"):
        train_distill(corpus, queries, _config(distill_size_temperatures=[0.02, 0.05]))
    with pytest.raises(InputError, match="distill_size_temperatures must be positive"):
        _config(distill_size_temperatures=[0.02, -1.0, 0.05]).validate()
    with pytest.raises(InputError, match="distill_fidelity_weight must be"):
        _config(distill_fidelity_weight=float("nan")).validate()


# --- the start's prefix from start_from_dim up ----------------------------------------------------
def test_fit_records_start_from_dim_and_every_path_honours_it(tmp_path, capsys):
    from test_eval_cli import make_store, run_cli

    from madapt_cli.methods.adaptor import Adaptor
    from madapt_cli.pipelines.apply import transform_sizes
    from madapt_cli.pipelines.export import build_core

    store, _, _ = make_store(tmp_path)
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
    noisy = synthetic_anchors(queries, 2, "noise", seed=0)
    assert noisy.shape == (80, 64)
    assert torch.allclose(noisy.norm(dim=-1), torch.ones(80), atol=1e-5)
    closeness = (noisy.view(2, 40, 64) * queries).sum(-1)  # each to the query it came from
    assert float(closeness.min()) > 0.8 and float(closeness.max()) < 0.97
    mixed = synthetic_anchors(queries, 3, "mix", seed=0)
    assert mixed.shape == (120, 64)
    # a mixup of two nearly orthogonal queries stays close to one of them (a random unit
    # vector's best cosine to 40 random queries is about 0.4)
    assert float((mixed @ queries.T).max(dim=1).values.min()) > 0.55
    assert torch.equal(mixed, synthetic_anchors(queries, 3, "mix", seed=0))  # seeded
    with pytest.raises(InputError, match="unknown synthetic anchor kind"):
        synthetic_anchors(queries, 1, "titles", seed=0)


def test_synthetic_anchors_train():
    corpus, queries = _subspace_problem()
    config = _config(distill_synthetic_anchors=1, distill_synthetic_kind="noise")
    result = train_distill(corpus, queries, config)
    assert result.best["held-out kl"]["4"] < 0.7 * result.history[0]["held-out kl"]["4"]
