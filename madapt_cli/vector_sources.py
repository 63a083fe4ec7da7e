"""Readers of vectors that already exist (``madapt import``): each yields bounded chunks.

A SOURCE is one of

* a Parquet file, or a folder of ``*.parquet`` files (read in name order), whose vector column
  is a FixedSizeList or a (Large)List of float16/float32/float64;
* a LanceDB table, written ``path/to/db::table``;
* a JSONL file (``.jsonl``/``.ndjson``, optionally ``.gz``) whose vector field is a list of
  numbers;
* a ``.npy`` matrix (N x D, float16/32/64, memory-mapped) with an ids file (one id a line).

Every reader yields :class:`VectorChunk` s of at most ``batch_rows`` rows and never holds a
whole source: a 10-million-row file streams. Errors name the file and the row (1-based) or
the id at fault; :func:`chunk_vectors` turns a chunk's vector column into an (n, D) float32
array, refusing nulls and ragged rows.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from madapt_cli.errors import InputError

LANCE_SEPARATOR = "::"
_FLOATS = (pa.float16(), pa.float32(), pa.float64())


@dataclass(frozen=True)
class VectorFields:
    """Which columns hold what; ``text``/``title`` are optional."""

    id: str = "id"
    vector: str = "vector"
    text: str | None = None
    title: str | None = None

    @property
    def columns(self) -> list[str]:
        return [c for c in (self.id, self.vector, self.text, self.title) if c is not None]


@dataclass
class VectorChunk:
    """Up to ``batch_rows`` consecutive rows of one file: row ``start`` (0-based) onwards."""

    where: str  # the file (or db::table) the rows come from
    start: int
    ids: pa.Array  # string
    vectors: pa.Array  # FixedSizeList or (Large)List of floats
    texts: pa.Array | None = None
    titles: pa.Array | None = None

    def __len__(self) -> int:
        return len(self.ids)


def row_label(chunk: VectorChunk, index: int) -> str:
    """``row N`` (1-based in its file) and the id when it has one."""
    label = f"row {chunk.start + index + 1}"
    value = chunk.ids[index].as_py() if index < len(chunk.ids) else None
    return f"{label} (id {value!r})" if value else label


def chunk_vectors(chunk: VectorChunk) -> np.ndarray:
    """The chunk's vectors as an (n, D) float32 array (no copy for a float32 FixedSizeList);
    a null vector or one whose length differs from the first row's is an :class:`InputError`."""
    column = chunk.vectors
    if column.null_count:
        index = int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
        raise InputError(f"{chunk.where}: {row_label(chunk, index)} has no vector")
    if pa.types.is_fixed_size_list(column.type):
        width = column.type.list_size
        values = column.values.slice(column.offset * width, len(column) * width)
    else:
        offsets = column.offsets.to_numpy()
        lengths = np.diff(offsets)
        width = int(lengths[0]) if lengths.size else 0
        ragged = lengths != width
        if ragged.any():
            index = int(np.argmax(ragged))
            raise InputError(
                f"{chunk.where}: {row_label(chunk, index)} has {int(lengths[index])} values, "
                f"not {width} like row {chunk.start + 1} (ragged vectors)"
            )
        values = column.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    if width == 0:
        raise InputError(f"{chunk.where}: {row_label(chunk, 0)} has an empty vector")
    if values.null_count:
        index = int(np.argmax(values.is_null().to_numpy(zero_copy_only=False))) // width
        raise InputError(f"{chunk.where}: {row_label(chunk, index)} has a null value")
    flat = values.to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), width).astype(np.float32, copy=False)


# --- opening a SOURCE -------------------------------------------------------------------------
class VectorSource:
    """A readable SOURCE: its total rows (when cheap to know) and its chunks."""

    def __init__(self, where: str) -> None:
        self.where = where

    @property
    def rows(self) -> int | None:
        return None

    def chunks(self, batch_rows: int) -> Iterator[VectorChunk]:
        raise NotImplementedError


def open_vector_source(
    source: str | Path, fields: VectorFields, ids_file: Path | None = None
) -> VectorSource:
    """The reader for ``source`` (see the module docstring); checks the fields exist."""
    text = str(source)
    if LANCE_SEPARATOR in text:
        if ids_file is not None:
            raise InputError("--ids applies to a .npy SOURCE only")
        database, _, table = text.rpartition(LANCE_SEPARATOR)
        return LanceVectors(Path(database), table, fields)
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    name = path.name.lower()
    if name.endswith(".npy"):
        if ids_file is None:
            raise InputError(f"{path}: a .npy SOURCE needs --ids FILE (one id a line)")
        if fields.text is not None or fields.title is not None:
            raise InputError(f"{path}: a .npy SOURCE has no text or title fields")
        return NpyVectors(path, ids_file)
    if ids_file is not None:
        raise InputError("--ids applies to a .npy SOURCE only")
    if path.is_dir() or name.endswith(".parquet") or name.endswith(".pq"):
        return ParquetVectors(path, fields)
    if name.removesuffix(".gz").endswith((".jsonl", ".ndjson", ".json")):
        return JsonlVectors(path, fields)
    raise InputError(
        f"{path}: unknown SOURCE kind: use .parquet (or a folder of them), .jsonl, .npy with "
        "--ids, or a LanceDB table as path/to/db::table"
    )


