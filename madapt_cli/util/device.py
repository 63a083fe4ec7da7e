"""Where tensors live: one rule for every command (`--device auto|cpu|cuda|cuda:N`)."""

from __future__ import annotations

import torch

from madapt_cli.errors import InputError


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> the GPU when there is one, else the CPU; ``cpu``, ``cuda``, ``cuda:1``...

    Raises :class:`InputError` naming ``--device`` for a device torch does not know or this
    machine does not have (``cuda`` without a GPU, ``cuda:7`` with two)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):
        raise InputError(f"--device {device!r}: use auto, cpu, cuda or cuda:N")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {device!r}: torch sees no CUDA GPU on this machine")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise InputError(
                f"--device {device!r}: torch sees {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})"
            )
    return resolved


def device_generator(device: torch.device, seed: int) -> torch.Generator:
    """A random generator on ``device``, seeded with ``seed``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
