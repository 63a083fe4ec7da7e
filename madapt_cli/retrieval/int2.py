"""2-bit scalar codes (``--precision int2``): four levels per coordinate, m/4 bytes a vector.

At a byte budget the choice is between more coordinates at one bit (binary) and fewer at
more bits. Each coordinate d of the stored unit prefix is cut by three thresholds
``t_1d < t_2d < t_3d`` into four cells, coded 0-3 (the number of thresholds below the
value), and decoded to that cell's level ``l_cd``; the decoded vector is then re-normalised.

Fitted on the corpus' stored vectors, per coordinate (``method``):

* ``lloyd``: the Lloyd-Max quantiser of the coordinate's values (Lloyd, "Least squares
  quantization in PCM", IEEE Trans. Inf. Theory 1982; Max 1960): levels are the means of
  their cells and thresholds the midpoints between levels, iterated from the quartile cells;
* ``quantile``: thresholds at the quartiles (equal-population cells), levels the cells'
  means.

Why the decoded vector is re-normalised: the stored vectors are unit vectors, and the codes'
levels give each vector a different norm (large where many coordinates fall in the outer
cells), which would rank such documents high for every query; the direction of the decoded
vector is the estimate of the unit vector (docs/benchmarks.md measures both).

Codes are packed four to a byte, the first coordinate in the two most significant bits,
zero padding at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from madapt_cli.errors import InputError

INT2_METHODS = ("lloyd", "quantile")
DEFAULT_INT2_CALIBRATION = "lloyd"
#: at most this many corpus rows fit a calibration (evenly spaced rows beyond it)
MAX_CALIBRATION_ROWS = 200_000
_LLOYD_ITERATIONS = 30


def _matrix(values: Any, rows: int, name: str) -> np.ndarray:
    array = np.array(values, dtype=np.float32)  # a copy: the calibration owns its arrays
    if array.ndim != 2 or array.shape[0] != rows or array.shape[1] == 0:
        raise InputError(f"int2 calibration: {name} must be {rows} non-empty lists of numbers")
    if not np.isfinite(array).all():
        raise InputError(f"int2 calibration: {name} holds a non-finite value")
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class Int2Calibration:
    """Per-coordinate thresholds (3, m), ascending, and decoded levels (4, m)."""

    thresholds: np.ndarray
    levels: np.ndarray
    method: str

    def __post_init__(self) -> None:
        thresholds = _matrix(self.thresholds, 3, "thresholds")
        levels = _matrix(self.levels, 4, "levels")
        if thresholds.shape[1] != levels.shape[1]:
            raise InputError("int2 calibration: thresholds and levels differ in size")
        if (np.diff(thresholds, axis=0) < 0).any():
            raise InputError("int2 calibration: thresholds must ascend in every coordinate")
        if self.method not in INT2_METHODS:
            raise InputError(
                f"unknown int2 calibration {self.method!r}; use {', '.join(INT2_METHODS)}"
            )
        object.__setattr__(self, "thresholds", thresholds)
        object.__setattr__(self, "levels", levels)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Int2Calibration):
            return NotImplemented
        return (
            self.method == other.method
            and np.array_equal(self.thresholds, other.thresholds)
            and np.array_equal(self.levels, other.levels)
        )

    def __hash__(self) -> int:
        return hash((self.thresholds.tobytes(), self.levels.tobytes(), self.method))

    @property
    def dim(self) -> int:
        return int(self.levels.shape[1])

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "thresholds": [[float(v) for v in row] for row in self.thresholds],
            "levels": [[float(v) for v in row] for row in self.levels],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Int2Calibration:
        if not isinstance(data, dict) or not {"thresholds", "levels", "method"} <= data.keys():
            raise InputError("int2 calibration: expected thresholds, levels and method")
        for name in ("thresholds", "levels"):
            rows = data[name]
            if not isinstance(rows, list) or not all(
                isinstance(row, list)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row)
                for row in rows
            ):
                raise InputError(f"int2 calibration: {name} must be lists of numbers")
        return cls(data["thresholds"], data["levels"], str(data["method"]))


def _cells(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The cell 0-3 of every value: how many of its coordinate's thresholds lie below it."""
    cells = np.zeros(values.shape, dtype=np.uint8)
    for threshold in thresholds:
        cells += values > threshold
    return cells


