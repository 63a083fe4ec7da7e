"""The LanceDB backend: every write is a new, atomic table version."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from madapt_cli.store.base import (
    Store,
    StoreFormat,
    check_appendable,
    decode_metadata,
    validate_table_name,
)
from madapt_cli.store.fragments import Fragment, lance_fragments


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
        return decode_metadata(self.schema(name))

    def num_rows(self, name: str) -> int:
        return self._open(name).count_rows()

    def iter_batches(
        self, name: str, columns: list[str] | None = None, batch_rows: int = 65_536
    ) -> Iterator[pa.RecordBatch]:
        query = self._open(name).search().limit(None)
        if columns is not None:
            query = query.select(columns)
        yield from query.to_batches(batch_size=batch_rows)

    def fragments(self, name: str, block_rows: int = 65_536) -> list[Fragment]:
        return lance_fragments(str(self.path), self._open(name), block_rows)

    def append(self, name: str, rows: pa.Table) -> None:
        validate_table_name(name)
        with self.locked():
            self._append(name, rows)

    def _append(self, name: str, rows: pa.Table) -> None:
        if not self.has_table(name):
            self._db.create_table(name, rows)
            return
        table = self._open(name)
        check_appendable(name, decode_metadata(table.schema), decode_metadata(rows.schema))
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
        stale = [i for i in self.read_ids(name) if i not in keep_ids]
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
