"""What `madapt eval` returns: a row per method and size, and the report around them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ResultRow:
    """One method at one size."""

    method: str
    dim: int
    metrics: dict[str, float]
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "dim": self.dim, "metrics": self.metrics}


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
        }

    def value(self, method: str, dim: int, metric: str) -> float | None:
        for row in self.results:
            if row.method == method and row.dim == dim:
                return row.metrics.get(metric)
        return None
