"""Quality gates for CI: `madapt eval --require "sup@64:ndcg@10>=0.66"`.

A requirement is ``TARGET:METRIC OP VALUE``. TARGET picks cells of the report:

- ``METHOD@SIZE``: that method at that size stored as float32 (``METHOD@SIZE/PRECISION``:
  the best of that precision's cells, over scorings and rescoring);
- ``METHOD@NB`` (a byte budget, e.g. ``sup@16B``): the best cell of that method whose stored
  vector takes at most N bytes, at any size, precision and scoring;
- ``*`` for METHOD: any method (``*@16B``: the best cell within 16 bytes).

OP is one of ``>=``, ``>``, ``<=``, ``<``; METRIC one the evaluation measured (``ndcg@10``).
The best cell is the one with the highest METRIC (the lowest for ``<=`` and ``<``).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from madapt_cli.errors import InputError
from madapt_cli.pipelines.eval_results import EvaluationReport, ResultRow
from madapt_cli.retrieval.quantize import PRECISIONS

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}

_SYNTAX = re.compile(
    r"^(?P<method>.+)@(?P<size>[0-9]+)(?P<bytes>[bB])?(?:/(?P<precision>[a-z0-9]+))?"
    r":(?P<metric>[a-z_]+@[0-9]+)\s*(?P<op>>=|<=|>|<)\s*(?P<value>[-+]?[0-9]*\.?[0-9]+)$"
)

_HELP = (
    "use METHOD@SIZE[/PRECISION]:METRIC>=VALUE or METHOD@NB:METRIC>=VALUE (N bytes per "
    "vector; METHOD may be *), e.g. 'sup@64:ndcg@10>=0.66' or '*@16B:ndcg@10>=0.60'"
)


@dataclass(frozen=True)
class Requirement:
    """One parsed ``--require``."""

    text: str
    method: str  # "*" for any method
    size: int | None  # dimensions, or None for a byte budget
    max_bytes: int | None
    precision: str | None
    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Requirement:
        """The requirement ``text`` says, or an InputError naming it and the syntax."""
        match = _SYNTAX.match(text.strip())
        if match is None:
            raise InputError(f"--require {text!r}: cannot read it; {_HELP}")
        number = int(match["size"])
        precision = match["precision"]
        if number < 1:
            raise InputError(f"--require {text!r}: the size or byte budget must be positive")
        if precision is not None and precision not in PRECISIONS:
            raise InputError(
                f"--require {text!r}: unknown precision {precision!r}; use {', '.join(PRECISIONS)}"
            )
        if precision is not None and match["bytes"]:
            raise InputError(f"--require {text!r}: a byte budget already spans the precisions")
        return cls(
            text=text,
            method=match["method"].strip(),
            size=None if match["bytes"] else number,
            max_bytes=number if match["bytes"] else None,
            precision=precision,
            metric=match["metric"],
            op=match["op"],
            value=float(match["value"]),
        )

    def matches(self, row: ResultRow) -> bool:
        if self.method != "*" and row.method != self.method:
            return False
        if self.max_bytes is not None:
            return row.bytes <= self.max_bytes
        return row.dim == self.size and (row.precision or "float32") == (
            self.precision or "float32"
        )

    def check(self, report: EvaluationReport) -> dict[str, Any]:
        """This requirement against ``report``: a JSON-safe verdict with the deciding cell.
        An InputError when no cell of the report fits it (a typo must not pass or hide)."""
        if self.metric not in report.metrics:
            raise InputError(
                f"--require {self.text!r}: {self.metric} was not measured "
                f"(--metrics: {', '.join(report.metrics)})"
            )
        cells = [row for row in report.results if self.matches(row)]
        if not cells:
            methods = ", ".join(dict.fromkeys(row.method for row in report.results))
            sizes = ", ".join(str(d) for d in sorted({row.dim for row in report.results}))
            raise InputError(
                f"--require {self.text!r}: no cell of the evaluation fits it "
                f"(methods: {methods}; sizes: {sizes})"
            )
        lowest = self.op in ("<=", "<")
        best = (min if lowest else max)(cells, key=lambda row: row.metrics[self.metric])
        measured = best.metrics[self.metric]
        return {
            "requirement": self.text,
            "passed": _OPERATORS[self.op](measured, self.value),
            "value": measured,
            "cell": best.label,
            "bytes": best.bytes,
        }


def parse_requirements(texts: Sequence[str] | None) -> list[Requirement]:
    return [Requirement.parse(text) for text in texts or ()]


def check_requirements(
    requirements: Sequence[Requirement], report: EvaluationReport
) -> list[dict[str, Any]]:
    """Each requirement's verdict, in the order given."""
    return [requirement.check(report) for requirement in requirements]