def _cell_means(values: np.ndarray, cells: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """(4, m) mean value of each coordinate's cells (``fallback`` where a cell is empty)."""
    means = fallback.copy()
    for cell in range(4):
        inside = cells == cell
        count = inside.sum(axis=0)
        total = np.where(inside, values, 0.0).sum(axis=0, dtype=np.float64)
        means[cell] = np.where(count > 0, total / np.maximum(count, 1), fallback[cell])
    return means


def fit_int2_calibration(
    vectors: np.ndarray, method: str = DEFAULT_INT2_CALIBRATION
) -> Int2Calibration:
    """The calibration of the module docstring, fitted on ``vectors`` (the stored corpus
    vectors of one size)."""
    if method not in INT2_METHODS:
        raise InputError(f"unknown int2 calibration {method!r}; use {', '.join(INT2_METHODS)}")
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError("int2 calibration needs at least one vector with one dimension")
    if not np.isfinite(array).all():
        raise InputError("int2 calibration: the vectors hold a non-finite value")
    if array.shape[0] > MAX_CALIBRATION_ROWS:
        array = array[np.linspace(0, array.shape[0] - 1, MAX_CALIBRATION_ROWS).astype(np.int64)]
    quartiles = np.quantile(array, [0.25, 0.5, 0.75], axis=0)
    centres = np.quantile(array, [0.125, 0.375, 0.625, 0.875], axis=0)
    levels = _cell_means(array, _cells(array, quartiles), centres)
    thresholds = quartiles
    if method == "lloyd":
        for _ in range(_LLOYD_ITERATIONS):
            thresholds = (levels[1:] + levels[:-1]) / 2
            levels = _cell_means(array, _cells(array, thresholds), levels)
        thresholds = (levels[1:] + levels[:-1]) / 2
    return Int2Calibration(thresholds.astype(np.float32), levels.astype(np.float32), method)


def _check_dim(array: np.ndarray, calibration: Int2Calibration) -> None:
    if array.ndim != 2 or array.shape[1] != calibration.dim:
        raise ValueError(f"vectors of {calibration.dim} dimensions expected, got {array.shape}")


def quantize_int2(vectors: np.ndarray, calibration: Int2Calibration) -> np.ndarray:
    """(n, ceil(m/4)) uint8: each coordinate's cell, four to a byte, first in the top bits."""
    array = np.asarray(vectors, dtype=np.float32)
    _check_dim(array, calibration)
    cells = _cells(array, calibration.thresholds)
    width = math.ceil(calibration.dim / 4)
    padded = np.zeros((array.shape[0], width * 4), dtype=np.uint8)
    padded[:, : calibration.dim] = cells
    return (
        (padded[:, 0::4] << 6) | (padded[:, 1::4] << 4) | (padded[:, 2::4] << 2) | padded[:, 3::4]
    ).astype(np.uint8)


def unpack_int2(codes: np.ndarray, dim: int) -> np.ndarray:
    """(n, dim) uint8 cells 0-3 of packed codes."""
    array = np.asarray(codes)
    if array.ndim != 2 or array.dtype != np.uint8 or array.shape[1] != math.ceil(dim / 4):
        raise ValueError(
            f"int2 codes of {dim} dimensions are uint8 with {math.ceil(dim / 4)} columns"
        )
    cells = np.stack([(array >> shift) & 3 for shift in (6, 4, 2, 0)], axis=-1)
    return cells.reshape(array.shape[0], -1)[:, :dim]


def dequantize_int2(codes: np.ndarray, calibration: Int2Calibration) -> np.ndarray:
    """float32 unit vectors: each coordinate's level, the row re-normalised (see the module
    docstring; an all-zero row stays zero)."""
    cells = unpack_int2(codes, calibration.dim)
    decoded = np.take_along_axis(calibration.levels, cells.astype(np.int64), axis=0)
    norms = np.linalg.norm(decoded, axis=1, keepdims=True)
    return (decoded / np.where(norms > 0, norms, 1.0)).astype(np.float32)
