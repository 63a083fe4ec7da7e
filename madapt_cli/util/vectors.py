"""The one check every vector passes where it enters madapt: finite, and non-zero where it
will be normalised (a zero vector has no direction, so its cosine to anything is undefined);
and the one row normalisation (embedding, search)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from madapt_cli.errors import InputError


def check_vectors(
    vectors: np.ndarray,
    ids: Sequence[str] | None,
    where: str,
    *,
    allow_zero: bool = False,
) -> None:
    """Raise :class:`InputError` naming ``where`` and the first bad row's id (or row number)
    when a row holds NaN or infinity or, unless ``allow_zero``, is all zeros."""
    if vectors.size == 0:
        return
    values = np.asarray(vectors)
    bad = ~np.isfinite(values).all(axis=1)
    problem = "a non-finite value (NaN or infinity)"
    first = int(np.argmax(bad)) if bad.any() else -1
    if first < 0 and not allow_zero:
        zero = ~values.any(axis=1)
        if zero.any():
            first, problem = int(np.argmax(zero)), "an all-zero vector"
    if first < 0:
        return
    row = f"id {ids[first]!r}" if ids is not None else f"row {first + 1}"
    raise InputError(f"{where}: {row} has {problem}; refusing to use it")


def normalize_rows(vectors: Any) -> Any:
    """Each row scaled to unit length (all-zero rows stay zero). numpy in, float32 numpy out;
    torch in, torch out (torch is not imported here: a tensor means it is loaded already)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(vectors, torch.Tensor):
        return vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    array = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)
