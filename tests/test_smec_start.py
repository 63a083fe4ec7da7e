"""SMEC's start: the principal rotation (x_0 = e R) and the data-driven ADS logits.
Tiny synthetic data; seconds."""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.methods.smec import SMECOptions, train_smec
from madapt_cli.methods.smec_module import SMECModule, gumbel_topk_masks
from madapt_cli.training.config import TrainConfig
from madapt_cli.training.modules import principal_rotation

ARCH = {"hidden": 12, "depth": 2, "activation": "gelu"}


def _decaying(n: int = 300, dimension: int = 16, seed: int = 0) -> np.ndarray:
    """Unit vectors whose coordinate scales decay geometrically, in a shuffled coordinate
    order (so the high-energy coordinates are not a prefix); returns them and the scales."""
    rng = np.random.default_rng(seed)
    scales = np.geomspace(1.0, 0.05, dimension)[rng.permutation(dimension)]
    x = rng.normal(size=(n, dimension)) * scales
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), scales


def _config(**extra) -> TrainConfig:
    return TrainConfig(device="cpu", epochs=1, batch_size=64, hidden=12, topk=5, **extra)


def test_smec_starts_from_the_principal_rotation_and_round_trips(tmp_path):
    corpus, _ = _decaying()
    result = train_smec(corpus, _config(), SMECOptions(to_dim=4, memory_size=100))
    module = result.module
    expected = principal_rotation(torch.from_numpy(corpus))
    torch.testing.assert_close(module.rotation, expected, rtol=0, atol=1e-6)
    assert module.describe()["architecture"]["rotation"] is True
    config = {"method": "smec", "dimension": 16, "smec": module.describe()}
    Adaptor(module, config).save(tmp_path / "rotated")
    assert "rotation" in load_file(str(tmp_path / "rotated" / "adaptor.safetensors"))
    saved = json.loads((tmp_path / "rotated" / "config.json").read_text())
    assert saved["smec"]["architecture"]["rotation"] is True
    loaded = Adaptor.load(tmp_path / "rotated")
    torch.testing.assert_close(loaded.module.rotation, module.rotation, rtol=0, atol=0)
    x = torch.from_numpy(corpus[:20])
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), module(x), rtol=0, atol=0)
    # a loaded identity start would give different outputs: the rotation matters
    unrotated = SMECModule(16, ARCH, module.specs)
    state = {k: v for k, v in module.state_dict().items() if k != "rotation"}
    unrotated.load_state_dict(state)
    with torch.no_grad():
        assert not torch.allclose(unrotated.eval()(x), module(x), atol=1e-3)


def test_no_rotation_and_older_artifacts_start_from_the_identity(tmp_path):
    corpus, _ = _decaying()
    module = train_smec(
        corpus, _config(rotation=False), SMECOptions(to_dim=4, memory_size=100)
    ).module
    assert module.rotation is None
    assert module.describe()["architecture"]["rotation"] is False
    assert "rotation" not in module.state_dict()
    # an artifact written before the rotation existed: no key in config.json nor weights
    config = {"method": "smec", "dimension": 16, "smec": module.describe()}
    old = {**config, "smec": {**config["smec"], "architecture": dict(ARCH)}}
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(old))
    save_file(
        {k: v.contiguous() for k, v in module.state_dict().items()},
        str(folder / "adaptor.safetensors"),
    )
    loaded = Adaptor.load(folder)
    assert loaded.module.rotation is None
    x = torch.from_numpy(corpus[:20])
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), module(x), rtol=0, atol=0)


def test_ads_starts_from_the_coordinates_energy():
    corpus, scales = _decaying(n=2000)
    vectors = torch.from_numpy(corpus)
    module = SMECModule(16, ARCH)  # no rotation: the raw coordinates
    module.add_stage([8], ads=True)
    module.init_importance(0, vectors)
    selector = module.stages[0].selector
    by_energy = np.argsort(-scales, kind="stable")
    assert selector.ranking(torch.arange(16))[:8].tolist() == by_energy[:8].tolist()
    # at the starting temperature the draws are energy-weighted, not uniform and not fixed
    generator = torch.Generator().manual_seed(0)
    counts = sum(
        gumbel_topk_masks(selector.logits().detach(), [8], 1.0, generator)[0] for _ in range(400)
    )
    top, bottom = by_energy[:4], by_energy[-4:]
    assert counts[top].min() > 300 and counts[bottom].max() < 100
    assert counts[by_energy[7:9]].min() > 0 and counts[by_energy[7:9]].max() < 400
    # a later stage ranks only its alive coordinates; the pruned ones stay dead
    module.fold(0)
    module.add_stage([4], ads=True)
    module.init_importance(1, vectors)
    second = module.stages[1].selector
    kept = module.permutation[:8]
    assert set(second.ranking(kept)[:4].tolist()) == set(by_energy[:4].tolist())
    assert bool((second.logits()[module.permutation[8:]] < -1e3).all())


def test_with_the_rotation_ads_starts_from_the_principal_order():
    corpus, _ = _decaying(n=2000)
    vectors = torch.from_numpy(corpus)
    module = SMECModule(16, {**ARCH, "rotation": True})
    module.rotation.copy_(principal_rotation(vectors))
    module.add_stage([8], ads=True)
    module.init_importance(0, vectors)
    logits = module.stages[0].selector.logits().detach()
    assert bool((logits[:-1] > logits[1:]).all())  # eigenvalues decrease along R's axes
    assert abs(float(logits.mean())) < 1e-4  # centred: a shift selects nothing
