"""The one check every vector passes where it enters madapt: finite, and non-zero where it
will be normalised (a zero vector has no direction, so its cosine to anything is undefined)."""

from __future__ import annotations

from collections.abc import Sequence

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
