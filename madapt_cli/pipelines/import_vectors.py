"""The import pipeline (``madapt import``): vectors you already have -> a store table.

1. Open the SOURCE (:mod:`madapt_cli.vector_sources`) and read its first chunk: the fields
   exist, the vectors have a width, the declaration (provider, model, dimensions, task type or
   prompt, normalisation) is checked against it and against the table already in the store
   (:func:`~madapt_cli.store.base.check_appendable`) before anything is written.
2. Stream every chunk into :meth:`Store.write_table`, which builds the table under staging
   and publishes it only at the end: a failure or a kill leaves the store as it was. Each
   chunk is checked on the way (ids present; vectors non-null, not ragged, finite, non-zero),
   L2-normalised unless they already are (``normalize``), and, with a text field, given the
   content key the declared provider computes (:meth:`EmbeddingProvider.content_key`), so a
   later ``madapt embed`` with that provider and model reuses exactly the rows it would have
   produced itself. Without a text field the key is null: embed never reuses such a row.
3. Duplicate ids are found from 8-byte digests (8 bytes a row) before publishing; a second
   pass over the ids names the first repeated one.

An existing table of the same name is merged: the imported rows supersede rows with the same
id and the other rows are kept (so re-importing a file is idempotent); ``replace`` drops the
old rows instead. Either way the identity (provider, model, dimension, normalisation, dtype)
must agree unless ``replace``.

Memory is bounded by ``batch_rows`` rows plus 8 bytes an id. Nothing here prints: progress
goes to a :class:`~madapt_cli.util.progress.Progress` callback as the task ``"import TABLE"``:
cumulative rows after each chunk from the second on (so a one-chunk source that fails shows
only its error), and a last event with ``finished=True``.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from madapt_cli.errors import InputError, StoreError
from madapt_cli.pipelines.import_identity import ImportDeclaration, ImportIdentity
from madapt_cli.store.base import (
    LOCK_FILE,
    MARKER,
    Store,
    check_appendable,
    embedding_schema,
    open_store,
    validate_table_name,
    vectors_to_arrow,
)
from madapt_cli.util.progress import Progress, ProgressEvent, report
from madapt_cli.vector_sources import (
    VectorChunk,
    VectorFields,
    VectorSource,
    chunk_vectors,
    open_vector_source,
    row_label,
)

__all__ = ["Converter", "ImportDeclaration", "ImportSummary", "import_vectors"]

#: |norm^2 - 1| under which a vector counts as unit-length and is stored as given
UNIT_TOLERANCE = 1e-4


@dataclass
class ImportSummary:
    store: str
    format: str
    table: str
    source: str
    rows: int  # imported
    dimension: int
    kept: int  # rows of the existing table kept (ids not in the import)
    superseded: int  # rows of the existing table replaced by an imported row of the same id
    rescaled: int  # rows L2-normalised (not already unit-length)
    content_keys: bool  # True when rows carry a content key (a text field was given)
    seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _digests(ids: list[str]) -> np.ndarray:
    blake = hashlib.blake2b
    return np.fromiter(
        (int.from_bytes(blake(i.encode("utf-8"), digest_size=8).digest(), "big") for i in ids),
        dtype=np.uint64,
        count=len(ids),
    )


# --- checking and converting one chunk ------------------------------------------------------
def _checked_ids(chunk: VectorChunk) -> list[str]:
    ids = chunk.ids.to_pylist()
    if chunk.ids.null_count or not all(ids):
        index = next(i for i, value in enumerate(ids) if not value)
        raise InputError(f"{chunk.where}: row {chunk.start + index + 1} has no id")
    return ids


def _unit_rows(chunk: VectorChunk, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared norms of the rows, refusing a non-finite or all-zero vector (one fast pass;
    the exact check runs only when the fast one flags a row)."""
    squares = np.einsum("ij,ij->i", vectors, vectors)
    suspicious = ~(np.isfinite(squares) & (squares > 0))
    if suspicious.any():
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            index = int(np.argmax(~finite))
            raise InputError(
                f"{chunk.where}: {row_label(chunk, index)} has a non-finite value "
                "(NaN or infinity); refusing to import it"
            )
        zero = ~vectors.any(axis=1)
        if zero.any():
            index = int(np.argmax(zero))
            raise InputError(
                f"{chunk.where}: {row_label(chunk, index)} is an all-zero vector; refusing to "
                "import it"
            )
        wide = vectors.astype(np.float64)  # over- or underflow in float32 only
        squares = np.einsum("ij,ij->i", wide, wide)
    return squares, suspicious


