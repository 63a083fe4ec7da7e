"""SMEC (`madapt fit --method smec`): selection fold, memory, staged freezing, Gumbel top-k,
CLI errors. Tiny synthetic data; seconds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_eval_cli import make_store, run_cli

from madapt_cli.errors import InputError
from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.methods.smec import SMECOptions, stage_sizes, train_smec
from madapt_cli.methods.smec_module import (
    CrossBatchMemory,
    DimensionSelector,
    SMECModule,
    gumbel_topk_masks,
)
from madapt_cli.training.config import TrainConfig

ARCH = {"hidden": 12, "depth": 2, "activation": "gelu"}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial weights (a fresh stage is the identity) and distinct selector logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


def test_stage_sizes_halve_by_powers_of_two_down_to_the_target():
    assert stage_sizes(384, 32) == [256, 128, 64, 32]
    assert stage_sizes(64, 32) == [32]
    assert stage_sizes(384, 48, [64, 128, 384]) == [128, 64, 48]
    with pytest.raises(InputError, match=r"--to-dim 64 must be in 1\.\.63"):
        stage_sizes(64, 64)


def test_gumbel_straight_through_keeps_exactly_k_and_passes_gradient_to_logits():
    torch.manual_seed(0)
    logits = torch.randn(20, requires_grad=True)
    masks = gumbel_topk_masks(logits, [10, 4], temperature=0.5)
    assert masks.shape == (2, 20)
    assert [int((m != 0).sum()) for m in masks] == [10, 4]
    torch.testing.assert_close(masks.detach(), masks.detach().round())  # hard 0/1 forward
    assert bool(((masks[1] != 0) <= (masks[0] != 0)).all())  # nested: the 4 are among the 10
    weights = torch.linspace(-1.0, 1.0, 20)
    (masks * weights).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # with the noise annealed away, the hard mask is the top-k of the logits
    low = gumbel_topk_masks(logits.detach(), [5], temperature=1e-6)[0]
    assert set(torch.nonzero(low).flatten().tolist()) == set(logits.topk(5).indices.tolist())


def test_selector_learns_to_keep_the_useful_coordinates():
    """Through the straight-through masks alone, the logits of a selector rise on the
    coordinates the loss rewards, so the fold would keep those."""
    torch.manual_seed(0)
    alive = torch.ones(16, dtype=torch.bool)
    alive[0] = False  # pruned earlier: never chosen even though it pays the most
    selector = DimensionSelector(alive)
    reward = torch.zeros(16)
    reward[[0, 3, 7, 12, 13]] = torch.tensor([9.0, 1.0, 1.5, 2.0, 2.5])
    optimizer = torch.optim.Adam(selector.parameters(), lr=1e-3)
    for step in range(60):
        temperature = 1.0 * 0.05 ** (step / 59)
        loss = -(selector.masks([4], temperature, None)[0] * reward).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    kept = selector.ranking(torch.arange(16))[:4]
    assert set(kept.tolist()) == {3, 7, 12, 13}
    assert selector.logits()[0] < -1e3


def _random_rotation(dimension: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dimension, dimension, generator=generator))
    return q


@pytest.mark.parametrize("rotation", [False, True])
def test_permutation_fold_keeps_outputs_identical(tmp_path, rotation):
    dimension = 16
    module = SMECModule(dimension, {**ARCH, "rotation": rotation})
    if rotation:
        module.rotation.copy_(_random_rotation(dimension, 5))
    module.add_stage([8], ads=True)
    module.freeze_all_but(0)
    _randomise(module, 1)
    module.eval()
    e = torch.from_numpy(_unit(np.random.default_rng(0).normal(size=(30, dimension))))
    start = e @ module.rotation if rotation else e  # x_0
    with torch.no_grad():
        unfolded = module.residual(e)  # x_S before the permutation
        logits = module.stages[0].selector.logits()
        chosen = sorted(range(dimension), key=lambda i: -float(logits[i]))[:8]
        selection = torch.zeros(dimension)
        selection[chosen] = 1.0
        # the unfolded model's size-8 vector: the selected coordinates, by importance
        expected = torch.nn.functional.normalize(unfolded[:, chosen], dim=-1)
        masked = torch.nn.functional.normalize(unfolded * selection, dim=-1)
    module.fold(0)
    config = {"method": "smec", "dimension": dimension, "smec": module.describe()}
    Adaptor(module, config).save(tmp_path / "smec")
    loaded = Adaptor.load(tmp_path / "smec")
    assert isinstance(loaded.module, SMECModule)
    assert not torch.equal(loaded.module.permutation, torch.arange(dimension))
    if rotation:
        assert torch.equal(loaded.module.rotation, module.rotation)
    else:
        assert loaded.module.rotation is None
    prefix = loaded.transform(e, dim=8)
    torch.testing.assert_close(prefix, expected, rtol=0, atol=1e-6)
    # cosines at size 8 equal those of the masked (unfolded) vectors
    torch.testing.assert_close(prefix @ prefix.T, masked @ masked.T, rtol=0, atol=1e-5)
    # beyond the prefix, the folded stage no longer writes: the pruned coordinates are the
    # stage's input again (what the larger sizes were trained with)
    with torch.no_grad():
        raw = loaded.module(e)
    dropped = loaded.module.permutation[8:]
    torch.testing.assert_close(raw[:, :8], unfolded[:, chosen], rtol=0, atol=1e-6)
    torch.testing.assert_close(raw[:, 8:], start[:, dropped], rtol=0, atol=0)
    assert not torch.allclose(unfolded[:, dropped], start[:, dropped])  # it did write there


def test_memory_is_fifo_with_capacity_and_holds_detached_originals():
    memory = CrossBatchMemory(capacity=5, dimension=3)
    first = torch.arange(9.0, requires_grad=True).view(3, 3)
    adapted = first * 2.0  # what a model would output: must never enter the memory
    memory.enqueue(first)
    assert torch.equal(memory.contents(), first.detach())
    second = torch.full((4, 3), -1.0) + torch.arange(4.0).unsqueeze(1)
    memory.enqueue(second)
    contents = memory.contents()
    assert contents.shape == (5, 3)  # capacity respected
    # the two oldest rows of `first` were evicted first; oldest first afterwards
    assert torch.equal(contents, torch.cat([first.detach()[2:], second]))
    assert not contents.requires_grad and contents.grad_fn is None
    assert not any(torch.equal(row, a) for row in contents for a in adapted.detach())
    memory.enqueue(torch.ones(7, 3))  # a batch larger than the memory: its last 5 rows
    assert torch.equal(memory.contents(), torch.ones(5, 3))
    with pytest.raises(InputError, match="--memory-size must be positive"):
        CrossBatchMemory(0, 3)


def _planted(n: int = 200, dimension: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _unit(rng.normal(size=(n, dimension)) * np.linspace(1.0, 0.2, dimension))


def test_resume_to_a_smaller_size_trains_only_the_new_stage():
    corpus = _planted()
    config = TrainConfig(device="cpu", epochs=2, batch_size=64, hidden=12, topk=5, lr=1e-2)
    first = train_smec(corpus, config, SMECOptions(to_dim=8, memory_size=100)).module
    assert [spec["sizes"] for spec in first.specs] == [[8]]
    before = {k: v.clone() for k, v in first.state_dict().items()}
    resumed = train_smec(
        corpus, config, SMECOptions(to_dim=4, memory_size=100), module=first
    ).module
    assert [spec["sizes"] for spec in resumed.specs] == [[8], [4]]
    after = resumed.state_dict()
    for key, value in before.items():
        if key != "permutation":
            assert torch.equal(after[key], value), key  # stage 0 bit-for-bit unchanged
    # the 8 coordinates kept at stage 0 stay the prefix; stage 1 re-orders only them
    assert set(after["permutation"][:8].tolist()) == set(before["permutation"][:8].tolist())
    assert torch.equal(after["permutation"][8:], before["permutation"][8:])
    new = [k for k in after if k.startswith("stages.1.") and "alive" not in k]
    assert any(
        not torch.equal(after[k], torch.zeros_like(after[k]))
        for k in new
        if k.endswith("g.2.weight") or k.endswith("selector.raw")
    )
    assert all(not p.requires_grad for p in resumed.parameters())
    with pytest.raises(InputError, match="--to-dim 4 is not below 4"):
        train_smec(corpus, config, SMECOptions(to_dim=4), module=resumed)


def _fit(capsys, *args):
    return run_cli(capsys, "fit", *args)


def test_cli_fits_resumes_and_rejects_bad_input(capsys, tmp_path):
    store, qrels, _ = make_store(tmp_path, num_docs=120, num_queries=30)
    out = tmp_path / "smec"
    common = ["--method", "smec", "--epochs", "1", "--hidden", "16", "--batch-size", "60"]
    code, stdout, err = _fit(
        capsys,
        store,
        "--out",
        out,
        *common,
        "--to-dim",
        "12",
        "--mode",
        "supervised",
        "--qrels",
        qrels,
        "--sequential",
        "--ads",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["method"] == "smec"
    adaptor = Adaptor.load(out)
    assert adaptor.config["smec"]["stages"] == [
        {"sizes": [16], "ads": True},
        {"sizes": [12], "ads": True},
    ]
    assert adaptor.transform(np.ones((2, 24), np.float32), dim=12).shape == (2, 12)
    assert adaptor.config["architecture"]["rotation"] is True
    assert adaptor.module.rotation is not None
    # no --distill-weight: one fit at L_distill weight 1 (TrainConfig.smec_distill_choices)
    stages = {record["stage"] for record in adaptor.config["validation_curve"]}
    assert stages == {"smec 16", "smec 12"}
    assert adaptor.config["smec"]["distill_weight"] == 1.0
    # auto: one fit at weight 0 and one at 1 from the same start, the better one kept
    for weight, stages, kept in (
        ("auto", {"smec 16,12 distill 0", "smec 16,12 distill 1"}, (0.0, 1.0)),
        ("0", {"smec 16,12"}, (0.0,)),
    ):
        code, _, err = _fit(
            capsys, store, "--out", tmp_path / f"w{weight}", *common, "--to-dim", "12",
            "--mode", "supervised", "--qrels", qrels, "--distill-weight", weight,
        )  # fmt: skip
        assert code == 0, err
        config = Adaptor.load(tmp_path / f"w{weight}").config
        assert {record["stage"] for record in config["validation_curve"]} == stages
        assert config["smec"]["distill_weight"] in kept

    code, stdout, err = _fit(
        capsys,
        store,
        "--out",
        tmp_path / "smaller",
        *common,
        "--resume",
        out,
        "--to-dim",
        "8",
        "--no-ads",
        "--no-xbm",
    )
    assert code == 0, err
    resumed = Adaptor.load(tmp_path / "smaller")
    assert [s["sizes"] for s in resumed.config["smec"]["stages"]] == [[16], [12], [8]]
    assert torch.equal(resumed.module.rotation, adaptor.module.rotation)  # kept when resumed

    code, _, err = _fit(
        capsys, store, "--out", tmp_path / "plain", *common, "--to-dim", "12", "--no-rotation"
    )
    assert code == 0, err
    plain = Adaptor.load(tmp_path / "plain")
    assert plain.module.rotation is None and plain.config["architecture"]["rotation"] is False
    # the defaults: one stage of every size, no ADS, S-XBM on
    assert plain.config["smec"]["stages"] == [{"sizes": [16, 12], "ads": False}]
    options = plain.config["smec"]["options"]
    assert (options["sequential"], options["ads"], options["xbm"]) == (False, False, True)

    for extra, message in [
        (["--resume", out, "--to-dim", "16"], "--to-dim 16 is not below 12"),
        (["--to-dim", "30"], "--to-dim 30 must be in 1..23"),
        (["--memory-size", "0"], "--memory-size must be positive"),
        (["--resume", tmp_path / "nowhere"], "is not a madapt adaptor"),
    ]:
        code, stdout, err = _fit(capsys, store, "--out", tmp_path / "bad", *common, *extra)
        assert code == 2, (extra, err)
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "bad").exists()

    pca = tmp_path / "pca"
    assert _fit(capsys, store, "--out", pca, "--method", "pca")[0] == 0
    code, _, err = _fit(capsys, store, "--out", tmp_path / "bad", *common, "--resume", pca)
    assert code == 2 and "a 'pca' adaptor; only smec adaptors can be resumed" in err
    code, _, err = _fit(capsys, store, "--out", tmp_path / "bad", "--ads")
    assert code == 2 and "--ads" in err and "--method smec" in err
