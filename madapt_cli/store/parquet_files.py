"""Reading a Parquet file of a store: a truncated or damaged file becomes the store's one-line
error naming it, and rows that a later file supersedes are masked out. Used by the Parquet
store and by workers that read a table's fragments (store/fragments.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from madapt_cli.errors import ENVIRONMENT_ERRNOS, StoreError


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """A Parquet file that is truncated or damaged becomes a StoreError naming it."""
    try:
        yield
    except pa.ArrowInvalid as error:
        raise StoreError(_damaged(path, error)) from None
    except OSError as error:
        if error.errno in ENVIRONMENT_ERRNOS or isinstance(error, FileNotFoundError):
            raise
        raise StoreError(_damaged(path, error)) from None


def _damaged(path: Path, error: BaseException) -> str:
    reason = " ".join(str(error).split())
    return (
        f"{path}: unreadable Parquet file of the store ({reason}); it was changed outside "
        "madapt: restore it, or delete the table's folder and rerun `madapt embed`"
    )


def read_live_batches(
    path: Path,
    live: np.ndarray | None,
    columns: list[str] | None,
    batch_rows: int,
    row_groups: list[int] | None = None,
) -> Iterator[pa.RecordBatch]:
    """The rows of one table file (or of its ``row_groups``) whose entry in ``live`` is true
    (every row when None), ``columns`` only, at most ``batch_rows`` at a time; a damaged
    file is the store's one-line error."""
    offset = 0
    with reading(path):
        batches = pq.ParquetFile(path).iter_batches(
            batch_size=batch_rows, row_groups=row_groups, columns=columns
        )
    while True:
        with reading(path):
            batch = next(batches, None)
        if batch is None:
            return
        rows = batch.num_rows
        if live is not None:
            batch = batch.filter(pa.array(live[offset : offset + rows]))
        offset += rows
        if batch.num_rows:
            yield batch
