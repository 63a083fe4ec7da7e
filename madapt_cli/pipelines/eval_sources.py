"""What `madapt eval` searches: the methods (an adaptor's vectors on each side of its
``start_from_dim``, the baselines), the PCA baseline's map, and stored columns evaluated as
they are (an applied store's ``vector_<d>``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from madapt_cli.errors import InputError, StoreError
from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.retrieval.search import ArrayLike
from madapt_cli.store.base import VECTOR_COLUMN, Store, vector_columns

PCA_FIT_ROWS = 200_000


@dataclass
class EvalMethod:
    """One method of the evaluation: its report entry, how it maps vectors, the sizes it is
    searched at (one search of the mapped vectors' prefixes) and the key of that search."""

    name: str
    entry: dict[str, Any]  # name, kind (baseline|adaptor), path, method, fingerprint
    how: Any  # "truncate", "pca" or a PrefixSource
    sizes: list[int]
    key: str = ""

    def __post_init__(self) -> None:
        self.key = self.key or self.name


@dataclass
class PrefixSource:
    """An adaptor's vectors as its sizes from ``dim``'s side of ``start_from_dim`` cut them
    (:meth:`Adaptor.prefix_source`): below it f's, from it up the start's."""

    adaptor: Adaptor
    dim: int

    def to(self, device: torch.device) -> PrefixSource:
        self.adaptor.to(device)
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return self.adaptor.prefix_source(x, self.dim)


def adaptor_methods(
    name: str, entry: dict[str, Any], adaptor: Adaptor, sizes: list[int]
) -> list[EvalMethod]:
    """One :class:`EvalMethod` per side of the adaptor's ``start_from_dim`` that has sizes."""
    sides = [[d for d in sizes if not adaptor.keeps_start(d)]]
    sides.append([d for d in sizes if adaptor.keeps_start(d)])
    return [
        EvalMethod(name, entry, PrefixSource(adaptor, part[0]), part, f"{name}#{index}")
        for index, part in enumerate(sides)
        if part
    ]


def pca_baseline(corpus: ArrayLike, dimension: int, max_rows: int | None = PCA_FIT_ROWS) -> Any:
    """The PCA map of :func:`madapt_cli.methods.pca.fit_pca` (as `madapt fit --method pca`
    makes it), fitted on the whole corpus or, above ``max_rows`` rows, on ``max_rows`` evenly
    spaced ones: the principal axes of 768-d vectors are settled long before that, and the
    fit's float64 products would otherwise cost more than the searches. A tensor is reduced on
    its own device."""
    from madapt_cli.methods.pca import fit_pca

    if max_rows is not None and len(corpus) > max_rows:
        rows = np.linspace(0, len(corpus) - 1, max_rows).round().astype(np.int64)
        corpus = (
            corpus[torch.from_numpy(rows).to(corpus.device)]
            if isinstance(corpus, torch.Tensor)
            else corpus[rows]
        )
    batches = (corpus[start : start + 65_536] for start in range(0, len(corpus), 65_536))
    config = {"name": "pca", "method": "pca", "dimension": dimension}
    return Adaptor(fit_pca(batches, dimension), config)


def stored_columns(store: Store, options: Any) -> dict[str, int]:
    """The columns to evaluate as stored (name -> size): ``options.vector_columns``, or
    every vector column when the corpus has no raw ``vector`` (a store `madapt apply` or
    ``embed --adaptor --no-raw`` wrote); {} for the usual evaluation of ``vector``."""
    corpus, queries = options.corpus_table, options.queries_table
    have = vector_columns(store.schema(corpus))
    requested = list(dict.fromkeys(options.vector_columns or ()))
    if not requested:
        if VECTOR_COLUMN in have:
            return {}
        requested = sorted(have, key=have.__getitem__)
        if not requested:
            raise StoreError(f"table '{corpus}' of {store.path} has no vector column")
    query_have = vector_columns(store.schema(queries))
    for column in requested:
        for table, columns in ((corpus, have), (queries, query_have)):
            if column not in columns:
                raise InputError(
                    f"--vector-column {column}: table '{table}' of {store.path} has no such "
                    f"column (vector columns: {', '.join(columns) or 'none'})"
                )
    if requested == [VECTOR_COLUMN]:
        return {}
    refused = [
        flag
        for flag, given in (
            ("--adaptor", options.adaptors),
            ("--baseline", options.baselines),
            ("--dims", options.dims),
        )
        if given
    ]
    if refused:
        raise InputError(
            f"{', '.join(refused)}: not with stored columns ({', '.join(requested)}), which "
            "are evaluated as they are; evaluate the raw store (column 'vector') for those"
        )
    return {column: have[column] for column in requested}
