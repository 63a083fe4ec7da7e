"""Adaptors with random (non-identity) weights of every method, for the export tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
METHODS = ("pca", "matryoshka", "smec")


def method_config(method: str, dimension: int) -> dict[str, Any]:
    """config.json entries of a ``method`` adaptor over ``dimension``-d vectors."""
    arch = {"hidden": 24, "depth": 2, "activation": "gelu", "rotation": True}
    if method == "pca":
        return {"architecture": {"type": "pca", "centered": True}}
    if method == "matryoshka":
        return {"architecture": {"type": "residual_mlp", **arch}}
    half = dimension // 2
    stages = [{"sizes": [half, half // 2], "ads": True}, {"sizes": [half // 4], "ads": False}]
    return {"smec": {"architecture": {**arch, "depth": 3}, "stages": stages}}


def random_adaptor(
    path: Path, method: str, dimension: int, *, seed: int = 0, **config: Any
) -> Path:
    """Save at ``path`` a ``method`` adaptor whose every tensor is random (a permutation,
    0/1 masks, an orthogonal rotation, small weights), so each part of f shows in its
    vectors; ``config`` adds or overrides config.json entries."""
    from madapt_cli.methods.adaptor import Adaptor, build_module

    full = {
        "method": method,
        "dimension": dimension,
        "base_provider": "local",
        "base_model": MINILM,
        "base_settings": {"document": {}, "query": {}},
        **method_config(method, dimension),
        **config,
    }
    module = build_module(full)
    generator = torch.Generator().manual_seed(seed)
    state = module.state_dict()
    for key, tensor in state.items():
        if key.endswith("permutation"):
            state[key] = torch.randperm(dimension, generator=generator)
        elif key.endswith("writes"):
            state[key] = (torch.rand(dimension, generator=generator) > 0.3).float()
        elif key.endswith(("rotation", "components")):
            state[key] = torch.linalg.qr(torch.randn(dimension, dimension, generator=generator))[0]
        elif tensor.is_floating_point():
            state[key] = torch.randn(tensor.shape, generator=generator) * 0.1
    module.load_state_dict(state)
    Adaptor(module, full).save(path)
    return path
