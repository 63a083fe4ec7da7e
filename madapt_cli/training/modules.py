"""Building blocks the methods share: the residual MLP, its architecture record, and the
principal axes (uncentred for the rotation start, centred for PCA) with a fixed sign."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from madapt_cli.errors import InputError

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}


class ResidualMLP(nn.Module):
    """f(e) = x + g(x), g = Linear(D, H) -> act -> ... -> Linear(H, D), with x = e, or with
    x = e R for a fixed orthogonal rotation R (``rotation=True``; see
    :func:`principal_rotation`).

    g's last layer starts at zero, so an untrained adaptor is exactly the identity (or the
    rotation, which keeps every full-size cosine).
    """

    def __init__(
        self,
        dimension: int,
        hidden: int,
        depth: int = 2,
        activation: str = "gelu",
        rotation: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise InputError("the adaptor needs at least one layer (--depth >= 1)")
        if activation not in ACTIVATIONS:
            raise InputError(f"unknown activation {activation!r}: use {', '.join(ACTIVATIONS)}")
        widths = [dimension] + [hidden] * (depth - 1) + [dimension]
        layers: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            if index:
                layers.append(ACTIVATIONS[activation]())
            layers.append(nn.Linear(width_in, width_out))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.g = nn.Sequential(*layers)
        self.register_buffer("rotation", torch.eye(dimension) if rotation else None)
        # set by the training loop (config.precision): g's arithmetic while training only
        self.autocast_dtype: torch.dtype | None = None
        # set by the training loop (Stage.width): g's last layer computes only the first
        # `width` outputs, whose rows are the only ones trained (see cut_to)
        self.width: int | None = None
        self._started: tuple[tuple[int, ...], torch.Tensor] | None = None
        self._adapted: tuple[tuple[Any, ...], torch.Tensor] | None = None

    @classmethod
    def from_architecture(cls, dimension: int, architecture: dict[str, Any]) -> ResidualMLP:
        """The module an :func:`architecture` record describes (``rotation`` absent: none)."""
        return cls(
            dimension,
            int(architecture["hidden"]),
            int(architecture["depth"]),
            str(architecture["activation"]),
            rotation=bool(architecture.get("rotation", False)),
        )

    def start(self, e: torch.Tensor) -> torch.Tensor:
        """Where f starts before training: e, or e R."""
        return e if self.rotation is None else e @ self.rotation

    def start_of(self, corpus: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``start(corpus[rows])``, from start(corpus) computed once and kept until the
        rotation or the corpus changes (or :meth:`forget_start`): training steps rotate the
        same corpus rows over and over, and the rotation is fixed while g trains."""
        if self.rotation is None:
            return corpus[rows]
        key = (corpus.data_ptr(), corpus._version, *corpus.shape)
        key += (self.rotation.data_ptr(), self.rotation._version)
        if self._started is None or self._started[0] != key:
            self._started = None  # free the old copy first
            with torch.no_grad():
                self._started = (key, self.start(corpus))
        return self._started[1][rows]

    @torch.no_grad()
    def adapted_corpus(self, corpus: torch.Tensor) -> torch.Tensor:
        """f of every row of ``corpus``, from :meth:`start_of`'s rotated copy, kept until the
        weights (or the mode, or the corpus) change: the label-free proxy at the end of an
        epoch and the student-negative refresh at the start of the next ask for the same."""
        key = (corpus.data_ptr(), corpus._version, *corpus.shape, self.training, self.width)
        key += (self.autocast_dtype, *(p._version for p in self.parameters()))
        if self._adapted is None or self._adapted[0] != key:
            self._adapted = None  # free the old copy first
            started = self.start_of(corpus, torch.arange(len(corpus), device=corpus.device))
            adapted = torch.cat([self.from_start(x) for x in started.split(65_536)])
            self._adapted = (key, adapted)
        return self._adapted[1]

    def forget_start(self) -> None:
        """Drop :meth:`start_of`'s copy of the rotated corpus (and f of it)."""
        self._started = self._adapted = None

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.from_start(self.start(e))

    def cut_to(self, width: int | None) -> bool:
        """Compute (and so train) only g's first ``width`` outputs from now on (None: all).

        An objective whose largest size is m reads only f's first m coordinates, so the
        products of g's last layer for the others are wasted work: this drops them. It is
        exact only while the other rows of the last layer are zero (as they start, and stay
        when never computed): then f's other coordinates are x's. Refused (False) otherwise.
        """
        last = self.g[-1]
        if width is not None and (last.weight[width:].any() or last.bias[width:].any()):
            return False
        self.width = width
        return True

    def from_start(self, x: torch.Tensor) -> torch.Tensor:
        """f from the started vectors x = start(e): x + g(x); evaluation (eval mode) is
        always float32."""
        dtype = self.autocast_dtype if self.training else None
        return add_to_prefix(x, self.g_of(x, dtype))

    def g_of(self, x: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        """g(x): all D outputs, or only the first ``width`` while cut (:meth:`cut_to`). With
        ``autocast_dtype`` (mixed precision) g's products run in it and the result comes back
        in x's dtype, so the residual sum and every loss stay float32."""
        if autocast_dtype is not None:
            with torch.autocast(x.device.type, dtype=autocast_dtype):
                return self.g_of(x).to(x.dtype)
        if self.width is None or self.width >= x.shape[-1]:
            return self.g(x)
        last = self.g[-1]
        return F.linear(self.g[:-1](x), last.weight[: self.width], last.bias[: self.width])


def add_to_prefix(x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """x + residual on x's first residual.shape[-1] coordinates; the others are x's."""
    width = residual.shape[-1]
    if width == x.shape[-1]:
        return x + residual
    return torch.cat([x[..., :width] + residual, x[..., width:]], dim=-1)


def architecture(config: Any, dimension: int) -> dict[str, Any]:
    """The residual MLP a :class:`~madapt_cli.training.config.TrainConfig` asks for, as
    recorded in config.json: hidden (default 2 D), depth, activation, rotation."""
    return {
        "hidden": config.hidden or 2 * dimension,
        "depth": config.depth,
        "activation": config.activation,
        "rotation": config.rotation,
    }


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_architecture(arch: Any, where: str, config_path: Path) -> None:
    """Raise :class:`InputError` unless ``arch`` (the config.json entry ``where``) describes
    a residual MLP: positive hidden and depth, a known activation."""
    if not isinstance(arch, dict):
        raise InputError(f"{config_path}: {where} must be an object")
    for key in ("hidden", "depth"):
        if not _positive_int(arch.get(key)):
            raise InputError(
                f"{config_path}: {where}.{key} must be a positive whole number, "
                f"not {arch.get(key)!r}"
            )
    if arch.get("activation") not in ACTIVATIONS:
        raise InputError(
            f"{config_path}: {where}.activation {arch.get('activation')!r} is unknown: use "
            f"{', '.join(ACTIVATIONS)}"
        )


def orient_axes(axes: torch.Tensor) -> torch.Tensor:
    """Eigenvectors are defined up to sign: flip each column so that its largest coordinate
    (in absolute value) is positive, so fits are reproducible."""
    columns = torch.arange(axes.shape[1], device=axes.device)
    signs = torch.sign(axes[axes.abs().argmax(dim=0), columns])
    return axes * torch.where(signs == 0, 1.0, signs)


def principal_rotation(vectors: torch.Tensor) -> torch.Tensor:
    """R: the eigenvectors of E^T E (uncentred principal axes) by decreasing eigenvalue.

    R is orthogonal, so e R keeps every full-size cosine exactly, while its first m
    coordinates hold as much of the vectors' energy as any m orthonormal directions can: a
    much better start for the small prefixes than the identity. Unlike centred PCA it does
    not subtract the mean, which would change the cosines at full size.
    """
    gram = vectors.double().T @ vectors.double()
    _, eigenvectors = torch.linalg.eigh(gram)  # ascending eigenvalues
    return orient_axes(eigenvectors.flip(-1).float()).to(vectors.dtype)


def new_adaptor_module(corpus: torch.Tensor, config: Any) -> ResidualMLP:
    """An untrained f for a :class:`~madapt_cli.training.config.TrainConfig`: the identity, or
    the corpus' principal rotation (``config.rotation``)."""
    module = ResidualMLP.from_architecture(corpus.shape[1], architecture(config, corpus.shape[1]))
    if config.rotation:
        module.rotation.copy_(principal_rotation(corpus))
    return module.to(corpus.device)
