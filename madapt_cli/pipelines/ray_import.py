"""`madapt import --engine ray`: the local import's per-chunk function in a Ray actor pool.

The driver does everything the local import does before converting a row (the SOURCE and
its fields opened and checked, the first chunk's width, the declaration, the output store
and the table it merges into): bad input fails there, before anything is dispatched. The
chunks are then converted on the workers by the local engine's own
:meth:`_Importer.convert` (ids present; vectors non-null, not ragged, finite, non-zero;
normalised; content keys), and the driver writes them exactly as the local import does:
:meth:`Store.write_table` into staging, the duplicate-id check after the last chunk, the
merge with the existing rows, one atomic publication. A killed run leaves the store as it
was; rerun it (re-importing is idempotent: rows merge by id).

Who reads: a Parquet SOURCE (file or folder) is listed in row groups and a LanceDB table in
ranges, which the workers read themselves (:mod:`madapt_cli.store.fragments`); a JSONL
file and a ``.npy`` matrix with its ids file can only be read in order, so the driver reads
them and hands Ray their chunks in waves.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from madapt_cli.pipelines import import_vectors as local
from madapt_cli.pipelines.ray_engine import RayOptions, ray_session, run_fragments, run_waves
from madapt_cli.store.fragments import Fragment, lance_fragments, read_fragment
from madapt_cli.store.parquet import parquet_fragments
from madapt_cli.vector_sources import (
    LANCE_SEPARATOR,
    LanceVectors,
    ParquetVectors,
    VectorChunk,
    VectorFields,
    VectorSource,
    _chunk_from_batch,
)

__all__ = ["import_vectors_ray"]

#: the column a worker adds to each converted table: whether the row was rescaled
RESCALED = "_madapt_rescaled"
#: the column of a chunk the driver ships: its first row's index in the SOURCE
START = "_madapt_start"


def import_vectors_ray(  # noqa: PLR0913 - import_vectors' keywords, plus the engine's
    source: str | Path,
    out: str | Path,
    fields: VectorFields,
    declared: local.ImportDeclaration = local.ImportDeclaration(),
    *,
    ray_options: RayOptions,
    table: str = "corpus",
    ids_file: str | Path | None = None,
    store_format: str | None = None,
    replace: bool = False,
    batch_rows: int = 65_536,
    progress: Any = None,
) -> local.ImportSummary:
    """:func:`madapt_cli.pipelines.import_vectors.import_vectors` with the chunks converted
    on Ray (``batch_rows``: rows per chunk, one worker call)."""
    ray_options.check()
    return local.import_vectors(
        source,
        out,
        fields,
        declared,
        table=table,
        ids_file=ids_file,
        store_format=store_format,
        replace=replace,
        batch_rows=batch_rows,
        progress=progress,
        converter=partial(_converted_on_ray, ray_options),
    )


class _Converter:
    """What a worker needs to convert chunks as the local import does."""

    def __init__(self, importer: local._Importer) -> None:
        self.importer = importer

    def convert(self, chunk: VectorChunk) -> pa.Table:
        batch, rescaled = self.importer.convert(chunk)
        flags = np.zeros(batch.num_rows, bool)
        flags[:rescaled] = True  # the driver only counts them
        return pa.Table.from_batches([batch]).append_column(RESCALED, pa.array(flags))


class ReadImportWorker(_Converter):
    """One actor: reads each fragment of the SOURCE it is given, a chunk at a time."""

    def __init__(self, importer: local._Importer, fields: VectorFields, where: str) -> None:
        super().__init__(importer)
        self.fields, self.where = fields, where

    def __call__(self, fragments: pa.Table) -> Iterator[pa.Table]:
        for item in fragments.to_pylist():
            fragment = Fragment.from_item(item)
            where = self.where if fragment.format == "lance" else fragment.path
            start = fragment.start
            columns = self.fields.columns
            for batch in read_fragment(fragment, columns, self.importer.batch_rows):
                yield self.convert(_chunk_from_batch(where, start, batch, self.fields))
                start += batch.num_rows


class ChunkImportWorker(_Converter):
    """One actor: converts the chunks the driver read (JSONL, .npy)."""

    def __init__(self, importer: local._Importer, where: str) -> None:
        super().__init__(importer)
        self.where = where

    def __call__(self, block: pa.Table) -> pa.Table:
        names = block.column_names
        chunk = VectorChunk(
            where=self.where,
            start=int(block.column(START)[0].as_py()),
            ids=block.column("id").combine_chunks(),
            vectors=block.column("vector").combine_chunks(),
            texts=block.column("text").combine_chunks() if "text" in names else None,
            titles=block.column("title").combine_chunks() if "title" in names else None,
        )
        return self.convert(chunk)


def _chunk_table(chunk: VectorChunk) -> pa.Table:
    columns: dict[str, Any] = {"id": chunk.ids, "vector": chunk.vectors}
    if chunk.texts is not None:
        columns["text"] = chunk.texts
    if chunk.titles is not None:
        columns["title"] = chunk.titles
    columns[START] = pa.array(np.full(len(chunk), chunk.start, np.int64))
    return pa.table(columns)


def _fragments(reader: VectorSource, batch_rows: int) -> list[Fragment] | None:
    """The SOURCE in fragments the workers read themselves, or None (read in order)."""
    if isinstance(reader, ParquetVectors):
        return [f for file in reader.files for f in parquet_fragments(file) if f.rows]
    if isinstance(reader, LanceVectors):
        database = reader.where.rpartition(LANCE_SEPARATOR)[0]
        return lance_fragments(database, reader.table, batch_rows)
    return None


def _chained(first: VectorChunk, rest: Iterator[VectorChunk]) -> Iterator[VectorChunk]:
    yield first
    yield from rest


def _converted_on_ray(
    options: RayOptions,
    importer: local._Importer,
    reader: VectorSource,
    first: VectorChunk,
    rest: Iterator[VectorChunk],
) -> Iterator[tuple[pa.RecordBatch, int]]:
    """A :data:`local.Converter`: the chunks converted by an actor pool, in order."""
    fresh = local._Importer(importer.identity, importer.schema, importer.normalize,
                            importer.batch_rows)  # fmt: skip
    fragments = _fragments(reader, importer.batch_rows)
    with ray_session(options) as ray:
        if fragments is not None:
            kwargs = {"importer": fresh, "fields": reader.fields, "where": reader.where}  # type: ignore[attr-defined]
            items = [fragment.to_item() for fragment in fragments]
            tables = run_fragments(ray, items, options, ReadImportWorker, kwargs)
        else:
            blocks = (_chunk_table(chunk) for chunk in _chained(first, rest))
            kwargs = {"importer": fresh, "where": reader.where}
            tables = run_waves(ray, blocks, options, ChunkImportWorker, kwargs)
        for converted in tables:
            rescaled = int(np.count_nonzero(converted.column(RESCALED).to_numpy()))
            rows = converted.drop_columns([RESCALED]).cast(importer.schema)
            for batch in rows.to_batches():
                yield batch, rescaled
                rescaled = 0
