"""The unlabelled queries an unsupervised fit learns from (``madapt fit --query-ids FILE``),
the record of them that guards evaluation against leakage, and more anchors beside them
(mixups of the queries; extra anchors such as the documents' titles)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from madapt_cli.errors import InputError
from madapt_cli.training.config import TrainConfig
from madapt_cli.training.loop import EpochOrder
from madapt_cli.training.objectives import DistillationObjective
from madapt_cli.util.dims import check_train_dims

_HEADERS = ("query-id", "query_id", "qid", "id", "_id")
#: hex digits kept of each id's sha256 in config.json (membership test for `madapt eval`)
ID_DIGEST_CHARS = 16


def read_query_ids(path: str | Path) -> list[str]:
    """Query ids from ``path``: a qrels file (BEIR TSV ``query-id corpus-id score`` with or
    without its header, or TREC ``qid 0 docid rel``; the judgements are ignored) or one id a
    line. The first non-empty line decides which; every line must then agree. Returns the
    distinct ids in file order. :class:`InputError` ("FILE:LINE: ...") otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such query-ids file")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror or error}") from None
    ids: dict[str, None] = {}
    columns = None
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r")
        except UnicodeDecodeError:
            raise InputError(f"{path}:{number}: not UTF-8 text") from None
        if not text.strip():
            continue
        parts = [p.strip() for p in (text.split("\t") if "\t" in text else text.split())]
        if columns is None:
            columns = len(parts)
            if columns not in (1, 3, 4):
                raise InputError(
                    f"{path}:{number}: {columns} columns: expected a qrels file (query-id, "
                    "corpus-id, score) or one query id a line"
                )
            if parts[0].lower() in _HEADERS:
                continue
        elif len(parts) != columns:
            raise InputError(f"{path}:{number}: {len(parts)} columns, the first line has {columns}")
        if not parts[0]:
            raise InputError(f"{path}:{number}: empty query id")
        ids[parts[0]] = None
    if not ids:
        raise InputError(f"{path}: no query ids in this file")
    return list(ids)


def id_digest(query_id: str) -> str:
    return hashlib.sha256(query_id.encode("utf-8")).hexdigest()[:ID_DIGEST_CHARS]


def anchor_record(table: str, query_ids: Sequence[str], source: str | None) -> dict[str, Any]:
    """config.json's ``learned_from_queries``: which unlabelled queries shaped the weights
    (the table, how they were chosen, their count, the sha256 of the sorted ids joined by
    newlines, and a short digest per id so that `madapt eval` can tell whether it evaluates
    on any of them)."""
    ordered = sorted(query_ids)
    return {
        "table": table,
        "selected_by": source or f"all of the '{table}' table",
        "count": len(ordered),
        "sha256": hashlib.sha256("\n".join(ordered).encode("utf-8")).hexdigest(),
        "id_digests": sorted(id_digest(q) for q in ordered),
    }


def learned_overlap(record: dict[str, Any] | None, query_ids: Iterable[str]) -> int:
    """How many of ``query_ids`` the adaptor learned from (0 without a record)."""
    if not isinstance(record, dict) or not isinstance(record.get("id_digests"), list):
        return 0
    known = set(record["id_digests"])
    return sum(1 for q in query_ids if id_digest(q) in known)


def synthetic_anchors(anchors: torch.Tensor, per_anchor: int, seed: int) -> torch.Tensor:
    """``per_anchor`` x len(anchors) unit vectors near the unlabelled queries ``anchors``
    (unit rows), for L_distill: its teacher (full-size cosines to the corpus) scores any
    vector, so anchors need only cover the region where queries lie, not be real queries.
    Each is normalize(l a_i + (1 - l) a_j) for a random other anchor j and l drawn uniformly
    from [0, 1] (mixup, Zhang et al., ICLR 2018, on the anchors)."""
    generator = torch.Generator().manual_seed(seed)
    count, width = anchors.shape
    made = []
    for _ in range(per_anchor):
        other = anchors[torch.randint(count, (count,), generator=generator).to(anchors.device)]
        weight = torch.rand(count, 1, generator=generator).to(anchors)
        made.append(weight * anchors + (1 - weight) * other)
    if not made:
        return anchors.new_zeros((0, width))
    return torch.nn.functional.normalize(torch.cat(made), dim=-1)


class ExtraAnchorTerm:
    """``weight`` x L_distill of one batch of extra anchors per step (their own sizes), the
    batches walking a fresh permutation of the extra anchors each pass."""

    def __init__(self, objective: DistillationObjective, order: EpochOrder, weight: float) -> None:
        self.objective, self.order, self.weight = objective, order, weight

    def __call__(self, module: nn.Module, generator: torch.Generator) -> torch.Tensor:
        return self.weight * self.objective(module, self.order.next(generator), generator)


def extra_anchor_term(
    vectors: torch.Tensor,
    extra_anchors: np.ndarray | None,
    dims: list[int],
    config: TrainConfig,
) -> ExtraAnchorTerm | None:
    """The L_distill term of ``extra_anchors`` (None without any, or at weight 0): over
    ``config.distill_extra_dims`` (default ``dims``) at ``config.distill_extra_weight``,
    ``config.distill_batch_size`` of them a step; without student negatives."""
    if extra_anchors is None or len(extra_anchors) == 0 or config.distill_extra_weight <= 0:
        return None
    dimension = vectors.shape[1]
    extra_dims = check_train_dims(config.distill_extra_dims or dims, dimension)
    raw = np.asarray(extra_anchors, np.float32)
    if raw.ndim != 2 or raw.shape[1] != dimension:
        raise InputError(f"extra anchors have shape {raw.shape}: expected (n, {dimension})")
    anchors = F.normalize(torch.from_numpy(raw).to(vectors.device), dim=-1)
    objective = DistillationObjective(
        vectors, anchors, extra_dims, config, config.dim_weights(extra_dims)
    )
    batch = min(config.distill_batch_size, len(anchors))
    order = EpochOrder(len(anchors), batch, vectors.device)
    return ExtraAnchorTerm(objective, order, config.distill_extra_weight)
