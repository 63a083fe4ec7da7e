"""What `madapt eval` returns: a row per method and size, and the report around them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from madapt_cli.retrieval.quantize import bytes_per_vector


@dataclass
class ResultRow:
    """One method at one size, and (in a ``--precision`` evaluation) one stored precision,
    scoring and rescoring depth. ``precision`` None: a plain evaluation's float32 row."""

    method: str
    dim: int
    metrics: dict[str, float]
    seconds: float = 0.0
    precision: str | None = None
    scoring: str | None = None  # symmetric / asymmetric; None for float32 (nothing to choose)
    rescore: int = 0

    @property
    def bytes(self) -> int:
        """Bytes of one stored vector of this cell."""
        return bytes_per_vector(self.precision or "float32", self.dim)

    @property
    def label(self) -> str:
        """``method@dim`` plus ``/precision[/scoring][+rescoreN]`` in a precision run."""
        text = f"{self.method}@{self.dim}"
        if self.precision is not None:
            text += f"/{self.precision}"
            if self.scoring is not None:
                text += f"/{self.scoring}"
            if self.rescore:
                text += f"+rescore{self.rescore}"
        return text

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"method": self.method, "dim": self.dim}
        if self.precision is not None:  # only then: a plain evaluation keeps its old shape
            row |= {
                "precision": self.precision,
                "scoring": self.scoring,
                "rescore": self.rescore,
                "bytes": self.bytes,
            }
        row["metrics"] = self.metrics
        return row


@dataclass
class EvaluationReport:
    """What `madapt eval` measured, and with what (for reports)."""

    store: str
    qrels: str
    num_queries: int
    dimension: int
    dims: list[int]
    metrics: list[str]
    results: list[ResultRow]
    methods: list[dict[str, Any]]  # name, kind (baseline|adaptor), path, fingerprint
    settings: dict[str, Any]
    fingerprints: dict[str, str]
    warnings: list[str]
    seconds: dict[str, float]
    #: a ``--precision`` evaluation: the precisions, and the int8 calibrations fitted on the
    #: corpus (method -> size -> ``Int8Calibration.to_dict()``)
    precisions: list[str] = field(default_factory=list)
    calibrations: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The ``--json`` document (a stable shape scripts rely on)."""
        return {
            "store": self.store,
            "qrels": self.qrels,
            "num_queries": self.num_queries,
            "results": [row.to_json() for row in self.results],
        }

    def to_json(self) -> dict[str, Any]:
        """:meth:`summary` plus settings, methods, fingerprints, warnings and timings."""
        return {
            **self.summary(),
            "dimension": self.dimension,
            "dims": self.dims,
            "metrics": self.metrics,
            "methods": self.methods,
            "settings": self.settings,
            "fingerprints": self.fingerprints,
            "warnings": self.warnings,
            "seconds": self.seconds,
            **(
                {"precisions": self.precisions, "calibrations": self.calibrations}
                if self.precisions
                else {}
            ),
        }

    def value(self, method: str, dim: int, metric: str) -> float | None:
        """``metric`` of ``method`` at ``dim`` stored as float32."""
        for row in self.results:
            if row.method == method and row.dim == dim and row.precision in (None, "float32"):
                return row.metrics.get(metric)
        return None

    def original(self, metric: str) -> float | None:
        """``metric`` of the full-size original vectors (truncate at D, float32)."""
        return self.value("truncate", self.dimension, metric)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvaluationReport:
        """A report back from the ``report.json`` :meth:`to_json` wrote (KeyError/TypeError/
        ValueError for anything else: the caller names the file)."""
        results = [
            ResultRow(
                str(row["method"]),
                int(row["dim"]),
                {str(k): float(v) for k, v in row["metrics"].items()},
                0.0,
                row.get("precision"),
                row.get("scoring"),
                int(row.get("rescore", 0)),
            )
            for row in data["results"]
        ]
        return cls(
            store=str(data["store"]),
            qrels=str(data["qrels"]),
            num_queries=int(data["num_queries"]),
            dimension=int(data["dimension"]),
            dims=[int(d) for d in data["dims"]],
            metrics=[str(m) for m in data["metrics"]],
            results=results,
            methods=list(data.get("methods", [])),
            settings=dict(data.get("settings", {})),
            fingerprints=dict(data.get("fingerprints", {})),
            warnings=list(data.get("warnings", [])),
            seconds=dict(data.get("seconds", {})),
            precisions=list(data.get("precisions", [])),
            calibrations=dict(data.get("calibrations", {})),
        )


def frontier(rows: Sequence[ResultRow], metric: str) -> list[ResultRow]:
    """The Pareto frontier of ``rows`` in (bytes per vector, ``metric``): each row that
    scores higher than every row of fewer or as many bytes, by ascending bytes. Of equal
    bytes and value the first row wins."""
    ordered = sorted(rows, key=lambda row: (row.bytes, -row.metrics[metric]))
    best: list[ResultRow] = []
    for row in ordered:
        if not best or row.metrics[metric] > best[-1].metrics[metric]:
            best.append(row)
    return best