def _check_columns(where: str, schema: pa.Schema, fields: VectorFields) -> None:
    for role, column in (("--id-field", fields.id), ("--vector-field", fields.vector)):
        if column not in schema.names:
            raise InputError(
                f"{where}: no column {column!r} ({role}); columns: {', '.join(schema.names)}"
            )
    for role, column in (("--text-field", fields.text), ("--title-field", fields.title)):
        if column is not None and column not in schema.names:
            raise InputError(
                f"{where}: no column {column!r} ({role}); columns: {', '.join(schema.names)}"
            )
    vector = schema.field(fields.vector).type
    listish = (
        pa.types.is_fixed_size_list(vector)
        or pa.types.is_list(vector)
        or pa.types.is_large_list(vector)
    )
    if not listish or vector.value_type not in _FLOATS:
        raise InputError(
            f"{where}: column {fields.vector!r} is {vector}, not a list of float16/32/64"
        )


def _string_column(where: str, column: pa.Array, what: str) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_string(column.type):
        return column
    if pa.types.is_large_string(column.type) or pa.types.is_integer(column.type):
        return column.cast(pa.string())
    raise InputError(f"{where}: the {what} column is {column.type}, not text")


def _chunk_from_batch(
    where: str, start: int, batch: pa.RecordBatch, fields: VectorFields
) -> VectorChunk:
    vectors = batch.column(fields.vector)
    return VectorChunk(
        where=where,
        start=start,
        ids=_string_column(where, batch.column(fields.id), "id"),
        vectors=vectors.combine_chunks() if isinstance(vectors, pa.ChunkedArray) else vectors,
        texts=_string_column(where, batch.column(fields.text), "text") if fields.text else None,
        titles=_string_column(where, batch.column(fields.title), "title") if fields.title else None,
    )


class ParquetVectors(VectorSource):
    def __init__(self, path: Path, fields: VectorFields) -> None:
        super().__init__(str(path))
        self.fields = fields
        if path.is_dir():
            self.files = sorted(p for p in path.iterdir() if p.suffix in (".parquet", ".pq"))
            if not self.files:
                raise InputError(f"{path}: a folder SOURCE must hold .parquet files")
        else:
            self.files = [path]
        self._rows = 0
        for file in self.files:
            metadata = self._open(file).metadata
            _check_columns(str(file), metadata.schema.to_arrow_schema(), fields)
            self._rows += metadata.num_rows

    @staticmethod
    def _open(file: Path) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(file)
        except (pa.ArrowInvalid, OSError) as error:
            raise InputError(f"{file}: not a readable Parquet file ({error})") from None

    @property
    def rows(self) -> int:
        return self._rows

    def chunks(self, batch_rows: int) -> Iterator[VectorChunk]:
        for file in self.files:
            start = 0
            batches = self._open(file).iter_batches(
                batch_size=batch_rows, columns=self.fields.columns
            )
            while True:
                try:
                    batch = next(batches, None)
                except (pa.ArrowInvalid, OSError) as error:
                    raise InputError(f"{file}: unreadable after row {start} ({error})") from None
                if batch is None:
                    break
                yield _chunk_from_batch(str(file), start, batch, self.fields)
                start += batch.num_rows


class LanceVectors(VectorSource):
    def __init__(self, database: Path, table: str, fields: VectorFields) -> None:
        super().__init__(f"{database}{LANCE_SEPARATOR}{table}")
        self.fields = fields
        if not table or not database.is_dir():
            raise InputError(f"{self.where}: no LanceDB database at {database} (path/to/db::table)")
        import lancedb  # slow to import; only this reader needs it

        db = lancedb.connect(str(database))
        response = db.list_tables()
        names = list(response.tables if hasattr(response, "tables") else response)
        if table not in names:
            raise InputError(
                f"{self.where}: no table {table!r} in {database} (tables: "
                f"{', '.join(names) or 'none'})"
            )
        self.table = db.open_table(table)
        _check_columns(self.where, self.table.schema, fields)

    @property
    def rows(self) -> int:
        return self.table.count_rows()

    def chunks(self, batch_rows: int) -> Iterator[VectorChunk]:
        query = self.table.search().limit(None).select(self.fields.columns)
        start = 0
        for batch in query.to_batches(batch_size=batch_rows):
            if batch.num_rows:
                yield _chunk_from_batch(self.where, start, batch, self.fields)
                start += batch.num_rows