class _Importer:
    """Checks and converts chunks into store batches; remembers the id digests."""

    def __init__(
        self, identity: ImportIdentity, schema: pa.Schema, normalize: bool, batch_rows: int
    ) -> None:
        self.identity, self.schema, self.normalize = identity, schema, normalize
        self.batch_rows = batch_rows
        self.width = identity.width
        self.digests: list[np.ndarray] = []
        self.rows = 0
        self.rescaled = 0

    def batch(self, chunk: VectorChunk) -> pa.RecordBatch:
        return self.record(*self.convert(chunk))

    def record(self, batch: pa.RecordBatch, rescaled: int) -> pa.RecordBatch:
        """Count a converted batch: its ids (the duplicate check), its rows, rescaled rows."""
        self.digests.append(_digests(batch.column(0).to_pylist()))
        self.rows += batch.num_rows
        self.rescaled += rescaled
        return batch

    def convert(self, chunk: VectorChunk) -> tuple[pa.RecordBatch, int]:
        """One chunk checked and converted: (its rows, how many were rescaled). Changes
        nothing here, so a Ray worker runs it as is (`madapt import --engine ray`)."""
        ids = _checked_ids(chunk)
        vectors = chunk_vectors(chunk)
        if vectors.shape[1] != self.width:
            raise InputError(
                f"{chunk.where}: {row_label(chunk, 0)} has {vectors.shape[1]} values, not "
                f"{self.width} like the first row (ragged vectors)"
            )
        squares, _ = _unit_rows(chunk, vectors)
        column: pa.Array | None = None
        rescaled = 0
        if self.normalize and not np.all(np.abs(squares - 1.0) <= UNIT_TOLERANCE):
            off = np.abs(squares - 1.0) > UNIT_TOLERANCE
            rescaled = int(off.sum())
            scale = (1.0 / np.sqrt(squares)).astype(np.float32)
            vectors = vectors * scale[:, None]
        elif chunk.vectors.type == self.schema.field(1).type:
            column = chunk.vectors  # float32 FixedSizeList, unchanged: no copy
        if column is None:
            column = vectors_to_arrow(vectors)
        columns = [pa.array(ids, pa.string()), column, self.identity.keys(chunk, ids)]
        if "text" in self.schema.names:
            columns.append(pa.nulls(len(ids), pa.string()))
        return pa.RecordBatch.from_arrays(columns, schema=self.schema), rescaled

    def sorted_digests(self) -> np.ndarray:
        digests = np.concatenate(self.digests) if self.digests else np.zeros(0, np.uint64)
        digests.sort()
        return digests


def _first_duplicate(source: VectorSource, repeated: set[int], batch_rows: int) -> str:
    """A second pass over the ids: where the first repeated id is (a digest collision
    between different ids, odds 2^-64 a pair, names nothing and passes)."""
    seen: dict[str, str] = {}
    for chunk in source.chunks(batch_rows):
        ids = chunk.ids.to_pylist()
        for index, (item_id, digest) in enumerate(zip(ids, _digests(ids), strict=True)):
            if int(digest) not in repeated:
                continue
            where = f"{chunk.where}: row {chunk.start + index + 1}"
            if item_id in seen:
                return f"{where}: duplicate id {item_id!r} (first at {seen[item_id]})"
            seen[item_id] = where
    return ""


#: who converts the chunks: (importer, SOURCE, first chunk, the rest) -> (batch, rows
#: rescaled) pairs in order, each from :meth:`_Importer.convert` (``--engine ray``: workers)
Converter = Callable[..., Iterator[tuple[pa.RecordBatch, int]]]


