"""The fast training paths equal the slow formulas: one block product for every prefix size,
neighbours gathered by index, the rotated corpus kept once, bf16 only while training."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from madapt_cli import losses
from madapt_cli.losses import (
    ListwiseDistillationLoss,
    PairwiseSimilarityLoss,
    RankingLoss,
    TopKSimilarityLoss,
    prefix_cosine_gathered,
    prefix_cosine_matrix,
    prefix_cosine_pairs,
)
from madapt_cli.methods.matryoshka import new_adaptor_module, train_supervised
from madapt_cli.training import loop
from madapt_cli.training.config import TrainConfig
from madapt_cli.training.distill import distill_train_dims, start_from_dim, train_distill
from madapt_cli.training.loop import training_dtype
from madapt_cli.training.objectives import DistillationObjective, UnsupervisedObjective

DIMS = [3, 8, 16, 5, 32]  # unsorted on purpose; 32 is the full width
ATOL = dict(atol=2e-6, rtol=2e-5)


def _slow_matrix(a: torch.Tensor, b: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """The old formula: one normalise-and-multiply per size."""
    normal = [(F.normalize(a[:, :m], dim=-1), F.normalize(b[:, :m], dim=-1)) for m in dims]
    return torch.stack([x @ y.T for x, y in normal])


def _slow_pairs(a: torch.Tensor, b: torch.Tensor, dims: list[int]) -> torch.Tensor:
    return torch.stack(
        [F.cosine_similarity(a[..., :m], b[..., :m], dim=-1, eps=1e-8) for m in dims], -1
    )


def test_every_size_from_one_pass_equals_one_pass_per_size():
    torch.manual_seed(0)
    a, b = torch.randn(7, 32), torch.randn(11, 32)
    torch.testing.assert_close(prefix_cosine_matrix(a, b, DIMS), _slow_matrix(a, b, DIMS), **ATOL)
    c = torch.randn(7, 32)
    torch.testing.assert_close(prefix_cosine_pairs(a, c, DIMS), _slow_pairs(a, c, DIMS), **ATOL)


@pytest.mark.parametrize("ratio", [64, 0])  # 64: block products gathered; 0: the copy
def test_gathered_cosines_and_gradients_equal_the_copied_candidates(monkeypatch, ratio):
    monkeypatch.setattr(losses, "_GATHER_RATIO", ratio)
    torch.manual_seed(1)
    anchors = torch.randn(6, 32, requires_grad=True)
    rows = torch.randn(20, 32, requires_grad=True)
    index = torch.randint(20, (6, 9))
    fast = prefix_cosine_gathered(anchors, rows, index, DIMS)
    slow = _slow_pairs(anchors.unsqueeze(1).expand(6, 9, 32), rows[index], DIMS)
    torch.testing.assert_close(fast, slow, **ATOL)
    weights = torch.randn_like(fast)
    fast_grads = torch.autograd.grad((fast * weights).sum(), [anchors, rows])
    slow_grads = torch.autograd.grad((slow * weights).sum(), [anchors, rows])
    for fast_grad, slow_grad in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(fast_grad, slow_grad, atol=1e-5, rtol=1e-4)


def test_each_loss_equals_its_slow_reference_formula_at_every_size():
    torch.manual_seed(2)
    original = F.normalize(torch.randn(9, 32), dim=-1)
    adapted = original + 0.3 * torch.randn(9, 32)
    weights = [1.0, 2.0, 0.5, 1.0, 3.0]
    w = torch.tensor(weights) / sum(weights)
    off = 1.0 - torch.eye(9)
    gaps = (original @ original.T - _slow_matrix(adapted, adapted, DIMS)).abs() * off
    expected = (gaps.sum(dim=(1, 2)) * w).sum() / (9 * 8)
    pair = PairwiseSimilarityLoss(DIMS, weights)(original, adapted)
    torch.testing.assert_close(pair, expected, **ATOL)

    rows, index = torch.randn(15, 32), torch.randint(15, (9, 4))
    target = torch.rand(9, 4)
    slow = _slow_pairs(adapted.unsqueeze(1).expand(9, 4, 32), rows[index], DIMS)
    expected = ((target.unsqueeze(-1) - slow).abs().mean(dim=(0, 1)) * w).sum()
    topk = TopKSimilarityLoss(DIMS, weights)
    torch.testing.assert_close(topk(adapted, rows[index], target), expected, **ATOL)
    torch.testing.assert_close(topk.gathered(adapted, rows, index, target), expected, **ATOL)

    valid = torch.rand(9, 4) > 0.2
    teacher = torch.rand(9, 4)
    log_p = F.log_softmax((teacher / 0.05).masked_fill(~valid, -1e4), -1)
    q = F.log_softmax((slow / 0.05).movedim(-1, 0).masked_fill(~valid, -1e4), -1)
    expected = ((log_p.exp() * (log_p - q)).sum(-1).mean(-1) * w).sum()
    distill = ListwiseDistillationLoss(DIMS, 0.05, weights)
    torch.testing.assert_close(distill(adapted, rows[index], teacher, valid), expected, **ATOL)
    gathered = distill.gathered(adapted, rows, index, teacher, valid)
    torch.testing.assert_close(gathered, expected, **ATOL)


def test_ranking_loss_equals_the_per_size_formula():
    torch.manual_seed(3)
    queries, documents = torch.randn(4, 32), torch.randn(10, 32)
    relevance = (torch.rand(4, 10) > 0.6).float() * torch.randint(1, 3, (4, 10))
    relevance[0, 0] = 2.0
    total, pairs = torch.zeros(len(DIMS)), 0
    scores = _slow_matrix(queries, documents, DIMS)
    for i in range(4):
        for j in range(10):
            for k in range(10):
                if relevance[i, j] > relevance[i, k]:
                    gap = relevance[i, j] - relevance[i, k]
                    total += gap * F.softplus((scores[:, i, k] - scores[:, i, j]) / 0.05)
                    pairs += 1
    expected = total.mean() / pairs  # equal size weights
    loss = RankingLoss(DIMS, temperature=0.05, max_better=10)(queries, documents, relevance)
    torch.testing.assert_close(loss, expected, **ATOL)


def _corpus(n: int = 60, d: int = 32, seed: int = 4) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _trained_module(corpus: torch.Tensor) -> torch.nn.Module:
    module = new_adaptor_module(corpus, TrainConfig(hidden=16, seed=0))
    with torch.no_grad():  # a non-zero g, so f is not the rotation alone
        for parameter in module.g.parameters():
            parameter.normal_(0.0, 0.2)
    return module


def test_objectives_equal_the_copying_formulas():
    corpus = _corpus()
    module = _trained_module(corpus)
    dims = [4, 8, 32]
    objective = UnsupervisedObjective(corpus, dims, 5, {"topk": 1.0, "pair": 0.5, "rec": 0.2})
    batch = torch.tensor([0, 3, 7, 3, 59])
    neighbours = objective.neighbours[batch]
    adapted = module(corpus[batch])
    expected = TopKSimilarityLoss(dims)(
        adapted, module(corpus[neighbours]), objective.neighbour_scores[batch]
    )
    expected = expected + 0.5 * PairwiseSimilarityLoss(dims)(corpus[batch], adapted)
    rows = torch.unique(torch.cat([batch, neighbours.flatten()]))
    expected = expected + 0.2 * (module(corpus[rows]) - module.start(corpus[rows])).abs().mean()
    torch.testing.assert_close(objective(module, batch), expected, **ATOL)

    config = TrainConfig(distill_topk=6, distill_random=5)
    anchors = _corpus(12, seed=5)
    distill = DistillationObjective(corpus, anchors, dims, config)
    batch = torch.tensor([1, 2, 11])
    rows, teacher, valid = distill.candidates(batch, torch.Generator().manual_seed(9))
    documents = module(corpus[rows.clamp_min(0)])
    expected = distill.loss(module(anchors[batch]), documents, teacher, valid)
    found = distill(module, batch, torch.Generator().manual_seed(9))
    torch.testing.assert_close(found, expected, **ATOL)


def test_the_rotated_corpus_is_kept_once_and_follows_the_rotation():
    corpus = _corpus()
    module = _trained_module(corpus)
    rows = torch.tensor([5, 1, 5])
    torch.testing.assert_close(module.start_of(corpus, rows), module.start(corpus[rows]))
    with torch.no_grad():
        module.rotation.copy_(torch.eye(32))  # a new rotation (e.g. a restored state)
    torch.testing.assert_close(module.start_of(corpus, rows), corpus[rows])
    module.forget_start()
    assert module._started is None


def test_bf16_trains_in_reduced_precision_and_evaluates_in_float32():
    assert training_dtype("auto", torch.device("cpu")) is None
    assert training_dtype("fp32", torch.device("cuda")) is None
    assert training_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    corpus = _corpus()
    module = _trained_module(corpus)
    module.autocast_dtype = torch.bfloat16
    module.train()
    reduced = module(corpus)
    module.eval()
    exact = module(corpus)
    assert reduced.dtype == exact.dtype == torch.float32
    gap = (reduced - exact).abs().max().item()
    assert 0 < gap < 0.05  # bf16 arithmetic in training only
    module.autocast_dtype = None
    module.train()
    torch.testing.assert_close(module(corpus), exact)


def test_a_bf16_fit_learns_and_leaves_a_float32_module():
    corpus = _corpus(200, 32, seed=6).numpy()
    queries = _corpus(40, 32, seed=7).numpy()
    losses_seen = {}
    for precision in ("fp32", "bf16"):
        config = TrainConfig(hidden=32, distill_epochs=3, seed=0, device="cpu")
        config.distill_topk, config.distill_random, config.train_dims = 20, 8, [4, 8, 32]
        config.precision = precision
        result = train_distill(corpus, queries, config)
        assert result.module.autocast_dtype is None and result.module._started is None
        losses_seen[precision] = [r["loss"] for r in result.history if r["loss"] is not None]
    assert losses_seen["bf16"][-1] < losses_seen["bf16"][0]
    assert losses_seen["bf16"][0] == pytest.approx(losses_seen["fp32"][0], rel=0.05)


def test_auto_trains_in_bf16_on_a_cpu_only_where_the_objective_allows_and_it_is_native(
    monkeypatch,
):
    cpu = torch.device("cpu")
    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: True)
    assert training_dtype("auto", cpu, bf16_on_cpu=True) is torch.bfloat16
    assert training_dtype("auto", cpu) is None  # e.g. the supervised stage
    assert training_dtype("fp32", cpu, bf16_on_cpu=True) is None
    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: False)
    assert training_dtype("auto", cpu, bf16_on_cpu=True) is None


@pytest.mark.parametrize("native", [True, False])
def test_each_epoch_record_says_what_arithmetic_trained_it(monkeypatch, native):
    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: native)
    corpus = _corpus(120, 16, seed=3).numpy()
    queries = _corpus(30, 16, seed=4).numpy()
    config = TrainConfig(hidden=16, distill_epochs=1, seed=0, device="cpu")
    config.distill_topk, config.distill_random, config.train_dims = 10, 4, [4, 16]
    distilled = train_distill(corpus, queries, config)
    assert {r["precision"] for r in distilled.history} == {"bf16" if native else "fp32"}
    config = TrainConfig(hidden=16, epochs=1, supervised_epochs=1, seed=0, device="cpu")
    config.train_dims, config.hard_negatives = [4, 16], 5
    ids = [f"d{i}" for i in range(len(corpus))]
    qids = [f"q{i}" for i in range(len(queries))]
    qrels = {q: {ids[i]: 1} for i, q in enumerate(qids)}
    supervised = train_supervised(corpus, ids, queries, qids, qrels, config)
    assert {r["precision"] for r in supervised.history} == {"fp32"}  # measured to move


def test_fit_refuses_bf16_on_a_cpu_without_it_before_any_work(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from madapt_cli.cli import app
    from madapt_cli.util import cpu

    monkeypatch.setattr(cpu, "cpu_has_bf16", lambda: False)
    args = ["fit", str(tmp_path / "nope"), "--device", "cpu", "--precision", "bf16"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "ad")])
    assert result.exit_code == 2, result.output
    assert "--precision bf16 needs a GPU or a CPU with native bfloat16" in result.stderr
    assert not (tmp_path / "ad").exists()


def _cut_module(corpus: torch.Tensor, width: int) -> torch.nn.Module:
    """A trained-looking module whose last layer has rows only below ``width``."""
    module = _trained_module(corpus)
    with torch.no_grad():
        module.g[-1].weight[width:] = 0.0
        module.g[-1].bias[width:] = 0.0
    return module


def test_the_cut_last_layer_gives_f_and_trains_only_its_rows():
    corpus = _corpus()
    module = _cut_module(corpus, 8)
    full = module(corpus)
    assert module.cut_to(8)
    cut = module(corpus)
    torch.testing.assert_close(cut, full, **ATOL)
    assert torch.equal(cut[:, 8:], module.start(corpus)[:, 8:])  # the start's, exactly
    cut[:, :8].pow(2).sum().backward()
    grad = module.g[-1].weight.grad
    assert grad[:8].abs().sum() > 0 and not grad[8:].any()
    module.cut_to(None)
    assert module.width is None


def test_the_cut_is_refused_when_the_rows_beyond_it_were_trained():
    module = _trained_module(_corpus())  # every row of the last layer non-zero
    assert not module.cut_to(8)
    assert module.width is None


def test_a_cut_fit_equals_the_uncut_fit():
    corpus = _corpus(200, 32, seed=6).numpy()
    queries = _corpus(40, 32, seed=7).numpy()
    config = TrainConfig(hidden=32, distill_epochs=2, seed=0, device="cpu", precision="fp32")
    config.distill_topk, config.distill_random, config.train_dims = 20, 8, [4, 8]
    cut = train_distill(corpus, queries, config).module
    uncut_config = replace(config, train_dims=[4, 8, 32], distill_size_weights=[1.0, 1.0, 0.0])
    uncut = train_distill(corpus, queries, uncut_config).module
    for name, value in uncut.state_dict().items():
        torch.testing.assert_close(cut.state_dict()[name], value, atol=1e-5, rtol=1e-4)
    assert cut.g[-1].weight[:8].any()  # it trained, so the equality says something
    assert not cut.g[-1].weight[8:].any() and cut.width is None


def test_distill_trains_only_the_sizes_below_where_the_start_takes_over():
    corpus = _corpus(200, 128, seed=6).numpy()
    queries = _corpus(40, 128, seed=7).numpy()
    config = TrainConfig(hidden=32, distill_epochs=1, seed=0, device="cpu", proxy_fraction=0.0)
    config.distill_topk, config.distill_random = 20, 8
    assert distill_train_dims(384, start_from_dim(config, 384)) == [32, 64, 128]
    assert distill_train_dims(384) == [32, 64, 128, 256, 384]
    result = train_distill(corpus, queries, config)  # the start from 64 up: trains 32 alone
    last = result.module.g[-1].weight
    assert last[:32].any() and not last[32:].any()


def test_the_held_out_kl_from_the_adapted_corpus_equals_the_one_it_computes():
    corpus = _corpus(80, 32, seed=2)
    anchors = _corpus(12, 32, seed=3)
    module = _trained_module(corpus).eval()
    config = TrainConfig(distill_topk=10, distill_random=6)
    objective = DistillationObjective(corpus, anchors, [4, 8, 16], config)
    with torch.no_grad():
        adapted = (module(corpus), module(anchors))
    given = objective.held_out_kl(module, adapted)
    computed = objective.held_out_kl(module)
    assert given == pytest.approx(computed, rel=1e-5, abs=1e-7)
    assert all(value > 0 for value in given.values())


def test_f_of_the_corpus_is_kept_until_an_optimizer_step_changes_the_weights():
    corpus = _corpus()
    module = _trained_module(corpus).eval()
    first = module.adapted_corpus(corpus)
    assert module.adapted_corpus(corpus) is first  # the same weights: kept
    torch.testing.assert_close(first, module(corpus))
    optimizer = torch.optim.AdamW(module.parameters(), lr=0.1)
    module(corpus).sum().backward()
    optimizer.step()
    second = module.adapted_corpus(corpus)
    assert second is not first and not torch.allclose(second, first)
    torch.testing.assert_close(second, module(corpus))
    module.load_state_dict(_trained_module(corpus).state_dict())  # e.g. the best checkpoint
    torch.testing.assert_close(module.adapted_corpus(corpus), module(corpus))
    module.forget_start()
    assert module._adapted is None and module._started is None


def test_madapt_fit_trains_the_distill_sizes_below_where_the_start_takes_over(tmp_path):
    from test_apply import make_store

    from madapt_cli.pipelines.fit import fit_store

    make_store(tmp_path / "store", {"corpus": 300, "queries": 40}, dimension=128)
    config = TrainConfig(distill_epochs=1, hidden=16, device="cpu", distill_topk=20)
    adaptor = fit_store(tmp_path / "store", tmp_path / "ad", config=config)
    assert adaptor.config["start_from_dim"] == 64
    assert adaptor.config["train_dims"] == [32]  # what distill_train_dims(128, 64) gives
    assert not adaptor.module.g[-1].weight[32:].any()  # g's other rows never computed