class JsonlVectors(VectorSource):
    def __init__(self, path: Path, fields: VectorFields) -> None:
        super().__init__(str(path))
        self.path, self.fields = path, fields

    def _lines(self) -> Iterator[tuple[int, str]]:
        opener = gzip.open if self.path.name.lower().endswith(".gz") else open
        try:
            with opener(self.path, "rt", encoding="utf-8") as handle:
                yield from enumerate(handle, start=1)
        except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as error:
            raise InputError(f"{self.path}: unreadable ({error})") from None

    def chunks(self, batch_rows: int) -> Iterator[VectorChunk]:
        rows: list[dict] = []
        start = 0
        for number, line in self._lines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as error:
                raise InputError(f"{self.path}: line {number}: invalid JSON ({error})") from None
            if not isinstance(row, dict):
                raise InputError(f"{self.path}: line {number}: not a JSON object")
            if self.fields.vector not in row:
                raise InputError(f"{self.path}: line {number}: no field {self.fields.vector!r}")
            rows.append(row)
            if len(rows) >= batch_rows:
                yield self._chunk(start, rows)
                start += len(rows)
                rows = []
        if rows:
            yield self._chunk(start, rows)

    def _chunk(self, start: int, rows: list[dict]) -> VectorChunk:
        where = str(self.path)

        def strings(field: str | None, what: str) -> pa.Array | None:
            if field is None:
                return None
            values = [row.get(field) for row in rows]
            for index, value in enumerate(values):
                if value is not None and not isinstance(value, str | int):
                    raise InputError(f"{where}: row {start + index + 1}: {what} is not text")
            return pa.array([None if v is None else str(v) for v in values], pa.string())

        try:
            vectors = pa.array([row[self.fields.vector] for row in rows], pa.list_(pa.float64()))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise InputError(
                f"{where}: rows {start + 1}-{start + len(rows)}: field {self.fields.vector!r} "
                f"must be a list of numbers ({error})"
            ) from None
        return VectorChunk(
            where=where,
            start=start,
            ids=strings(self.fields.id, "the id"),  # type: ignore[arg-type]
            vectors=vectors,
            texts=strings(self.fields.text, "the text"),
            titles=strings(self.fields.title, "the title"),
        )


class NpyVectors(VectorSource):
    def __init__(self, path: Path, ids_file: Path) -> None:
        super().__init__(str(path))
        self.ids_file = ids_file
        try:
            self.matrix = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as error:
            raise InputError(f"{path}: not a readable .npy matrix ({error})") from None
        if self.matrix.ndim != 2 or self.matrix.dtype not in (np.float16, np.float32, np.float64):
            raise InputError(
                f"{path}: a {self.matrix.dtype} array of shape {self.matrix.shape}, not an "
                "N x D float matrix"
            )
        if not ids_file.is_file():
            raise InputError(f"{ids_file}: no such ids file (--ids)")

    @property
    def rows(self) -> int:
        return int(self.matrix.shape[0])

    def chunks(self, batch_rows: int) -> Iterator[VectorChunk]:
        total, width = self.matrix.shape
        start = 0
        try:
            with open(self.ids_file, encoding="utf-8") as handle:
                ids: list[str] = []
                for line in handle:
                    ids.append(line.rstrip("\r\n"))
                    if len(ids) == batch_rows:
                        yield self._chunk(start, ids, total, width)
                        start += len(ids)
                        ids = []
                if ids:
                    yield self._chunk(start, ids, total, width)
                    start += len(ids)
        except UnicodeDecodeError as error:
            raise InputError(f"{self.ids_file}: not UTF-8 text ({error})") from None
        if start != total:
            raise InputError(f"{self.ids_file}: {start} ids for the {total} rows of {self.where}")

    def _chunk(self, start: int, ids: list[str], total: int, width: int) -> VectorChunk:
        if start + len(ids) > total:
            raise InputError(f"{self.ids_file}: more ids than the {total} rows of {self.where}")
        block = np.ascontiguousarray(self.matrix[start : start + len(ids)])
        flat = pa.array(block.reshape(-1))
        return VectorChunk(
            where=self.where,
            start=start,
            ids=pa.array([i or None for i in ids], pa.string()),
            vectors=pa.FixedSizeListArray.from_arrays(flat, width),
        )