# --- the whole import ------------------------------------------------------------------------
def _open_output(out: Path, store_format: str | None) -> Store | None:
    """The existing store at ``out`` (None when there is none yet); refuses a folder that is
    not empty and not a madapt store."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a store directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise InputError(
                f"--out {out} exists, is not empty and is not a madapt store (no {MARKER}): "
                "choose a new or empty directory"
            )
        return open_store(out, store_format)
    return None


def import_vectors(  # noqa: PLR0913 - the SOURCE, its fields and the declaration, as keywords
    source: str | Path,
    out: str | Path,
    fields: VectorFields,
    declared: ImportDeclaration = ImportDeclaration(),
    *,
    table: str = "corpus",
    ids_file: str | Path | None = None,
    store_format: str | None = None,
    replace: bool = False,
    batch_rows: int = 65_536,
    progress: Progress | None = None,
    converter: Converter | None = None,
) -> ImportSummary:
    """Import the vectors of ``source`` into ``out[table]`` (see the module docstring);
    ``converter`` (:data:`Converter`) None: the chunks are converted in this process."""
    started = time.perf_counter()
    out = Path(out)
    validate_table_name(table)
    reader = open_vector_source(source, fields, Path(ids_file) if ids_file else None)
    chunks = reader.chunks(batch_rows)
    first = next(chunks, None)
    if first is None:
        raise InputError(f"{reader.where}: no rows to import")
    width = chunk_vectors(first).shape[1]
    identity = ImportIdentity(declared, width, reader.where)
    metadata = identity.metadata()

    existing = _open_output(out, store_format)
    has_table = existing is not None and existing.has_table(table)
    merge = has_table and not replace
    with_text = False
    if merge:
        assert existing is not None
        try:
            check_appendable(table, existing.metadata(table), metadata)
        except StoreError as error:
            raise StoreError(
                f"{error}; or declare what made them (--provider, --model), or --replace"
            ) from None
        with_text = "text" in existing.schema(table).names
    schema = embedding_schema(width, "float32", with_text, metadata)
    new_folder = not out.exists()
    store = existing or open_store(out, store_format, create=True)
    importer = _Importer(identity, schema, declared.normalize, batch_rows)
    task = f"import {table}"

    batches = _Stream(importer, reader, first, chunks, task, progress)
    batches.converter = converter
    if merge:
        batches.merge_from = (store, table)
    try:
        with store.locked():  # one writer: the old rows read above stay those replaced
            written = store.write_table(table, schema, batches)
    except BaseException as error:
        if existing is None:
            _remove_new_store(out, new_folder)
        elif store.format == "lance" and not has_table:
            _remove_lance_leftover(store, table)
        if batches.failure is not None and batches.failure is not error:
            raise batches.failure from None  # LanceDB wraps it in an Arrow error
        raise
    report(progress, ProgressEvent(task, importer.rows, reader.rows, finished=True))
    return ImportSummary(
        store=str(out),
        format=store.format,
        table=table,
        source=reader.where,
        rows=importer.rows,
        dimension=width,
        kept=written - importer.rows,
        superseded=batches.superseded,
        rescaled=importer.rescaled,
        content_keys=identity.provider is not None and fields.text is not None,
        seconds=round(time.perf_counter() - started, 3),
        metadata=metadata,
    )


class _Stream:
    """The batches :meth:`Store.write_table` writes: the checked chunks, then (merging) the
    existing rows the import does not supersede. The duplicate check runs after the last
    chunk, before the store publishes anything. ``failure`` keeps the exception raised here."""

    def __init__(
        self,
        importer: _Importer,
        reader: VectorSource,
        first: VectorChunk,
        rest: Iterator[VectorChunk],
        task: str,
        progress: Progress | None,
    ) -> None:
        self.importer, self.reader, self.first, self.rest = importer, reader, first, rest
        self.task, self.progress = task, progress
        self.merge_from: tuple[Store, str] | None = None
        self.converter: Converter | None = None
        self.failure: BaseException | None = None
        self.superseded = 0

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        try:
            yield from self._batches()
        except BaseException as error:
            self.failure = error
            raise

    def _batches(self) -> Iterator[pa.RecordBatch]:
        importer, total = self.importer, self.reader.rows
        # from the second chunk on: a small source that fails prints its one error line only
        if self.converter is None:
            batches = (importer.batch(c) for c in _chained(self.first, self.rest))
        else:
            converted = self.converter(importer, self.reader, self.first, self.rest)
            batches = (importer.record(batch, rescaled) for batch, rescaled in converted)
        for index, batch in enumerate(batches):
            yield batch
            if index:
                report(self.progress, ProgressEvent(self.task, importer.rows, total))
        digests = importer.sorted_digests()
        repeated = digests[1:][digests[1:] == digests[:-1]]
        if repeated.size:
            message = _first_duplicate(
                self.reader, set(repeated.tolist()), self.importer.batch_rows
            )
            if message:
                raise InputError(message)
        if self.merge_from is not None:
            store, table = self.merge_from
            counts = {"superseded": 0}
            yield from _kept_rows(store, table, importer.schema, digests, counts)
            self.superseded = counts["superseded"]


def _chained(first: VectorChunk, rest: Iterator[VectorChunk]) -> Iterator[VectorChunk]:
    yield first
    yield from rest


def _kept_rows(
    store: Store, table: str, schema: pa.Schema, imported: np.ndarray, counts: dict[str, int]
) -> Iterator[pa.RecordBatch]:
    """The existing rows whose id the import does not hold, conformed to ``schema``."""
    names = [n for n in schema.names if n in store.schema(table).names]
    for batch in store.iter_batches(table, columns=names):
        digests = _digests(batch.column(0).to_pylist())
        position = np.searchsorted(imported, digests).clip(max=max(len(imported) - 1, 0))
        found = imported[position] == digests if len(imported) else np.zeros(len(digests), bool)
        counts["superseded"] += int(found.sum())
        if found.all():
            continue
        batch = batch.filter(pa.array(~found))
        columns = []
        for column in schema:
            if column.name in names:
                values = batch.column(names.index(column.name))
                columns.append(values if values.type == column.type else values.cast(column.type))
            else:
                columns.append(pa.nulls(batch.num_rows, column.type))
        yield pa.RecordBatch.from_arrays(columns, schema=schema)


def _remove_new_store(out: Path, new_folder: bool) -> None:
    """After a failed import that created the store: remove what it made (the marker, the
    lock, empty or staging folders), so no empty store is left behind."""
    try:
        for entry in list(out.iterdir()) if out.is_dir() else []:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.name in (MARKER, LOCK_FILE):
                entry.unlink()
        if new_folder and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
    except OSError:
        pass  # best effort: the failure being reported matters more


def _remove_lance_leftover(store: Store, table: str) -> None:
    """The folder a failed first write of a LanceDB table leaves (data files, no version)."""
    with store.locked():
        shutil.rmtree(store.path / f"{table}.lance", ignore_errors=True)
