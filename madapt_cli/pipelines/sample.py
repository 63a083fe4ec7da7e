"""`madapt fit --sample N`: train on a uniform random sample of N corpus rows.

Fitting reads the whole corpus table into memory, once for hard-negative mining and once for
training; on a corpus of 100 million rows that does not fit. ``--sample N`` keeps the fit
bounded: the corpus table that training sees holds N rows, chosen uniformly at random.

The sample is the N rows whose ``blake2b(seed, id)`` is smallest: a uniform random choice
(the hash of distinct ids is as good as a random permutation), computed in one streamed pass
that holds only N ids (the corpus is never loaded whole), and reproducible: the same store
and seed give the same rows, whatever the order of the table. The documents the qrels judge
(``--qrels``/``--dev-qrels``) are added when the sample missed them: they are the positives
of supervised training and the validation targets, and there are few of them. The artifact
records the sample (``sample`` in config.json: rows, seed, the judged rows added, the corpus
size and the sha256 of the sampled ids), and ``training_data_sha256`` covers exactly the rows
trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from madapt_cli.errors import InputError, StoreError
from madapt_cli.store.base import Store

TABLE = "corpus"


def _keys(ids: list[str], seed: int) -> np.ndarray:
    """A 64-bit pseudo-random key per id, a function of the seed and the id only."""
    salt = f"madapt-sample:{seed}:".encode()
    blake = hashlib.blake2b
    return np.fromiter(
        (int.from_bytes(blake(salt + i.encode(), digest_size=8).digest(), "big") for i in ids),
        dtype=np.uint64,
        count=len(ids),
    )


def sample_ids(id_batches: Iterable[list[str]], rows: int, seed: int) -> tuple[list[str], int]:
    """The ``rows`` ids of smallest key among ``id_batches`` (all of them when fewer), and
    how many ids there were. Memory: the kept ids plus one batch."""
    kept_ids: list[str] = []
    kept_keys = np.zeros(0, np.uint64)
    total = 0
    for ids in id_batches:
        total += len(ids)
        kept_ids += ids
        kept_keys = np.concatenate([kept_keys, _keys(ids, seed)])
        if len(kept_ids) > 2 * rows:  # trim now and then, not after every batch
            kept_ids, kept_keys = _smallest(kept_ids, kept_keys, rows)
    kept_ids, kept_keys = _smallest(kept_ids, kept_keys, rows)
    return kept_ids, total


def _smallest(ids: list[str], keys: np.ndarray, rows: int) -> tuple[list[str], np.ndarray]:
    if len(ids) <= rows:
        return ids, keys
    chosen = np.argpartition(keys, rows - 1)[:rows]
    return [ids[i] for i in chosen], keys[chosen]


def sample_corpus(data: Any, rows: int | None, seed: int) -> dict[str, Any] | None:
    """Replace ``data.store`` (a fit's :class:`TrainingData`) by a view of its store whose
    corpus table holds the sample; returns what config.json records (None: no sample)."""
    if rows is None:
        return None
    if rows < 2:
        raise InputError(f"--sample {rows}: must be at least 2 rows")
    store: Store = data.store
    judged = {doc for qrels in (data.qrels, data.dev_qrels) if qrels for d in qrels.values()
              for doc in d}  # fmt: skip
    present: set[str] = set()  # the judged documents the corpus holds

    def id_batches() -> Iterator[list[str]]:
        for batch in store.iter_batches(TABLE, columns=["id"]):
            ids = batch.column(0).to_pylist()
            if judged:
                present.update(judged.intersection(ids))
            yield ids

    chosen, total = sample_ids(id_batches(), rows, seed)
    keep = set(chosen)
    added = present - keep
    keep |= added
    data.store = SampledStore(store, keep)
    digest = hashlib.sha256("\n".join(sorted(keep)).encode()).hexdigest()
    return {
        "rows": len(chosen),
        "requested": rows,
        "seed": seed,
        "corpus_rows": total,
        "judged_added": len(added),
        "ids_sha256": digest,
        "method": "the rows of smallest blake2b('madapt-sample:SEED:' + id)",
    }


class SampledStore(Store):
    """A read-only view of ``store`` whose corpus table holds only the ``keep`` ids (in
    table order); every other table is the store's."""

    def __init__(self, store: Store, keep: set[str]) -> None:
        super().__init__(store.path)
        self.format = store.format
        self.inner = store
        self.keep = pa.array(sorted(keep), pa.string())
        self.rows = len(keep)

    def tables(self) -> list[str]:
        return self.inner.tables()

    def has_table(self, name: str) -> bool:
        return self.inner.has_table(name)

    def metadata(self, name: str) -> dict[str, Any]:
        return self.inner.metadata(name)

    def schema(self, name: str) -> pa.Schema:
        return self.inner.schema(name)

    def num_rows(self, name: str) -> int:
        return self.rows if name == TABLE else self.inner.num_rows(name)

    def iter_batches(
        self, name: str, columns: list[str] | None = None, batch_rows: int = 65_536
    ) -> Iterator[pa.RecordBatch]:
        if name != TABLE:
            yield from self.inner.iter_batches(name, columns, batch_rows)
            return
        wanted = columns or self.schema(name).names
        read = wanted if "id" in wanted else ["id", *wanted]
        for batch in self.inner.iter_batches(name, read, batch_rows):
            kept = batch.filter(pc.is_in(batch.column("id"), value_set=self.keep))
            if kept.num_rows:
                yield kept.select(wanted)

    def append(self, name: str, rows: pa.Table) -> None:
        raise StoreError("a sampled view of a store is read-only")

    def retain(self, name: str, keep_ids: set[str] | None = None) -> int:
        raise StoreError("a sampled view of a store is read-only")

    def write_table(self, name: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
        raise StoreError("a sampled view of a store is read-only")
