"""A table cut into fragments that can be read independently, for readers on other
processes or machines (the Ray engine's workers): the driver lists the fragments (a few bytes
each, :meth:`Store.fragments`) and each worker reads its own with :func:`read_fragment`, so no
rows pass through the driver.

* Parquet (listed by :func:`madapt_cli.store.parquet.parquet_fragments`): one fragment per
  row group of each live file, with the mask of its rows that a
  later file supersedes (the same masks as :meth:`Store.iter_batches`: one rule for which
  rows are live, however the table is read).
* Lance: ranges of rows (``offset``/``limit`` of a plain scan) of the table version the
  driver saw, so a write during the run changes nothing a worker reads.

Read in fragment order, the batches are the rows of :meth:`Store.iter_batches`, in its
order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from madapt_cli.store.parquet_files import read_live_batches

#: Lance: rows per fragment, in blocks (a range is found by ``offset``, which pays for the
#: rows it skips: fewer, longer ranges)
LANCE_BLOCKS_PER_FRAGMENT = 8


@dataclass(frozen=True)
class Fragment:
    """A piece of a table one worker reads: a Parquet file's row group (``part``), with the
    packed mask of its live rows (None: all live), or a Lance range (``part``: the first
    row, ``rows`` rows, table ``version``). ``start``: the index of its first row in its
    file or table (for error messages)."""

    format: str
    path: str
    table: str
    part: int
    rows: int
    live: bytes | None = None
    version: int | None = None
    start: int = 0

    def to_item(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Fragment:
        return cls(**{name: item[name] for name in cls.__dataclass_fields__})


def lance_fragments(database: str, table: Any, block_rows: int) -> list[Fragment]:
    """Ranges of the LanceDB ``table`` (of ``database``), at its current version."""
    total, version = table.count_rows(), table.version
    step = block_rows * LANCE_BLOCKS_PER_FRAGMENT
    return [
        Fragment(
            "lance", database, table.name, first, min(step, total - first), None, version, first
        )
        for first in range(0, total, step)
    ]


def read_fragment(
    fragment: Fragment, columns: list[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """The live rows of ``fragment`` (``columns`` only), at most ``batch_rows`` at a time."""
    if fragment.format == "lance":
        yield from _read_lance(fragment, columns, batch_rows)
        return
    live = None
    if fragment.live is not None:
        bits = np.frombuffer(fragment.live, np.uint8)
        live = np.unpackbits(bits, count=fragment.rows).astype(bool)
    yield from read_live_batches(Path(fragment.path), live, columns, batch_rows, [fragment.part])


def _read_lance(fragment: Fragment, columns: list[str], batch_rows: int) -> Iterator[Any]:
    import lancedb

    table = lancedb.connect(fragment.path).open_table(fragment.table)
    table.checkout(fragment.version)
    query = table.search().select(columns).offset(fragment.part).limit(fragment.rows)
    yield from query.to_batches(batch_rows)
