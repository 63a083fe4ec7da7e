"""What a method is (``madapt fit --method NAME``), the data it fits on, and how to find one.

A method is one module of this package with a :class:`Method` subclass, plus one line in
:data:`madapt_cli.methods.METHODS`. It knows its own `madapt fit` options, how to check and
rebuild its artifact's module from config.json (for
:meth:`~madapt_cli.methods.adaptor.Adaptor.load`), and how to fit that module on a store's
:class:`TrainingData`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from madapt_cli.data import Qrels
from madapt_cli.errors import InputError
from madapt_cli.methods import METHODS
from madapt_cli.store.base import check_tables_agree
from madapt_cli.training.config import TrainConfig
from madapt_cli.training.progress import EpochProgress
from madapt_cli.training.validation import validation_set
from madapt_cli.util.dims import default_train_dims
from madapt_cli.util.hashing import training_fingerprint


def get_method(name: Any, label: str = "method") -> Method:
    """The method registered as ``name``; :class:`InputError` ("unknown ``label`` ...")
    listing the known ones otherwise."""
    if not isinstance(name, str) or name not in METHODS:
        raise InputError(f"unknown {label} {name!r}: use {', '.join(METHODS)}")
    module, _, cls = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


@dataclass
class TrainingData:
    """What `madapt fit` trains on: a store's ``corpus`` table and, when qrels are given,
    its ``queries`` table. Vectors are read when first asked for (:meth:`read`), or streamed
    (:meth:`corpus_batches`)."""

    store: Any  # a madapt_cli.store Store
    source: str | Path  # the store's path as the user gave it (for messages)
    metadata: dict[str, Any]  # the corpus table's (model, provider, normalized...)
    dimension: int  # of the corpus vectors
    mode: str = "unsupervised"
    qrels: Qrels | None = None
    dev_qrels: Qrels | None = None
    #: unsupervised objective: "paper" (corpus only), or "distill" (unlabelled queries as
    #: anchors when ``queries_table`` is set, else corpus rows)
    objective: str = "paper"
    #: the table of unlabelled queries to learn from (None: none, corpus only)
    queries_table: str | None = None
    #: which of its queries (None: all of them, less the --qrels/--dev-qrels queries)
    anchor_ids: list[str] | None = None
    #: how they were chosen, for config.json and the summary ("--query-ids FILE")
    anchor_source: str | None = None

    @property
    def supervised(self) -> bool:
        return self.mode == "supervised"

    def corpus_batches(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """(ids, vectors) of the corpus, streamed; every row checked."""
        return self.store.iter_vectors("corpus")

    @cached_property
    def _vectors(self) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
        corpus_ids, corpus = self.store.read_vectors("corpus")
        if len(corpus_ids) < 2:
            raise InputError(f"table 'corpus' of {self.source} has {len(corpus_ids)} rows; need 2+")
        query_ids: list[str] = []
        queries = np.zeros((0, self.dimension), np.float32)
        if self.qrels is not None or self.dev_qrels is not None:
            self.store.require_table("queries")
            check_tables_agree(self.store, "queries", "corpus")
            query_ids, queries = self.store.read_vectors("queries")
        return corpus_ids, corpus, query_ids, queries

    def read(self) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
        """(corpus ids, corpus vectors, query ids, query vectors), read once: the queries
        only when there are qrels (else none); at least 2 corpus rows."""
        return self._vectors

    @cached_property
    def anchors(self) -> tuple[list[str], np.ndarray] | None:
        """(ids, vectors) of the unlabelled queries to learn from; None when there are none
        (corpus only). Without ``anchor_ids``: every query of the table except those judged
        in --qrels / --dev-qrels (they validate). :class:`InputError` when none is left."""
        if self.queries_table is None:
            return None
        self.store.require_table(self.queries_table)
        check_tables_agree(self.store, self.queries_table, "corpus")
        ids, vectors = self.store.read_vectors(self.queries_table)
        row = {query_id: i for i, query_id in enumerate(ids)}
        if self.anchor_ids is not None:
            wanted = [q for q in self.anchor_ids if q in row]
            if not wanted:
                raise InputError(
                    f"none of the {len(self.anchor_ids)} ids of {self.anchor_source} is a "
                    f"query of table '{self.queries_table}'"
                )
        else:
            judged = set(self.qrels or {}) | set(self.dev_qrels or {})
            wanted = [q for q in ids if q not in judged]
            if not wanted:
                raise InputError(
                    f"table '{self.queries_table}' has no query outside the --qrels/--dev-qrels "
                    "queries to learn from"
                )
        return wanted, vectors[[row[q] for q in wanted]]

    def validation(self) -> dict[str, Any] | None:
        """Unsupervised training's validation data: the dev qrels (else the train qrels)
        queries that have a vector; None without qrels."""
        judged = self.dev_qrels if self.dev_qrels is not None else self.qrels
        if judged is None:
            return None
        corpus_ids, _, query_ids, queries = self.read()
        found = validation_set(corpus_ids, queries, query_ids, judged)
        if found is None:
            raise InputError("no query of the qrels has a vector in the 'queries' table")
        return found

    def sha256(self) -> str:
        """The training data's hash: corpus ids and vectors, and in supervised mode the
        queries and the train qrels (the only data the weights depend on)."""
        corpus_ids, corpus, query_ids, queries = self.read()
        labelled = (query_ids, queries, self.qrels) if self.supervised else ()
        anchors = self.anchors if not self.supervised and self.objective == "distill" else None
        unlabelled = anchors if anchors is not None else ()
        return training_fingerprint(corpus_ids, corpus, *labelled, *unlabelled)


@dataclass
class Fitted:
    """A method's result: the trained module and what config.json says about it."""

    module: nn.Module
    #: the method's config.json entries, in order (architecture, mode, train_dims,
    #: training_rows, training_data_sha256, ...)
    record: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None


