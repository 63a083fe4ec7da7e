"""A madapt adaptor as a standalone module that needs only torch and sentence-transformers.

`madapt export --to sentence-transformers` copies this file, unchanged, into the exported
folder as ``madapt_adaptor.py``, so it must never import madapt. ``--to onnx`` exports
:class:`AdaptorCore` with torch's exporter.

Every method's f is one program here (``spec``, a JSON object; weights by name):

    x = normalize(e)
    x = x - mean                 if spec["center"]    (PCA)
    x = x @ rotation             if spec["rotate"]    (PCA's axes, or a fixed rotation R)
    x = x + [writes *] g_i(x)    for each block       (residual MLPs; SMEC's stages mask theirs)
    x = x[:, permutation]        if spec["permute"]   (SMEC's order)
    return normalize(x[:, :dim])

in exactly the operations madapt's own modules use, so the vectors agree to float rounding.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

try:  # sentence-transformers 6 keeps its module base class here
    from sentence_transformers.base.modules import Module as _BaseModule
except ImportError:  # pragma: no cover - sentence-transformers 5
    try:
        from sentence_transformers.models import Module as _BaseModule
    except ImportError:  # no sentence-transformers: AdaptorCore (ONNX) still works
        _BaseModule = nn.Module  # type: ignore[assignment,misc]

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}


class ResidualBlock(nn.Module):
    """x + g(x), or x + writes * g(x) (a SMEC stage writes only to the coordinates it kept);
    g = Linear -> activation -> ... -> Linear over ``widths``."""

    def __init__(self, widths: list[int], activation: str, masked: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            if index:
                layers.append(ACTIVATIONS[activation]())
            layers.append(nn.Linear(width_in, width_out))
        self.g = nn.Sequential(*layers)
        self.register_buffer("writes", torch.ones(widths[-1]) if masked else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.writes is None:
            return x + self.g(x)
        return x + self.writes.to(x.dtype) * self.g(x)


class AdaptorCore(nn.Module):
    """(N, D) vectors -> (N, spec["dim"]) unit vectors: f, the prefix cut, re-normalisation."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        dimension = int(spec["dimension"])
        self.dim = int(spec["dim"])
        self.register_buffer("mean", torch.zeros(dimension) if spec["center"] else None)
        self.register_buffer("rotation", torch.eye(dimension) if spec["rotate"] else None)
        self.blocks = nn.ModuleList(
            ResidualBlock([int(w) for w in block["widths"]], block["activation"], block["masked"])
            for block in spec["blocks"]
        )
        permutation = torch.arange(dimension) if spec["permute"] else None
        self.register_buffer("permutation", permutation)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        x = nn.functional.normalize(e, dim=-1)
        if self.mean is not None:
            x = x - self.mean
        if self.rotation is not None:
            x = x @ self.rotation
        for block in self.blocks:
            x = block(x)
        if self.permutation is not None:
            return nn.functional.normalize(x[:, self.permutation[: self.dim]], dim=-1)
        return nn.functional.normalize(x[:, : self.dim], dim=-1)


class MadaptAdaptor(_BaseModule):
    """The sentence-transformers module: replaces ``sentence_embedding`` (the base model's
    pooled vector) with the adapted ``dim``-d unit vector."""

    config_keys = ["spec"]  # noqa: RUF012 - sentence-transformers' own class attribute

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = spec
        self.core = AdaptorCore(spec)

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        # the first D coordinates: what madapt embedded from a base saved with a truncate_dim
        pooled = features["sentence_embedding"][:, : int(self.spec["dimension"])]
        features["sentence_embedding"] = self.core(pooled)
        return features

    def get_embedding_dimension(self) -> int:
        return int(self.spec["dim"])

    def get_sentence_embedding_dimension(self) -> int:  # sentence-transformers < 6
        return self.get_embedding_dimension()

    def save(self, output_path: str, *_: Any, safe_serialization: bool = True, **__: Any) -> None:
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=safe_serialization)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> MadaptAdaptor:
        hub = {
            "subfolder": subfolder,
            "token": token,
            "cache_folder": cache_folder,
            "revision": revision,
            "local_files_only": local_files_only,
        }
        config = cls.load_config(model_name_or_path, **hub)
        model = cls(**config)
        return cls.load_torch_weights(model_name_or_path, model=model, **hub)
