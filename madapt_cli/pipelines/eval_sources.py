"""What `madapt eval` searches besides the raw vectors mapped by an adaptor: the PCA
baseline, and stored columns evaluated as they are (an applied store's ``vector_<d>``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from madapt_cli.errors import InputError, StoreError
from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.retrieval.search import ArrayLike
from madapt_cli.store.base import VECTOR_COLUMN, Store, vector_columns

PCA_FIT_ROWS = 200_000


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
