"""SMEC's supervised fit: the ranking loss (and L_distill) on masked vectors with S-XBM as
its only regulariser (no corpus top-k mined for the Matryoshka-Adaptor's regularisers), and
the L_distill weight chosen on the held-out training queries."""

from __future__ import annotations

import copy

import pytest
import torch
from test_training import _hidden_signal, signal_config, smec_on_signal

import madapt_cli.training.objectives as objectives
from madapt_cli.errors import InputError
from madapt_cli.methods.matryoshka import new_adaptor_module
from madapt_cli.methods.smec import distill_choices, trained_distill_weight
from madapt_cli.training.config import TrainConfig, TrainResult
from madapt_cli.training.objectives import SupervisedObjective
from madapt_cli.training.validation import split_training_queries, training_queries


@pytest.fixture
def one_thread():
    """One torch thread: bit-for-bit equal fits need the same summation order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def mined(monkeypatch):
    """Every top-k mining of the objectives: (rows searched, corpus rows, exclude_self)."""
    calls: list[tuple[int, int, bool]] = []
    original = objectives.mine_topk

    def recording(queries, corpus, k, exclude_self=False):
        calls.append((len(queries), len(corpus), exclude_self))
        return original(queries, corpus, k, exclude_self=exclude_self)

    monkeypatch.setattr(objectives, "mine_topk", recording)
    return calls


def _objective(regularise: bool, data: dict, config, dims=(8, 32)):
    train_ids, _ = split_training_queries(
        data["doc_ids"], data["queries"], data["query_ids"], data["qrels"], None, config
    )
    queries, judgments = training_queries(
        data["doc_ids"], data["queries"], data["query_ids"], data["qrels"], train_ids, "cpu"
    )
    corpus = torch.nn.functional.normalize(torch.from_numpy(data["docs"]), dim=-1)
    return SupervisedObjective(
        corpus,
        queries,
        judgments,
        list(dims),
        config,
        config.weights("supervised"),
        torch.Generator().manual_seed(1),
        regularise=regularise,
    )


def test_smec_mines_no_corpus_topk_and_still_learns(mined):
    data = _hidden_signal(n=120)
    config = signal_config(supervised_epochs=2, train_dims=[8, 16])
    smec_on_signal(data, config)
    # the training queries' hard negatives only: never the corpus against itself
    assert mined and all(not exclude_self for _, _, exclude_self in mined)
    assert all(rows < len(data["docs"]) for rows, _, _ in mined)


def test_without_regularisers_the_loss_is_the_ranking_loss_alone(mined):
    torch.manual_seed(0)
    data = _hidden_signal(n=120)
    config = signal_config()
    plain, regularised = _objective(False, data, config), _objective(True, data, config)
    assert plain.unsupervised is None and regularised.unsupervised is not None
    assert [exclude for _, _, exclude in mined] == [False, False, True]  # only the second
    module = new_adaptor_module(plain.corpus, config)
    with torch.no_grad():  # away from the identity, where the regularisers are all 0
        for parameter in module.g.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape))
    batch, corpus_batch = torch.arange(16), torch.arange(40)
    with_terms = regularised(module, batch, corpus_batch)
    alone = plain(module, batch, corpus_batch)
    terms = regularised.unsupervised.terms(module, corpus_batch, regularised.weights)
    # both objectives drew the same candidates (same generator seed, same first draw)
    torch.testing.assert_close(alone + terms, with_terms)
    assert float(terms.detach()) > 0


def _smec(data: dict, **changes):
    config = signal_config(
        **{
            "supervised_epochs": 3,
            "train_dims": [8, 16],
            "distill_topk": 20,
            **changes,
        }
    )
    config.distill_random = 8
    return smec_on_signal(data, config)


def test_distill_weight_is_chosen_on_the_held_out_queries(one_thread):
    """With two candidate weights, both fits run from the same start and the one with the
    better held-out score is kept, bit for bit the fit at that weight alone."""
    data = _hidden_signal(n=120)
    chosen = _smec(data, smec_distill_choices=[0.0, 0.5])
    stages = {record["stage"] for record in chosen.history}
    assert stages == {"smec 16,8 distill 0", "smec 16,8 distill 0.5"}
    finals = {
        weight: max(r["score"] for r in chosen.history if r["stage"].endswith(f" {weight:g}"))
        for weight in (0.0, 0.5)
    }
    weight = chosen.best["distill_weight"]
    assert finals[weight] == max(finals.values()) == chosen.best["score"]
    alone = _smec(data, distill_weight=weight, smec_distill_choices=None)
    for a, b in zip(
        chosen.module.state_dict().values(), alone.module.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    # an explicit weight (--distill-weight) is one fit, whatever the choices say
    fixed = _smec(data, distill_weight=0.5, smec_distill_choices=[0.0, 0.5])
    assert {record["stage"] for record in fixed.history} == {"smec 16,8"}


def test_auto_keeps_weight_0_where_the_full_size_ranking_is_noise(one_thread):
    """--distill-weight auto (choices 0 and 1): on data whose full-size ranking the 24 noise
    coordinates dominate, L_distill teaches noise, and the held-out choice drops it."""
    config = signal_config(supervised_epochs=10, lr=1e-2, smec_distill_choices=[0.0, 1.0])
    result = smec_on_signal(_hidden_signal(n=200), config)
    assert result.best["distill_weight"] == 0.0
    at_8 = {
        weight: max(r["ndcg@10"]["8"] for r in result.history if r["stage"].endswith(weight))
        for weight in ("distill 0", "distill 1")
    }
    assert at_8["distill 0"] > at_8["distill 1"] + 0.2


def test_the_recorded_weight_is_the_one_trained():
    """Without held-out queries (a handful of judged queries) there is no checkpoint record
    to carry the weight: config.json still says the weight the fit trained with."""
    unvalidated = TrainResult(module=None, history=[], best=None)
    assert trained_distill_weight(unvalidated, TrainConfig()) == 1.0  # the only candidate
    several = TrainConfig(smec_distill_choices=[0.0, 1.0])  # no choice made: config's weight
    assert trained_distill_weight(unvalidated, several) == 0.0
    chosen = TrainResult(module=None, history=[], best={"score": 0.5, "distill_weight": 0.0})
    assert trained_distill_weight(chosen, TrainConfig()) == 0.0


def test_distill_choices_and_their_check():
    assert distill_choices(TrainConfig()) == [1.0]  # one fit, chosen on held-out queries
    assert distill_choices(TrainConfig(smec_distill_choices=[1.0, 0.0])) == [0.0, 1.0]
    assert distill_choices(TrainConfig(distill_weight=0.5)) == []
    with pytest.raises(InputError, match=r"TrainConfig\.smec_distill_choices must be"):
        TrainConfig(smec_distill_choices=[-1.0]).validate("supervised")


def test_prefix_sizes_in_one_pass_equal_the_masked_sizes():
    """Without ADS each stage size is a prefix of one order, so the rank, distillation and
    memory terms take every size in one pass; that step's loss and gradients equal the
    per-size masked computation (the path ADS needs)."""
    from madapt_cli.methods.smec import SMECOptions, _stage_step, new_smec_module

    torch.manual_seed(0)
    data = _hidden_signal(n=120)
    config = signal_config(distill_weight=1.0, distill_topk=20, train_dims=[4, 8, 16])
    config.distill_random = 8
    objective = _objective(False, data, config, dims=[32])
    module = new_smec_module(objective.corpus, config)
    module.add_stage([16, 8, 4], ads=False)
    module.freeze_all_but(0)
    module.permutation.copy_(torch.randperm(32))  # an order other than the identity
    with torch.no_grad():
        for parameter in module.stages[0].parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape))
    prefix, _ = _stage_step(module, 0, objective.corpus, objective, config, SMECOptions(), 2)
    masked = copy.deepcopy(prefix)
    masked.module.prefix_order = lambda index: None  # force the per-size masks
    losses, grads = [], []
    for step in (prefix, masked):
        loss = step(torch.Generator().manual_seed(3))
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad for p in step.module.stages[0].parameters() if p.grad is not None])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    assert grads[0] and len(grads[0]) == len(grads[1])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_smec_stage_computes_only_its_largest_size_and_fits_as_without_the_cut(
    monkeypatch, one_thread
):
    """Without ADS a stage reads prefixes up to its largest size, so its g computes only
    those outputs (SMECModule.cut_to); the fit equals the uncut fit, and the rows of g
    beyond the cut stay zero."""
    from madapt_cli.methods.smec_module import SMECModule

    data = _hidden_signal(n=160)
    config = signal_config(
        supervised_epochs=2, distill_weight=1.0, distill_topk=20, train_dims=[4, 8, 16]
    )
    widths: list[int | None] = []
    original = SMECModule.cut_to

    def recording(self, width):
        widths.append(width if original(self, width) else "refused")
        return widths[-1] != "refused"

    monkeypatch.setattr(SMECModule, "cut_to", recording)
    cut = smec_on_signal(data, config).module
    assert widths == [16, None]  # the one stage (sizes 16, 8, 4) was cut to 16
    monkeypatch.setattr(SMECModule, "cut_to", lambda self, width: width is None)
    uncut = smec_on_signal(data, copy.deepcopy(config)).module
    for name, value in uncut.state_dict().items():
        torch.testing.assert_close(cut.state_dict()[name], value, atol=1e-5, rtol=1e-4)
    last = cut.stages[0].residual.g[-1]
    assert last.weight[:16].any() and not last.weight[16:].any() and not last.bias[16:].any()


def test_a_bf16_smec_fit_trains_in_reduced_precision_and_evaluates_in_float32(one_thread):
    data = _hidden_signal(n=160)
    config = signal_config(
        supervised_epochs=2, distill_weight=1.0, distill_topk=20, train_dims=[4, 8, 16]
    )
    config.precision = "bf16"
    result = smec_on_signal(data, config)
    assert {r["precision"] for r in result.history} == {"bf16"}
    module = result.module
    assert module.autocast_dtype is None and not module.training
    vectors = torch.nn.functional.normalize(torch.from_numpy(data["docs"]), dim=-1)
    exact = module(vectors)
    module.autocast_dtype = torch.bfloat16
    assert torch.equal(module(vectors), exact)  # evaluation stays float32
    module.train()
    reduced = module(vectors)
    assert reduced.dtype == torch.float32
    assert 0 < (reduced - exact).abs().max().item() < 0.05


@pytest.mark.parametrize("native", [True, False])
def test_auto_trains_supervised_smec_in_bf16_on_a_cpu_that_has_it(monkeypatch, native):
    import madapt_cli.training.loop as loop

    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: native)
    data = _hidden_signal(n=120)
    config = signal_config(supervised_epochs=1, train_dims=[4, 8, 16])
    assert config.precision == "auto"
    result = smec_on_signal(data, config)
    assert {r["precision"] for r in result.history} == {"bf16" if native else "fp32"}
