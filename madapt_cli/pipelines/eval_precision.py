"""`madapt eval --precision`: each (method, size) also at the lower stored precisions.

For every size m the vectors that would be stored (the first m coordinates, re-normalised)
are encoded at each precision: float16, int8 with per-dimension ranges fitted on the corpus
(the calibration is kept for the report), int2 with per-dimension levels fitted on the corpus
(retrieval/int2.py; kept too), binary sign bits; each is searched exactly
(:func:`madapt_cli.retrieval.precision.precision_topk`) symmetric, asymmetric and, with
``rescore`` N, symmetric with N x k candidates re-ranked by the float query.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from madapt_cli.errors import InputError
from madapt_cli.pipelines.eval_results import ResultRow
from madapt_cli.retrieval.int2 import (
    DEFAULT_INT2_CALIBRATION,
    Int2Calibration,
    fit_int2_calibration,
)
from madapt_cli.retrieval.metrics import Judgments, Metric, score_indices, trec_tie_order
from madapt_cli.retrieval.precision import SCORINGS, encode_corpus, precision_topk
from madapt_cli.retrieval.quantize import (
    DEFAULT_INT8_CALIBRATION,
    PRECISIONS,
    Int8Calibration,
    fit_int8_calibration,
)
from madapt_cli.util.vectors import normalize_rows

SCORING_CHOICES = ("symmetric", "asymmetric", "both")

MAX_RESCORE = 1_000

__all__ = ["DEFAULT_INT8_CALIBRATION", "PrecisionGrid", "precision_options"]


def parse_precisions(value: str | Iterable[str] | None) -> list[str]:
    """``--precision`` (comma-separated or a list) as precisions in PRECISIONS order,
    float32 always first (the reference of every size); [] when not given."""
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else list(value)
    names = [part.strip().lower() for part in parts if part.strip()]
    if not names:
        raise InputError("--precision: give one or more of " + ", ".join(PRECISIONS))
    for name in names:
        if name not in PRECISIONS:
            raise InputError(
                f"--precision: unknown precision {name!r}; use {', '.join(PRECISIONS)}"
            )
    return [p for p in PRECISIONS if p in names or p == "float32"]


def parse_scoring(value: str) -> list[str]:
    if value not in SCORING_CHOICES:
        raise InputError(f"--scoring {value!r}: use {', '.join(SCORING_CHOICES)}")
    return list(SCORINGS) if value == "both" else [value]


def check_rescore(rescore: int) -> int:
    if not 0 <= rescore <= MAX_RESCORE:
        raise InputError(f"--rescore {rescore}: use 0 (off) up to {MAX_RESCORE}")
    return rescore


def precision_options(options: Any) -> tuple[list[str], list[str]]:
    """The precisions and scorings of :class:`EvalOptions` ``options``, checked (an
    InputError naming the option): the other precision options need ``--precision``."""
    precisions = parse_precisions(options.precisions)
    scorings = parse_scoring(options.scoring)
    check_rescore(options.rescore)
    if precisions:
        PrecisionGrid.check_calibration(options.int8_calibration)
    elif (
        options.rescore
        or options.scoring != "both"
        or options.int8_calibration != DEFAULT_INT8_CALIBRATION
    ):
        raise InputError("--rescore, --scoring and --int8-calibration need --precision")
    return precisions, scorings


@dataclass
class PrecisionGrid:
    """The lower-precision cells of one evaluation: options, what scoring needs, and the
    calibrations fitted on the way (method -> key -> calibration; the key is the size for
    int8, ``<size>/int2`` for int2)."""

    precisions: Sequence[str]
    scorings: Sequence[str]
    rescore: int
    int8_calibration: str
    judgments: Judgments
    metrics: Sequence[Metric]
    corpus_ids: Sequence[str]
    depth: int
    exclude: np.ndarray | None = None
    device: torch.device | str = "cpu"
    calibrations: dict[str, dict[str, Any]] = field(default_factory=dict)

    @staticmethod
    def check_calibration(method: str) -> None:
        """An InputError naming ``--int8-calibration`` for a method madapt does not know."""
        try:
            fit_int8_calibration(np.zeros((1, 1), dtype=np.float32), method)
        except InputError as error:
            raise InputError(f"--int8-calibration: {error}") from None

    def cells(self) -> list[tuple[str, str, int]]:
        """(precision, scoring, rescore) of each lower-precision cell, in report order."""
        found = []
        for precision in self.precisions:
            if precision == "float32":
                continue
            for scoring in self.scorings:
                found.append((precision, scoring, 0))
                if self.rescore and scoring == "symmetric":
                    found.append((precision, scoring, self.rescore))
        return found

    def rows(
        self, method: str, dim: int, queries: torch.Tensor, corpus: torch.Tensor
    ) -> list[ResultRow]:
        """The cells of ``method`` at size ``dim``; ``queries`` and ``corpus`` are the
        method's full-size vectors (the stored ones are their re-normalised prefixes)."""
        stored_queries = _prefix(queries, dim)
        stored_corpus = _prefix(corpus, dim)
        results: list[ResultRow] = []
        encoded: dict[str, Any] = {}
        for precision, scoring, rescore in self.cells():
            if precision not in encoded:
                calibration = self._calibration(method, dim, precision, stored_corpus)
                encoded[precision] = encode_corpus(stored_corpus, precision, calibration)
            scores, indices = precision_topk(
                stored_queries,
                encoded[precision],
                self.depth,
                scoring,
                rescore=rescore,
                exclude=self.exclude,
                device=self.device,
            )
            ranked = trec_tie_order(scores, indices, self.corpus_ids)
            means = {
                label: float(values.mean())
                for label, values in score_indices(ranked, self.judgments, self.metrics).items()
            }
            results.append(ResultRow(method, dim, means, 0.0, precision, scoring, rescore))
        return results

    def _calibration(
        self, method: str, dim: int, precision: str, stored_corpus: np.ndarray
    ) -> Int8Calibration | Int2Calibration | None:
        calibration: Int8Calibration | Int2Calibration
        if precision == "int8":
            calibration = fit_int8_calibration(stored_corpus, self.int8_calibration)
            key = str(dim)
        elif precision == "int2":
            calibration = fit_int2_calibration(stored_corpus, DEFAULT_INT2_CALIBRATION)
            key = f"{dim}/int2"
        else:
            return None
        self.calibrations.setdefault(method, {})[key] = calibration.to_dict()
        return calibration


def _prefix(vectors: torch.Tensor, dim: int) -> np.ndarray:
    """The stored float32 vectors of size ``dim``: the first ``dim`` coordinates of each row,
    re-normalised, as a numpy array."""
    return normalize_rows(vectors[:, :dim].detach().cpu().numpy())
