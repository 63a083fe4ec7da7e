"""Validation while training: nDCG@10 of held-out judged queries at each size."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from madapt_cli.data import Qrels
from madapt_cli.errors import InputError
from madapt_cli.retrieval.evaluate import ndcg_at_10
from madapt_cli.retrieval.search import search_topk, search_topk_prefixes
from madapt_cli.training.config import TrainConfig
from madapt_cli.training.objectives import adapt_all


class Validation:
    """nDCG@10 of held-out queries against the adapted corpus, at each size."""

    def __init__(
        self,
        corpus: torch.Tensor,
        corpus_ids: Sequence[str],
        queries: torch.Tensor,
        query_ids: Sequence[str],
        qrels: Qrels,
        dims: Sequence[int],
        selection_dims: Sequence[int],
        full_size_tolerance: float = 0.005,
    ) -> None:
        self.corpus, self.corpus_ids = corpus, list(corpus_ids)
        self.queries, self.query_ids = queries, list(query_ids)
        self.qrels, self.dims, self.selection_dims = qrels, list(dims), list(selection_dims)
        self.full_size_tolerance = full_size_tolerance
        self.original_full_size: float | None = None

    def keeps_full_size(self, record: dict[str, Any]) -> bool:
        """A checkpoint is eligible only if its full-size nDCG@10 stays within
        ``full_size_tolerance`` of the original vectors' (f = identity)."""
        full = self.corpus.shape[1]
        if str(full) not in record["ndcg@10"]:
            return True
        if self.original_full_size is None:
            self.original_full_size = ndcg_at_10(
                self.queries,
                self.query_ids,
                self.corpus,
                self.corpus_ids,
                self.qrels,
                full,
                device=self.corpus.device,
            )
        return record["ndcg@10"][str(full)] >= self.original_full_size - self.full_size_tolerance

    @torch.no_grad()
    def __call__(self, module: torch.nn.Module) -> dict[str, Any]:
        was_training = module.training
        module.eval()
        corpus = adapt_all(module, self.corpus)
        queries = torch.cat([module(q) for q in self.queries.split(65_536)])
        module.train(was_training)
        device = self.corpus.device
        scores = {
            str(d): ndcg_at_10(
                queries, self.query_ids, corpus, self.corpus_ids, self.qrels, d, device=device
            )
            for d in self.dims
        }
        selected = float(np.mean([scores[str(d)] for d in self.selection_dims]))
        return {"ndcg@10": scores, "score": selected}


PROXY_METRIC = "overlap@10"
# the held-out L_distill per size of (module, (f(corpus), f(held-out anchors)))
HeldOutKL = Callable[[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]], dict[str, float]]


def topk_overlap(reference: np.ndarray, found: np.ndarray) -> float:
    """Mean over rows of |reference_i & found_i| / k: how much of each full-size top-k
    (``reference``, (A, k) corpus rows; -1 pads) a prefix top-k (``found``) reproduces."""
    if reference.size == 0:
        return 0.0
    hits = (reference[:, :, None] == found[:, None, :]) & (reference[:, :, None] >= 0)
    wanted = np.maximum((reference >= 0).sum(axis=1), 1)
    return float((hits.any(axis=2).sum(axis=1) / wanted).mean())


class RankingProxy:
    """The label-free proxy: overlap@10 of held-out unlabelled anchors (queries, or corpus
    rows when ``anchor_rows`` says which), i.e. how much of each anchor's full-size top-10
    over the original corpus the top-10 of the adapted vectors truncated to m reproduces,
    at each size m. Its ``score`` (what checkpoint choice maximises) is the mean over the
    selection sizes. ``monitor`` (optional, a :class:`Validation`) adds its nDCG@10 to each
    record without steering the choice (bench/quality.py measures the proxy against it)."""

    def __init__(  # noqa: PLR0913 - data, sizes, the report-only monitor, the KL proxy
        self,
        corpus: torch.Tensor,
        anchors: torch.Tensor,
        dims: Sequence[int],
        selection_dims: Sequence[int],
        anchor_rows: np.ndarray | None = None,
        monitor: Validation | None = None,
        k: int = 10,
        held_out_kl: HeldOutKL | None = None,
        select_by_kl: bool = False,
        no_size_below_start: bool = False,
    ) -> None:
        self.corpus, self.anchors, self.k = corpus, anchors, k
        self.dims, self.selection_dims = list(dims), list(selection_dims)
        self.exclude = None
        if anchor_rows is not None:
            rows = np.asarray(anchor_rows, np.int64)
            self.exclude = np.stack([np.arange(len(rows), dtype=np.int64), rows], axis=1)
        _, self.reference = search_topk(
            anchors, corpus, k, device=corpus.device, exclude=self.exclude
        )
        self.monitor = monitor
        self.held_out_kl = held_out_kl
        self.select_by_kl = select_by_kl and held_out_kl is not None
        self.no_size_below_start = no_size_below_start
        self.start: dict[str, Any] | None = None

    def keeps_full_size(self, record: dict[str, Any]) -> bool:
        """With ``no_size_below_start``, a checkpoint is eligible only if its overlap@10 is
        at least the start's (the first record) at every selection size."""
        if not self.no_size_below_start or self.start is None:
            return True
        start, now = self.start[PROXY_METRIC], record[PROXY_METRIC]
        return all(now[str(d)] >= start[str(d)] - 1e-9 for d in self.selection_dims)

    @torch.no_grad()
    def __call__(self, module: torch.nn.Module) -> dict[str, Any]:
        was_training = module.training
        module.eval()
        corpus = adapt_all(module, self.corpus)
        anchors = torch.cat([module(q) for q in self.anchors.split(65_536)])
        kl = None
        if self.held_out_kl is not None:
            kl = self.held_out_kl(module, (corpus, anchors))
        module.train(was_training)
        found = search_topk_prefixes(
            anchors, corpus, self.dims, self.k, device=self.corpus.device, exclude=self.exclude
        )
        scores = {str(d): topk_overlap(self.reference, found[d][1]) for d in self.dims}
        selected = float(np.mean([scores[str(d)] for d in self.selection_dims]))
        record: dict[str, Any] = {PROXY_METRIC: scores, "score": selected}
        if kl is not None:
            record["held-out kl"] = kl
            if self.select_by_kl:  # lower is better: the score is minus the mean KL
                record["score"] = -float(np.mean([kl[str(d)] for d in self.selection_dims]))
        if self.monitor is not None:
            record["monitor ndcg@10"] = self.monitor(module)["ndcg@10"]
        if self.start is None:
            self.start = record
        return record


