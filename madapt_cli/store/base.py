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
import hashlib
import importlib
import json
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from madapt_cli import __version__
from madapt_cli.errors import InputError, StoreError
from madapt_cli.util.vectors import check_vectors

StoreFormat = Literal["parquet", "lance"]


#: format -> "module:Class"; a backend is imported when a store of its format is opened
BACKENDS: dict[str, str] = {
    "parquet": "madapt_cli.store.parquet:ParquetStore",
    "lance": "madapt_cli.store.lance:LanceStore",
}
FORMATS: tuple[str, ...] = tuple(BACKENDS)


MARKER = "madapt-store.json"


LOCK_FILE = ".madapt-store.lock"


METADATA_KEY = b"madapt"


VECTOR_COLUMN = "vector"


# Metadata fields that must agree before rows may be appended to an existing table.
IDENTITY_FIELDS = (
    "provider",
    "model",
    "dimension",
    "normalized",
    "dtype",
    "precisions",
    "int8_calibration",
)


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


def vector_columns(schema: pa.Schema) -> dict[str, int]:
    """The schema's float vector columns (FixedSizeList of float16/32/64) -> their size, in
    schema order: ``vector`` in a store `madapt embed` wrote, ``vector_64``... in one
    `madapt apply` wrote. int8 and binary code columns are not vectors to search by cosine
    (:func:`code_columns`)."""
    return {
        f.name: f.type.list_size
        for f in schema
        if pa.types.is_fixed_size_list(f.type) and pa.types.is_floating(f.type.value_type)
    }


def code_columns(schema: pa.Schema) -> dict[str, dict[str, Any]]:
    """The int8 and binary columns `madapt apply --precision` wrote -> {"dim", "precision",
    "bytes"} (from the table metadata; :mod:`madapt_cli.store.precision`)."""
    floats = vector_columns(schema)
    described = decode_metadata(schema).get("columns")
    if not isinstance(described, dict):
        return {}
    return {  # in schema order
        name: dict(described[name])
        for name in schema.names
        if name not in floats and isinstance(described.get(name), dict)
    }


def require_raw_vectors(store: Store, table: str, command: str) -> None:
    """Refuse (one line, exit 2) a table without the raw ``vector`` column, such as an
    applied store's: its vectors are already adapted and cut, ``command`` needs the raw ones."""
    schema = store.schema(table)
    if VECTOR_COLUMN in schema.names:
        return
    columns = ", ".join([*vector_columns(schema), *code_columns(schema)]) or "none"
    adaptor = (decode_metadata(schema).get("adaptor") or {}).get("name")
    by = f" by adaptor '{adaptor}'" if adaptor else ""
    raise InputError(
        f"table '{table}' of {store.path} holds adapted vectors ({columns}){by}, not the raw "
        f"'{VECTOR_COLUMN}' column that {command} needs: use the store `madapt embed` wrote"
    )


def _encode_metadata(metadata: dict) -> dict[bytes, bytes]:
    return {METADATA_KEY: json.dumps(metadata, sort_keys=True).encode("utf-8")}


def decode_metadata(schema: pa.Schema) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def new_table_metadata(**fields: Any) -> dict[str, Any]:
    """Metadata for a new table, stamped with time and madapt version."""
    return {
        **fields,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "madapt_version": __version__,
    }


def check_appendable(table: str, existing: dict[str, Any], incoming: dict[str, Any]) -> None:
    """Refuse to append vectors of another model, dimension or normalisation to a table
    (``existing``: its metadata; ``incoming``: that of the new rows)."""
    for key in IDENTITY_FIELDS:
        if key in existing and key in incoming and existing[key] != incoming[key]:
            raise StoreError(
                f"table '{table}' holds vectors with {key}={existing[key]!r}, not "
                f"{incoming[key]!r}: write to another --table or --out store"
            )


def check_tables_agree(store: Store, queries_table: str, corpus_table: str) -> None:
    """Refuse queries and documents embedded by different models or at different dimensions:
    their cosines would mean nothing. A field missing from either table is not compared."""
    corpus_meta, query_meta = store.metadata(corpus_table), store.metadata(queries_table)
    for key in ("model", "dimension"):
        if key in corpus_meta and key in query_meta and corpus_meta[key] != query_meta[key]:
            raise InputError(
                f"tables '{queries_table}' and '{corpus_table}' differ in {key}: "
                f"{query_meta[key]!r} vs {corpus_meta[key]!r}"
            )


def table_fingerprint(store: Store, table: str) -> str:
    """sha256 over a table's model identity and its (id, text_sha256) rows: changes when the
    texts, their ids or the embedding model change, without hashing gigabytes of vectors."""
    metadata = store.metadata(table)
    digest = hashlib.sha256()
    identity = {k: metadata.get(k) for k in ("provider", "model", "dimension", "normalized")}
    digest.update(json.dumps(identity, sort_keys=True).encode())
    columns = ["id", "text_sha256"] if "text_sha256" in store.schema(table).names else ["id"]
    for batch in store.iter_batches(table, columns=columns):
        for values in zip(*(batch.column(i).to_pylist() for i in range(len(columns))), strict=True):
            digest.update("\t".join(str(v) for v in values).encode("utf-8") + b"\n")
    return digest.hexdigest()


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

    def fragments(self, name: str, block_rows: int = 65_536) -> list[Any]:
        """The table cut into pieces (:class:`~madapt_cli.store.fragments.Fragment`, not
        imported here: fragments.py reads through parquet.py, which builds on this module)
        that other processes read by themselves
        (:func:`~madapt_cli.store.fragments.read_fragment`), in the order of
        :meth:`iter_batches`; ``block_rows`` sizes Lance's ranges."""
        raise StoreError(f"a {type(self).__name__} cannot be read in fragments")

    @abstractmethod
    def append(self, name: str, rows: pa.Table) -> None:
        """Add rows atomically; a row whose id exists supersedes the old one.

        The table is created with ``rows.schema`` (and its metadata) when it does not exist;
        otherwise the metadata must be compatible (:func:`check_appendable`).
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

    def read_ids(self, name: str) -> list[str]:
        """The ids of the live rows, in row order."""
        ids: list[str] = []
        for batch in self.iter_batches(name, columns=["id"]):
            ids.extend(batch.column(0).to_pylist())
        return ids

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
            tables.append(
                {
                    "name": name,
                    "rows": self.num_rows(name),
                    "vector_columns": vector_columns(self.schema(name)),
                    "code_columns": code_columns(self.schema(name)),
                    "metadata": self.metadata(name),
                }
            )
        return {"store": str(self.path), "format": self.format, "tables": tables}


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
    module_name, class_name = BACKENDS[chosen].split(":")
    return getattr(importlib.import_module(module_name), class_name)(path)
