"""The unlabelled queries an unsupervised fit learns from (``madapt fit --query-ids FILE``),
and the record of them that guards evaluation against leakage."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from madapt_cli.errors import InputError

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