def split_training_queries(
    corpus_ids: Sequence[str],
    queries: np.ndarray,
    query_ids: Sequence[str],
    qrels: Qrels,
    dev_qrels: Qrels | None,
    config: TrainConfig,
) -> tuple[list[str], dict[str, Any] | None]:
    """Training query ids and validation data: the qrels queries with a vector and a
    positively judged corpus document; without ``dev_qrels``, ``validation_fraction`` of them
    are held out for early stopping (and not trained on)."""
    corpus_row = {doc_id: i for i, doc_id in enumerate(corpus_ids)}
    query_row = {query_id: i for i, query_id in enumerate(query_ids)}
    usable = sorted(
        q
        for q, judged in qrels.items()
        if q in query_row and any(g > 0 and d in corpus_row for d, g in judged.items())
    )
    if not usable:
        raise InputError(
            "no query of the train qrels has a positive judgement on a document of the corpus "
            "table and a vector in the queries table: do the ids match?"
        )
    if dev_qrels is None:
        shuffled = random.Random(config.seed).sample(usable, len(usable))
        held = max(1, round(len(usable) * config.validation_fraction)) if len(usable) > 4 else 0
        validation_ids, train_ids = sorted(shuffled[:held]), sorted(shuffled[held:])
        validation_qrels = {q: dict(qrels[q]) for q in validation_ids}
    else:
        train_ids = usable
        validation_qrels = {q: dict(j) for q, j in dev_qrels.items() if q in query_row}
        if not validation_qrels:
            raise InputError("no query of the dev qrels has a vector in the queries table")
    return train_ids, validation_set(corpus_ids, queries, query_ids, validation_qrels)


def validation_set(
    corpus_ids: Sequence[str], queries: np.ndarray, query_ids: Sequence[str], judged: Qrels
) -> dict[str, Any] | None:
    """The validation data of :class:`Validation`: the judged queries that have a vector
    (None when there are none)."""
    query_row = {query_id: i for i, query_id in enumerate(query_ids)}
    ids = sorted(q for q in judged if q in query_row)
    if not ids:
        return None
    return {
        "corpus_ids": list(corpus_ids),
        "query_ids": ids,
        "queries": queries[[query_row[q] for q in ids]],
        "qrels": {q: dict(judged[q]) for q in ids},
    }


def selection_dims(config: TrainConfig, dims: Sequence[int], dimension: int) -> list[int]:
    """The sizes whose mean score chooses a checkpoint: ``config.validation_dims``, else the
    trained sizes below the full one (the full one alone when there is none)."""
    return list(config.validation_dims or [d for d in dims if d < dimension] or [dimension])


def build_validation(
    vectors: torch.Tensor,
    data: dict[str, Any] | None,
    dims: list[int],
    config: TrainConfig,
    device: torch.device,
) -> Validation | None:
    """The :class:`Validation` of the adapted ``vectors`` (the corpus, on ``device``) by the
    queries of ``data`` (see :func:`validation_set`; None: no validation) at ``dims`` and the
    selection sizes (``config.validation_dims``, default the ``dims`` below D)."""
    if not data:
        return None
    selection = selection_dims(config, dims, vectors.shape[1])
    queries = F.normalize(torch.tensor(np.asarray(data["queries"], np.float32)).to(device), dim=-1)
    report_dims = sorted(set(dims) | set(selection))
    return Validation(
        vectors,
        data["corpus_ids"],
        queries,
        data["query_ids"],
        data["qrels"],
        report_dims,
        selection,
    )


def training_queries(
    corpus_ids: Sequence[str],
    queries: np.ndarray,
    query_ids: Sequence[str],
    qrels: Qrels,
    train_ids: Sequence[str],
    device: torch.device,
) -> tuple[torch.Tensor, list[dict[int, int]]]:
    """The unit vectors of the training queries ``train_ids`` (on ``device``) and, per
    query, its judged corpus rows: corpus row -> grade (what
    :class:`~madapt_cli.training.objectives.SupervisedObjective` takes)."""
    corpus_row = {doc_id: i for i, doc_id in enumerate(corpus_ids)}
    query_row = {query_id: i for i, query_id in enumerate(query_ids)}
    vectors = np.asarray(queries[[query_row[q] for q in train_ids]], np.float32)
    train_queries = F.normalize(torch.from_numpy(vectors).to(device), dim=-1)
    judgments = [
        {corpus_row[d]: g for d, g in qrels[q].items() if d in corpus_row} for q in train_ids
    ]
    return train_queries, judgments
