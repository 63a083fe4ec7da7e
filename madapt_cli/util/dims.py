"""Sizes (prefix dimensions): parsing `--dims`/`--train-dims` and the defaults."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from madapt_cli.errors import InputError


def split_sizes(spec: str | Iterable[int], option: str = "--dims") -> list[int]:
    """``"64,128,256"`` (or any iterable of sizes) -> the whole numbers, in the order given;
    empty items are skipped. The one parser of every size list; :class:`InputError` naming
    ``option`` for an item that is not a whole number."""
    tokens = spec.split(",") if isinstance(spec, str) else [str(d) for d in spec]
    text = spec if isinstance(spec, str) else ",".join(tokens)
    sizes = []
    for token in (t.strip() for t in tokens):
        if not token:
            continue
        try:
            sizes.append(int(token))
        except ValueError:
            raise InputError(
                f"{option} {text!r}: {token!r} is not a whole number (e.g. 64,128,256)"
            ) from None
    return sizes


def parse_dims(spec: str | Iterable[int], dimension: int) -> list[int]:
    """``"64,128,256"`` -> sorted distinct sizes, each within 1..``dimension``."""
    dims: set[int] = set()
    for dim in split_sizes(spec, "--dims"):
        if dim < 1:
            raise InputError(f"--dims: size {dim} is below 1")
        if dim > dimension:
            raise InputError(f"--dims: size {dim} is above the vectors' dimension {dimension}")
        dims.add(dim)
    if not dims:
        raise InputError("--dims: no sizes given (e.g. 64,128,256)")
    return sorted(dims)


def default_train_dims(dimension: int) -> list[int]:
    """Powers of two from 16 below D, plus D."""
    dims = [2**p for p in range(4, 32) if 2**p < dimension]
    return [*dims, dimension]


def check_train_dims(dims: Sequence[int], dimension: int) -> list[int]:
    """``dims`` sorted and distinct, each within 1..``dimension`` (``--train-dims``)."""
    dims = sorted(set(int(d) for d in dims))
    if not dims:
        raise InputError("--train-dims is empty")
    bad = [d for d in dims if not 1 <= d <= dimension]
    if bad:
        raise InputError(
            f"--train-dims {','.join(map(str, bad))} outside 1..{dimension} "
            "(the vectors' dimension)"
        )
    return dims
