"""Adaptors: maps f(e) applied to embeddings before truncating to a prefix of dimensions.

Every method (:mod:`madapt_cli.methods.base`) writes one artifact format, a directory with
``adaptor.safetensors`` and ``config.json`` (never pickle), so ``apply`` and ``eval`` treat
them alike; this module knows no particular method. :meth:`Adaptor.transform` normalises its
input, applies f, keeps the first ``dim`` coordinates and re-normalises them to unit length.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from madapt_cli import __version__
from madapt_cli.errors import InputError, MadaptError, environment_failure
from madapt_cli.methods.base import get_method

WEIGHTS_FILE = "adaptor.safetensors"
CONFIG_FILE = "config.json"
#: config.json entries that saving sets (the directory's name, the writing release): not
#: part of what an adaptor is, so not of its fingerprint
_SET_ON_SAVE = ("name", "madapt_version")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_config(config: Any, config_path: Path) -> None:
    """Raise :class:`InputError` unless ``config`` (a parsed config.json) is an object with
    a known method, a positive integer dimension and what that method needs."""
    if not isinstance(config, dict):
        raise InputError(
            f"{config_path}: must hold a JSON object, not a {type(config).__name__}; "
            "is it an adaptor's config.json?"
        )
    try:
        method = get_method(config.get("method"))
    except InputError as error:
        raise InputError(f"{config_path}: {error}") from None
    dimension = config.get("dimension")
    if not _positive_int(dimension):
        raise InputError(
            f"{config_path}: 'dimension' must be a positive whole number, not {dimension!r}"
        )
    method.check_config(config, config_path)
    start_from = config.get("start_from_dim")
    if start_from is not None and not (_positive_int(start_from) and start_from <= dimension):
        raise InputError(
            f"{config_path}: 'start_from_dim' must be a whole number in 1..{dimension}, "
            f"not {start_from!r}"
        )


def check_weights(
    module: nn.Module, state: dict[str, torch.Tensor], config: dict, weights_path: Path
) -> None:
    """Raise :class:`InputError` unless ``state`` has exactly ``module``'s tensors, with
    their shapes, and only finite values."""
    expected = module.state_dict()
    dimension = int(config["dimension"])
    held = get_method(config["method"]).weights_dimension(state)
    if held is not None and held != dimension:
        raise InputError(
            f"{weights_path}: config.json says dimension {dimension} but {WEIGHTS_FILE} "
            f"holds {held}-d weights; the two files do not belong together"
        )
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            extra = ", ".join(unexpected[:3]) + (" ..." if len(unexpected) > 3 else "")
            parts.append(f"has unexpected {extra}")
        raise InputError(
            f"{weights_path}: {' and '.join(parts)} for the architecture config.json "
            "describes; the two files do not belong together"
        )
    for key in expected:  # the module's order: the first layer first
        tensor = state[key]
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise InputError(
                f"{weights_path}: tensor {key!r} has shape {tuple(tensor.shape)} but "
                f"config.json's architecture needs {tuple(expected[key].shape)}; the two "
                "files do not belong together"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(
                f"{weights_path}: tensor {key!r} holds NaN or infinite values; refusing "
                "this adaptor (was its training diverging? fit it again)"
            )


def adaptor_fingerprint(config: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    """sha256 of what an adaptor is: its config.json as canonical JSON (sorted keys, without
    ``name`` and ``madapt_version``, which saving sets) and its weights, tensor by tensor in
    name order (name, dtype, shape, bytes). The same before and after a save and load, and
    for a copy of the directory under another name."""
    digest = hashlib.sha256()
    kept = {key: value for key, value in config.items() if key not in _SET_ON_SAVE}
    canonical = json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest.update(canonical.encode("utf-8") + b"\0")
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Adaptor:
    """A trained map plus its configuration. ``Adaptor.load(path).transform(x, dim=128)``."""

    def __init__(self, module: nn.Module, config: dict[str, Any]) -> None:
        self.module = module.eval()
        self.config = config

    # --- identity ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.config.get("name", "adaptor"))

    @property
    def method(self) -> str:
        return str(self.config["method"])

    @property
    def dimension(self) -> int:
        """D, the dimension of the vectors it takes (and gives before truncation)."""
        return int(self.config["dimension"])

    @property
    def fingerprint(self) -> str:
        """The adaptor's identity: :func:`adaptor_fingerprint` of its config and weights."""
        return adaptor_fingerprint(self.config, self.module.state_dict())

    @property
    def training_data_sha256(self) -> str:
        """The hash of the data it was fitted on ("" when config.json does not say)."""
        return str(self.config.get("training_data_sha256", ""))

    def check_vectors_metadata(self, metadata: dict[str, Any], what: str = "the vectors") -> None:
        """Raise MadaptError unless vectors with this store metadata can go through f."""
        dimension = metadata.get("dimension")
        if dimension is not None and int(dimension) != self.dimension:
            raise MadaptError(
                f"adaptor '{self.name}' takes {self.dimension}-d vectors but {what} are "
                f"{dimension}-d"
            )
        for ours, theirs, kind in (
            (self.config.get("base_model"), metadata.get("model"), "model"),
            (self.config.get("base_provider"), metadata.get("provider"), "provider"),
        ):
            if ours and theirs and ours != theirs:
                raise MadaptError(
                    f"adaptor '{self.name}' was trained on vectors of {kind} {ours!r} but "
                    f"{what} come from {theirs!r}"
                )

    # --- transforming ------------------------------------------------------------------
    def check_dim(self, dim: int | None) -> int:
        if dim is None:
            return self.dimension
        if not 1 <= dim <= self.dimension:
            raise InputError(f"dimension {dim} is out of range 1..{self.dimension}")
        return int(dim)

    def transform(
        self, x: np.ndarray | torch.Tensor, dim: int | None = None, batch_size: int = 65_536
    ) -> np.ndarray | torch.Tensor:
        """Normalise, apply f, keep the first ``dim`` coordinates, re-normalise.

        numpy in, float32 numpy out; torch in, torch out (on the input's device).
        """
        dim = self.check_dim(dim)
        return self._map(x, lambda chunk: self.forward_prefix(chunk, dim), dim, batch_size)

    def prefix_source(
        self, x: np.ndarray | torch.Tensor, dim: int, batch_size: int = 65_536
    ) -> np.ndarray | torch.Tensor:
        """The unit (N, D) vectors whose first ``dim`` coordinates, re-normalised, are
        ``transform(x, dim)``: f's, or the start's from ``start_from_dim`` up. One search of
        their prefixes serves every size on the same side of ``start_from_dim``."""
        dim = self.check_dim(dim)
        return self._map(
            x,
            lambda chunk: torch.nn.functional.normalize(self.full_vectors(chunk, dim), dim=-1),
            self.dimension,
            batch_size,
        )

    def _map(
        self,
        x: np.ndarray | torch.Tensor,
        function: Callable[[torch.Tensor], torch.Tensor],
        width: int,
        batch_size: int,
    ) -> np.ndarray | torch.Tensor:
        """``function`` over (N, D) chunks of ``x`` on the module's device, without
        gradients: numpy in, float32 numpy out; torch in, torch out (on the input's device)."""
        as_numpy = not isinstance(x, torch.Tensor)
        tensor = torch.from_numpy(np.asarray(x, dtype=np.float32)) if as_numpy else x
        if tensor.shape[-1] != self.dimension:
            raise InputError(
                f"adaptor '{self.name}' takes {self.dimension}-d vectors, got {tensor.shape[-1]}-d"
            )
        flat = tensor.reshape(-1, self.dimension)
        device = next(self.module.buffers(), next(self.module.parameters(), None))
        device = device.device if device is not None else torch.device("cpu")
        pieces = []
        with torch.no_grad():
            for start in range(0, flat.shape[0], batch_size):
                chunk = flat[start : start + batch_size].to(device, torch.float32)
                pieces.append(function(chunk).to(tensor.device))
        result = (
            torch.cat(pieces) if pieces else flat.new_zeros((0, width), dtype=torch.float32)
        ).reshape(*tensor.shape[:-1], width)
        return result.numpy() if as_numpy else result

    def keeps_start(self, dim: int) -> bool:
        """Whether ``dim`` coordinates come from the untrained start (config.json's
        ``start_from_dim``: at that size and above, the trained map was no better than its
        start, so the start's prefix is given; below it, f's)."""
        start_from = self.config.get("start_from_dim")
        return start_from is not None and dim >= int(start_from)

    def full_vectors(self, e: torch.Tensor, dim: int) -> torch.Tensor:
        """The (N, D) vectors whose first ``dim`` coordinates :meth:`transform` keeps: f of
        the normalised input, or its start when :meth:`keeps_start`."""
        unit = torch.nn.functional.normalize(e, dim=-1)
        return self.module.start(unit) if self.keeps_start(dim) else self.module(unit)

    def forward_prefix(self, e: torch.Tensor, dim: int) -> torch.Tensor:
        """The differentiable core of :meth:`transform` on a (N, D) tensor."""
        return torch.nn.functional.normalize(self.full_vectors(e, dim)[:, :dim], dim=-1)

    def to(self, device: str | torch.device) -> Adaptor:
        self.module.to(device)
        return self

    # --- the artifact ------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``adaptor.safetensors`` and ``config.json`` into the directory ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        save_file(tensors, str(path / WEIGHTS_FILE), metadata={"method": self.method})
        config = {**self.config, "madapt_version": self.config.get("madapt_version", __version__)}
        config.setdefault("name", path.name)
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=False) + "\n")
        self.config = config
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Adaptor:
        """Read an artifact, refusing (one-line :class:`InputError` naming the file) a
        config.json that does not describe an adaptor, weights that cannot be read or do not
        match it, and weights holding NaN or infinity."""
        path = Path(path)
        config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
        if not config_path.is_file() or not weights_path.is_file():
            raise InputError(
                f"{path} is not a madapt adaptor (needs {CONFIG_FILE} and {WEIGHTS_FILE}); "
                "make one with `madapt fit`"
            )
        try:
            config = json.loads(config_path.read_text())
        except ValueError as error:
            raise InputError(f"{config_path}: invalid JSON ({error})") from None
        except OSError as error:
            raise environment_failure(error) or InputError(
                f"{config_path}: cannot read it ({error.strerror or error})"
            ) from None
        check_config(config, config_path)
        config.setdefault("name", path.name)
        try:
            module = build_module(config)
        except InputError as error:
            raise InputError(f"{config_path}: {error}") from None
        try:
            state = load_file(str(weights_path))
        except OSError as error:
            raise environment_failure(error) or InputError(
                f"{weights_path}: cannot read it ({error.strerror or error})"
            ) from None
        except Exception as error:  # a torn or foreign file: say which
            reason = " ".join(str(error).split())
            raise InputError(
                f"{weights_path}: cannot load weights: not a readable safetensors file ({reason})"
            ) from None
        check_weights(module, state, config, weights_path)
        if config.get("start_from_dim") is not None and not hasattr(module, "start"):
            raise InputError(
                f"{config_path}: 'start_from_dim' needs an adaptor with a start (the "
                f"residual MLP); a {config['method']} adaptor has none"
            )
        module.load_state_dict(state)
        return cls(module.to(device), config)


def build_module(config: dict[str, Any]) -> nn.Module:
    """An untrained module of the architecture described by ``config``."""
    method = get_method(config.get("method"), "adaptor method")
    try:
        return method.build_module(config)
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"adaptor config is missing or has a bad field ({error})") from None
