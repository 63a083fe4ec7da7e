"""The embedding store: named tables of (id, vector, text_sha256[, text]) rows.

Two backends share one interface:

* ``parquet``: a directory per table holding immutable Parquet files. Each write is one new
  file, written under a temporary name and renamed into place, so a crash never leaves a torn
  file. Rows are never edited in place: a later file supersedes the rows of earlier files with
  the same id, and :meth:`Store.retain` compacts a table into one ``base`` file, after which
  older files are ignored (and deleted).
* ``lance``: a LanceDB database. Every write is a new table version, which is atomic.

A store directory carries a ``madapt-store.json`` marker naming its format. Table metadata is
JSON under the Arrow schema metadata key ``madapt`` (provider, model, dimension, ...).

Concurrent writers (several processes, e.g. two ``madapt embed`` runs into one store) are
safe: every change (append, retain, write_table) holds an exclusive advisory lock
(``fcntl.flock`` on ``.madapt-store.lock`` in the store) while it picks names, writes and
renames, so no write replaces another's and no row is lost. The kernel releases the lock
when its process dies, so a killed run never blocks the next one. Leftover staging of a killed
run (``.tmp-*`` files in table folders, ``.tmp-*`` and ``.NAME.old-*`` folders in the store)
is removed by the next write, under the same lock, and never read as a table.

Every vector read through :meth:`Store.read_vectors` / :meth:`Store.iter_vectors` is checked:
finite and (unless asked otherwise) non-zero. A Parquet file damaged outside madapt is a
:class:`StoreError` naming it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from madapt_cli import __version__
from madapt_cli.errors import ENVIRONMENT_ERRNOS, StoreError
from madapt_cli.files import replace_directory
from madapt_cli.util.vectors import check_vectors

StoreFormat = Literal["parquet", "lance"]
FORMATS: tuple[str, ...] = ("parquet", "lance")
MARKER = "madapt-store.json"
LOCK_FILE = ".madapt-store.lock"
METADATA_KEY = b"madapt"
VECTOR_COLUMN = "vector"
# Metadata fields that must agree before rows may be appended to an existing table.
IDENTITY_FIELDS = ("provider", "model", "dimension", "normalized", "dtype")
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


# --- schema helpers -----------------------------------------------------------------------
def vector_type(dimension: int, dtype: str = "float32") -> pa.DataType:
    """FixedSizeList<float32|float16>[dimension]."""
    value_type = {"float32": pa.float32(), "float16": pa.float16()}[dtype]
    return pa.list_(value_type, dimension)


def embedding_schema(
    dimension: int, dtype: str = "float32", with_text: bool = False, metadata: dict | None = None
) -> pa.Schema:
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field(VECTOR_COLUMN, vector_type(dimension, dtype)),
        pa.field("text_sha256", pa.string()),
    ]
    if with_text:
        fields.append(pa.field("text", pa.string()))
    return pa.schema(fields, metadata=_encode_metadata(metadata or {}))


def vectors_to_arrow(vectors: np.ndarray, dtype: str = "float32") -> pa.FixedSizeListArray:
    """An (N, D) array as a FixedSizeList column, without copying when dtypes agree."""
    np_dtype = np.float16 if dtype == "float16" else np.float32
    flat = np.ascontiguousarray(vectors, dtype=np_dtype).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), vectors.shape[1])


def arrow_to_vectors(column: pa.Array | pa.ChunkedArray, dtype: Any = np.float32) -> np.ndarray:
    """A FixedSizeList column as an (N, D) array: zero-copy for one float32 chunk."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    width = column.type.list_size
    if column.offset or column.null_count:
        column = pa.concat_arrays([column])  # normalise slices; nulls are never written
    values = column.values.to_numpy(zero_copy_only=False)
    values = values[column.offset * width : (column.offset + len(column)) * width]
    out = values.reshape(len(column), width)
    return out if dtype is None else out.astype(dtype, copy=False)


def _encode_metadata(metadata: dict) -> dict[bytes, bytes]:
    return {METADATA_KEY: json.dumps(metadata, sort_keys=True).encode("utf-8")}


