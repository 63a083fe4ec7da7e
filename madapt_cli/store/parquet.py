"""The Parquet backend: a directory per table of immutable files."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from madapt_cli.errors import StoreError
from madapt_cli.store.base import (
    Store,
    StoreFormat,
    check_appendable,
    decode_metadata,
    validate_table_name,
)
from madapt_cli.store.fragments import Fragment
from madapt_cli.store.parquet_files import read_live_batches, reading
from madapt_cli.util.files import process_alive, replace_directory

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
    return not process_alive(int(pid))


def parquet_fragments(
    path: Path, table: str = "", live: np.ndarray | None = None
) -> list[Fragment]:
    """One fragment per row group of the Parquet file ``path`` that holds a row of ``live``
    (the file's live-row mask; None: every row live)."""
    metadata = pq.ParquetFile(path).metadata
    fragments, start = [], 0
    for group in range(metadata.num_row_groups):
        rows = metadata.row_group(group).num_rows
        mask = None if live is None else live[start : start + rows]
        if mask is None or mask.any():
            packed = None if mask is None or mask.all() else np.packbits(mask).tobytes()
            fragments.append(
                Fragment("parquet", str(path), table, group, rows, packed, None, start)
            )
        start += rows
    return fragments


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
            with reading(path):
                self._schemas[name] = pq.read_schema(path)
        return self._schemas[name]

    def metadata(self, name: str) -> dict[str, Any]:
        return decode_metadata(self.schema(name))

    def _live_masks(self, name: str) -> list[np.ndarray | None]:
        """Per live file, a mask of rows not superseded by a later file (None: all live)."""
        files = self._files(name)
        if len(files) <= 1:
            return [None] * len(files)
        id_columns = []
        for _, _, path in files:
            with reading(path):
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
                with reading(path):
                    total += pq.ParquetFile(path).metadata.num_rows
            else:
                total += int(mask.sum())
        return total

    def iter_batches(
        self, name: str, columns: list[str] | None = None, batch_rows: int = 65_536
    ) -> Iterator[pa.RecordBatch]:
        self.require_table(name)
        for (_, _, path), mask in zip(self._files(name), self._live_masks(name), strict=True):
            yield from read_live_batches(path, mask, columns, batch_rows)

    def fragments(self, name: str, block_rows: int = 65_536) -> list[Fragment]:
        self.require_table(name)
        fragments = []
        for (_, _, path), mask in zip(self._files(name), self._live_masks(name), strict=True):
            with reading(path):
                fragments += parquet_fragments(path, name, mask)
        return fragments

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
        check_appendable(name, self.metadata(name), decode_metadata(rows.schema))
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
            with reading(path):
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