class Method(ABC):
    """One way to make an adaptor. Subclasses set :attr:`name` and implement
    :meth:`build_module` and :meth:`fit`; the rest has defaults."""

    name: ClassVar[str]
    #: `madapt fit` options only this method takes: parameter -> (the flag to name when it
    #: is set, the value that means "not set")
    flags: ClassVar[dict[str, tuple[str, Any]]] = {}
    #: every stage trains with ``TrainConfig.lr`` (``--lr`` in both modes)
    one_learning_rate: ClassVar[bool] = False
    #: ``--mode supervised`` needs ``--qrels``
    supervised_needs_qrels: ClassVar[bool] = True
    #: ``--mode unsupervised`` takes ``--objective`` and learns from unlabelled queries
    #: (``--queries-table``, ``--query-ids``)
    learns_from_queries: ClassVar[bool] = False

    # --- options --------------------------------------------------------------------------
    def cli_options(self, values: dict[str, Any]) -> Any:
        """The method's options from its `madapt fit` flags (``values``: parameter ->
        value, those in :attr:`flags`); None for a method without options."""
        return None

    def check_options(self, options: Any) -> Any:
        """``options`` (None: the defaults) checked before any work; what :meth:`fit` gets."""
        if options is not None:
            raise InputError(f"--method {self.name} takes no options, got {options!r}")
        return None

    # --- the artifact ---------------------------------------------------------------------
    def check_config(self, config: dict[str, Any], config_path: Path) -> None:
        """Raise :class:`InputError` naming ``config_path`` unless config.json's
        method-specific entries are sane (the generic ones are already checked)."""
        return None

    @abstractmethod
    def build_module(self, config: dict[str, Any]) -> nn.Module:
        """An untrained module of the architecture config.json describes."""

    def weights_dimension(self, state: dict[str, torch.Tensor]) -> int | None:
        """The vectors' dimension the weights were made for (None when they do not say)."""
        return None

    # --- fitting --------------------------------------------------------------------------
    def default_train_dims(self, dimension: int) -> list[int]:
        """The sizes trained without ``--train-dims``: powers of two from 16 below D, and D."""
        return default_train_dims(dimension)

    @abstractmethod
    def fit(
        self,
        data: TrainingData,
        config: TrainConfig,
        options: Any,
        progress: EpochProgress,
        resume: Path | None = None,
    ) -> Fitted:
        """Train on ``data`` (``config.train_dims`` already checked against its dimension),
        reporting epochs through ``progress`` (call its ``plan`` first)."""


def reject_foreign_flags(method: Method, values: dict[str, Any], names: Sequence[str]) -> None:
    """Raise :class:`InputError` ("--to-dim only applies to --method smec") for the first
    flag of ``values`` that is set but belongs to another of the methods ``names``."""
    for key, value in values.items():
        if key in method.flags:
            continue
        owners = [name for name in names if key in get_method(name).flags]
        flag, unset = get_method(owners[0]).flags[key] if owners else (key, None)
        if value != unset:
            raise InputError(f"{flag} only applies to --method {' or '.join(owners)}")


def method_options(method: Method, values: dict[str, Any]) -> Any:
    """``method``'s options from every method's `madapt fit` flags (``values``: parameter
    -> value): refuses a flag of another method, then lets ``method`` read its own."""
    reject_foreign_flags(method, values, list(METHODS))
    return method.cli_options({k: v for k, v in values.items() if k in method.flags})