def _decode_metadata(schema: pa.Schema) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def new_table_metadata(**fields: Any) -> dict[str, Any]:
    """Metadata for a new table, stamped with time and madapt version."""
    return {
        **fields,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "madapt_version": __version__,
    }


def check_compatible(table: str, existing: dict[str, Any], incoming: dict[str, Any]) -> None:
    """Refuse to mix vectors of another model, dimension or normalisation in one table."""
    for key in IDENTITY_FIELDS:
        if key in existing and key in incoming and existing[key] != incoming[key]:
            raise StoreError(
                f"table '{table}' holds vectors with {key}={existing[key]!r}, not "
                f"{incoming[key]!r}: write to another --table or --out store"
            )


def validate_table_name(name: str) -> str:
    if not _TABLE_NAME.match(name):
        raise StoreError(f"invalid table name {name!r}: use letters, digits, '_', '-', '.'")
    return name


# --- the interface ------------------------------------------------------------------------
class Store(ABC):
    """A set of named tables of vectors. Use :func:`open_store` to get one."""

    format: StoreFormat

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_guard = threading.RLock()
        self._lock_depth = 0
        self._lock_handle: Any = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's exclusive write lock (re-entrant within this object).

        ``fcntl.flock`` on :data:`LOCK_FILE`: other processes writing this store wait; the
        kernel drops the lock when its holder exits, however it exits."""
        with self._lock_guard:
            if self._lock_depth == 0:
                self.path.mkdir(parents=True, exist_ok=True)
                handle = open(self.path / LOCK_FILE, "a+b")  # noqa: SIM115 - held across yield
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                except BaseException:
                    handle.close()
                    raise
                self._lock_handle = handle
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    handle, self._lock_handle = self._lock_handle, None
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
                    handle.close()

    @abstractmethod
    def tables(self) -> list[str]:
        """The table names, sorted."""

    def has_table(self, name: str) -> bool:
        return name in self.tables()

    def require_table(self, name: str) -> None:
        if not self.has_table(name):
            have = ", ".join(self.tables()) or "none"
            raise StoreError(f"store {self.path} has no table '{name}' (tables: {have})")

    @abstractmethod
    def metadata(self, name: str) -> dict[str, Any]:
        """The table's ``madapt`` metadata."""

    @abstractmethod
    def schema(self, name: str) -> pa.Schema:
        """The table's Arrow schema."""

    @abstractmethod
    def num_rows(self, name: str) -> int:
        """Live rows (superseded rows not counted)."""

    @abstractmethod
    def iter_batches(
        self, name: str, columns: list[str] | None = None, batch_rows: int = 65_536
    ) -> Iterator[pa.RecordBatch]:
        """Stream the live rows, at most ``batch_rows`` at a time."""

    @abstractmethod
    def append(self, name: str, rows: pa.Table) -> None:
        """Add rows atomically; a row whose id exists supersedes the old one.

        The table is created with ``rows.schema`` (and its metadata) when it does not exist;
        otherwise the metadata must be compatible (:func:`check_compatible`).
        """

    @abstractmethod
    def retain(self, name: str, keep_ids: set[str] | None = None) -> int:
        """Compact: drop superseded rows and, if given, rows whose id is not in ``keep_ids``.

        Returns the number of live rows dropped. Atomic: a crash leaves the old table intact.
        """

    @abstractmethod
    def write_table(self, name: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
        """Replace (or create) a table from a stream of batches, atomically. Returns rows."""

    # --- conveniences built on the primitives ------------------------------------------
    def read_keys(self, name: str) -> dict[str, str]:
        """id -> text_sha256 for the live rows (empty if the table does not exist)."""
        if not self.has_table(name):
            return {}
        keys: dict[str, str] = {}
        for batch in self.iter_batches(name, columns=["id", "text_sha256"]):
            keys.update(zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True))
        return keys

    def iter_vectors(
        self,
        name: str,
        column: str = VECTOR_COLUMN,
        batch_rows: int = 65_536,
        *,
        allow_zero: bool = False,
    ) -> Iterator[tuple[list[str], np.ndarray]]:
        """Stream (ids, n x D float32 array) batches of the live rows, each row checked
        (:func:`~madapt_cli.util.vectors.check_vectors`): a NaN, an infinity or, unless
        ``allow_zero``, an all-zero vector raises InputError naming the table and the id."""
        self.require_table(name)
        where = f"table '{name}' of {self.path}"
        for batch in self.iter_batches(name, columns=["id", column], batch_rows=batch_rows):
            ids = batch.column(0).to_pylist()
            vectors = arrow_to_vectors(batch.column(1), np.float32)
            check_vectors(vectors, ids, where, allow_zero=allow_zero)
            yield ids, vectors

    def read_vectors(
        self,
        name: str,
        column: str = VECTOR_COLUMN,
        dtype: Any = np.float32,
        *,
        allow_zero: bool = False,
    ) -> tuple[list[str], np.ndarray]:
        """(ids, N x D array) of a whole table. ``dtype=None`` keeps the stored precision.

        Every row is checked as in :meth:`iter_vectors` (finite; non-zero unless
        ``allow_zero``): madapt normalises every vector it uses, and a zero one has no
        direction."""
        self.require_table(name)
        field = self.schema(name).field(column)
        where = f"table '{name}' of {self.path}"
        ids: list[str] = []
        parts: list[np.ndarray] = []
        for batch in self.iter_batches(name, columns=["id", column]):
            batch_ids = batch.column(0).to_pylist()
            vectors = arrow_to_vectors(batch.column(1), dtype)
            check_vectors(vectors, batch_ids, where, allow_zero=allow_zero)
            ids.extend(batch_ids)
            parts.append(vectors)
        if not parts:
            width = field.type.list_size
            return ids, np.zeros((0, width), dtype=dtype or np.float32)
        return ids, parts[0] if len(parts) == 1 else np.concatenate(parts)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary: every table with rows, dimension and metadata."""
        tables = []
        for name in self.tables():
            schema = self.schema(name)
            vector_columns = [f.name for f in schema if pa.types.is_fixed_size_list(f.type)]
            tables.append(
                {
                    "name": name,
                    "rows": self.num_rows(name),
                    "vector_columns": {c: schema.field(c).type.list_size for c in vector_columns},
                    "metadata": self.metadata(name),
                }
            )
        return {"store": str(self.path), "format": self.format, "tables": tables}


# --- Parquet backend -----------------------------------------------------------------------
_PART = re.compile(r"^(base|part)-(\d{8})\.parquet$")
# staging of this module (``.tmp-PID-HEX.parquet`` files, ``.tmp-TABLE-PID-HEX`` folders; no
# PID before 0.x) and of files.replace_directory (``.TABLE.old-PID-HEX``)
_LEFTOVER_FILE = re.compile(r"^\.tmp-(?:(?P<pid>\d+)-)?[0-9a-f]{32}\.parquet$")
_LEFTOVER_DIR = re.compile(r"^\.(?:tmp-.+?|.+\.(?:tmp|old))-(?:(?P<pid>\d+)-)?[0-9a-f]{32}$")


def _left_by_a_dead_process(match: re.Match[str] | None) -> bool:
    if match is None:
        return False
    pid = match.group("pid")
    if pid is None:
        return True  # written before names carried the PID: long finished
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
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


class ParquetStore(Store):
    """A directory per table; immutable files; the newest ``base`` file starts the table."""

    format: StoreFormat = "parquet"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._schemas: dict[str, pa.Schema] = {}  # a table's schema never changes in place

    def _table_dir(self, name: str) -> Path:
        return self.path / validate_table_name(name)

    def _files(self, name: str) -> list[tuple[int, str, Path]]:
        """(sequence, kind, path) of the live files: the newest base and the parts after it."""
        directory = self._table_dir(name)
        if not directory.is_dir():
            return []
        found = []
        for entry in directory.iterdir():
            match = _PART.match(entry.name)
            if match:
                found.append((int(match.group(2)), match.group(1), entry))
        found.sort()
        bases = [i for i, (_, kind, _) in enumerate(found) if kind == "base"]
        return found[bases[-1] :] if bases else found

    def _remove_leftovers(self, name: str) -> None:
        """Delete the staging of writers that no longer run (a killed or crashed run)."""
        directory = self._table_dir(name)
        if directory.is_dir():
            for entry in directory.iterdir():
                if _left_by_a_dead_process(_LEFTOVER_FILE.match(entry.name)) and entry.is_file():
                    entry.unlink(missing_ok=True)
        if self.path.is_dir():
            for entry in self.path.iterdir():
                dead = _left_by_a_dead_process(_LEFTOVER_DIR.match(entry.name))
                if dead and entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)

    def _next_sequence(self, name: str) -> int:
        directory = self._table_dir(name)
        numbers = (
            [int(m.group(2)) for e in directory.iterdir() if (m := _PART.match(e.name))]
            if directory.is_dir()
            else []
        )
        return max(numbers, default=0) + 1

    def tables(self) -> list[str]:
        if not self.path.is_dir():
            return []
        # dot names are staging or retired directories a crash may have left behind
        return sorted(
            e.name
            for e in self.path.iterdir()
            if e.is_dir() and not e.name.startswith(".") and self._files(e.name)
        )

    def has_table(self, name: str) -> bool:
        return name in self._schemas or bool(self._files(name))

    def schema(self, name: str) -> pa.Schema:
        if name not in self._schemas:
            self.require_table(name)
            path = self._files(name)[0][2]
            with _reading(path):
                self._schemas[name] = pq.read_schema(path)
        return self._schemas[name]

    def metadata(self, name: str) -> dict[str, Any]:
        return _decode_metadata(self.schema(name))

    def _live_masks(self, name: str) -> list[np.ndarray | None]:
        """Per live file, a mask of rows not superseded by a later file (None: all live)."""
        files = self._files(name)
        if len(files) <= 1:
            return [None] * len(files)
        id_columns = []
        for _, _, path in files:
            with _reading(path):
                id_columns.append(pq.read_table(path, columns=["id"]).column(0))
        seen: set[str] = set()
        masks: list[np.ndarray | None] = [None] * len(files)
        for index in range(len(files) - 1, -1, -1):  # newest first
            ids = id_columns[index].to_pylist()
            mask = np.fromiter((i not in seen for i in ids), dtype=bool, count=len(ids))
            seen.update(ids)
            masks[index] = None if mask.all() else mask
        return masks

    def num_rows(self, name: str) -> int:
        self.require_table(name)
        total = 0
        for (_, _, path), mask in zip(self._files(name), self._live_masks(name), strict=True):
            if mask is None:
                with _reading(path):
                    total += pq.ParquetFile(path).metadata.num_rows
            else:
                total += int(mask.sum())
        return total

    def iter_batches(
        self, name: str, columns: list[str] | None = None, batch_rows: int = 65_536
    ) -> Iterator[pa.RecordBatch]:
        self.require_table(name)
        for (_, _, path), mask in zip(self._files(name), self._live_masks(name), strict=True):
            offset = 0
            with _reading(path):
                parquet = pq.ParquetFile(path)
                batches = parquet.iter_batches(batch_size=batch_rows, columns=columns)
            while True:
                with _reading(path):
                    batch = next(batches, None)
                if batch is None:
                    break
                rows = batch.num_rows
                if mask is not None:
                    batch = batch.filter(pa.array(mask[offset : offset + rows]))
                offset += rows
                if batch.num_rows:
                    yield batch

    def _stage_file(self, name: str, table: pa.Table) -> Path:
        """Write ``table`` to a staging file of this process (no lock needed: its own name)."""
        directory = self._table_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        temporary = directory / f".tmp-{os.getpid()}-{uuid.uuid4().hex}.parquet"
        try:
            pq.write_table(table, temporary)
            _fsync(temporary)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return temporary

    def _publish(self, name: str, kind: str, temporary: Path) -> Path:
        """Give a staged file the table's next name. Called under the lock; the name is
        taken with a hard link, which never replaces an existing file."""
        directory = self._table_dir(name)
        try:
            sequence = self._next_sequence(name)
            while True:
                final = directory / f"{kind}-{sequence:08d}.parquet"
                try:
                    os.link(temporary, final)
                    break
                except FileExistsError:  # a writer that ignores the lock: never clobber
                    sequence += 1
        finally:
            temporary.unlink(missing_ok=True)
        _fsync_directory(directory)
        return final

    def _write_file(self, name: str, kind: str, table: pa.Table) -> Path:
        return self._publish(name, kind, self._stage_file(name, table))

    def append(self, name: str, rows: pa.Table) -> None:
        # Written outside the lock (other writers go on meanwhile), named under it.
        expected = self._conform(name, rows)
        staged = self._stage_file(name, rows if expected is None else expected[1])
        with self.locked():
            self._remove_leftovers(name)
            self._schemas.pop(name, None)  # another process may have replaced the table
            now = self.schema(name) if self.has_table(name) else None
            if now != (None if expected is None else expected[0]):
                # another process created or replaced the table meanwhile: conform again
                staged.unlink(missing_ok=True)
                expected = self._conform(name, rows)
                staged = self._stage_file(name, rows if expected is None else expected[1])
            self._publish(name, "part", staged)

    def _conform(self, name: str, rows: pa.Table) -> tuple[pa.Schema, pa.Table] | None:
        """(the table's schema, ``rows`` with its metadata), or None for a new table."""
        self._schemas.pop(name, None)
        if not self.has_table(name):
            return None
        check_compatible(name, self.metadata(name), _decode_metadata(rows.schema))
        existing = self.schema(name)
        rows = rows.replace_schema_metadata(existing.metadata)
        if rows.schema.remove_metadata() != existing.remove_metadata():
            raise StoreError(f"table '{name}': new rows do not match its schema")
        return existing, rows

    def retain(self, name: str, keep_ids: set[str] | None = None) -> int:
        with self.locked():
            self._remove_leftovers(name)
            return self._retain(name, keep_ids)

    def _retain(self, name: str, keep_ids: set[str] | None) -> int:
        self.require_table(name)
        files = self._files(name)
        masks = self._live_masks(name)
        stale = 0
        if keep_ids is not None:
            for batch in self.iter_batches(name, columns=["id"]):
                stale += sum(i not in keep_ids for i in batch.column(0).to_pylist())
        if stale == 0 and all(mask is None for mask in masks):
            return 0  # nothing superseded, nothing stale: leave the files alone
        pieces = []
        for (_, _, path), mask in zip(files, masks, strict=True):
            with _reading(path):
                table = pq.read_table(path)
            if mask is not None:
                table = table.filter(pa.array(mask))
            if keep_ids is not None:
                keep = [i in keep_ids for i in table.column("id").to_pylist()]
                table = table.filter(pa.array(keep, type=pa.bool_()))
            pieces.append(table)
        schema = self.schema(name)
        merged = pa.concat_tables([p.replace_schema_metadata(schema.metadata) for p in pieces])
        self._write_file(name, "base", merged)
        for _, _, path in files:  # now unreachable: the new base shadows them
            path.unlink(missing_ok=True)
        return stale

    def write_table(self, name: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
        directory = self._table_dir(name)
        with self.locked():
            self._remove_leftovers(name)
            self._schemas.pop(name, None)
            staging = self.path / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex}"
            staging.mkdir()
            rows = 0
            try:
                target = staging / f"base-{1:08d}.parquet"
                with pq.ParquetWriter(target, schema) as writer:
                    for batch in batches:
                        writer.write_batch(batch)
                        rows += batch.num_rows
                _fsync(target)
                replace_directory(staging, directory)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            self._schemas.pop(name, None)
        return rows


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    """Make a rename or link in ``path`` durable (best effort: not every system allows it)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# --- LanceDB backend -------------------------------------------------------------------------
class LanceStore(Store):
    """A LanceDB database; each write is a new, atomic table version."""

    format: StoreFormat = "lance"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        import lancedb  # imported here: it is slow to import and only this backend needs it

        self._db = lancedb.connect(str(path))

    def _open(self, name: str):  # -> lancedb.table.Table
        self.require_table(name)
        return self._db.open_table(name)

    def tables(self) -> list[str]:
        response = self._db.list_tables()
        names = response.tables if hasattr(response, "tables") else list(response)
        return sorted(names)

    def schema(self, name: str) -> pa.Schema:
        return self._open(name).schema

    def metadata(self, name: str) -> dict[str, Any]:
        return _decode_metadata(self.schema(name))

    def num_rows(self, name: str) -> int:
        return self._open(name).count_rows()

    def iter_batches(
        self, name: str, columns: list[str] | None = None, batch_rows: int = 65_536
    ) -> Iterator[pa.RecordBatch]:
        query = self._open(name).search().limit(None)
        if columns is not None:
            query = query.select(columns)
        yield from query.to_batches(batch_size=batch_rows)

    def append(self, name: str, rows: pa.Table) -> None:
        validate_table_name(name)
        with self.locked():
            self._append(name, rows)

    def _append(self, name: str, rows: pa.Table) -> None:
        if not self.has_table(name):
            self._db.create_table(name, rows)
            return
        table = self._open(name)
        check_compatible(name, _decode_metadata(table.schema), _decode_metadata(rows.schema))
        rows = rows.replace_schema_metadata(table.schema.metadata)
        (
            table.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(rows)
        )

    def retain(self, name: str, keep_ids: set[str] | None = None) -> int:
        if keep_ids is None:  # merge_insert never leaves superseded rows behind
            return 0
        with self.locked():
            return self._retain(name, keep_ids)

    def _retain(self, name: str, keep_ids: set[str]) -> int:
        table = self._open(name)
        stale = [i for i in self.read_keys(name) if i not in keep_ids]
        if stale:
            quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in stale)
            table.delete(f"id IN ({quoted})")
        return len(stale)

    def write_table(self, name: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
        validate_table_name(name)
        counted = 0

        def counting() -> Iterator[pa.RecordBatch]:
            nonlocal counted
            for batch in batches:
                counted += batch.num_rows
                yield batch

        reader = pa.RecordBatchReader.from_batches(schema, counting())
        with self.locked():
            self._db.create_table(name, reader, schema=schema, mode="overwrite")
        return counted


# --- opening -------------------------------------------------------------------------------
def detect_format(path: Path) -> StoreFormat | None:
    marker = path / MARKER
    if marker.is_file():
        try:
            fmt = json.loads(marker.read_text())["format"]
        except (ValueError, KeyError) as error:
            raise StoreError(f"{marker}: unreadable store marker ({error})") from None
        if fmt in FORMATS:
            return fmt
        raise StoreError(f"{marker}: unknown store format {fmt!r}")
    if path.is_dir() and any(p.suffix == ".lance" for p in path.iterdir()):
        return "lance"
    # dot names are staging a killed run may have left, never a table
    tables = (
        [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if path.is_dir()
        else []
    )
    if any(next(t.glob("*.parquet"), None) for t in tables):
        return "parquet"
    return None


def open_store(path: str | Path, format: str | None = None, create: bool = False) -> Store:
    """Open a store; with ``create``, make it (in ``format``, parquet by default) if missing.

    The format of an existing store is read from its marker; asking for another is an error.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path} is a file, not a store directory")
    found = detect_format(path) if path.is_dir() else None
    if found is None and not create:
        raise StoreError(f"{path} is not a madapt store (no {MARKER}); run `madapt embed` first")
    if found is not None and format is not None and format != found:
        raise StoreError(f"{path} is a {found} store, not {format}")
    chosen = found or format or "parquet"
    if chosen not in FORMATS:
        raise StoreError(f"unknown store format {chosen!r}: use parquet or lance")
    if found is None:
        path.mkdir(parents=True, exist_ok=True)
        marker = path / MARKER
        marker.write_text(json.dumps({"format": chosen, "madapt_version": __version__}) + "\n")
    return ParquetStore(path) if chosen == "parquet" else LanceStore(path)
