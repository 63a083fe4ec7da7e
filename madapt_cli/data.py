"""Reading corpora, queries and relevance judgements.

Sources stream: a 10-million-line JSONL file is read one line at a time, never whole. A source
is read twice by ``madapt embed``: once by :meth:`TextSource.validate` (so bad input fails
before anything is written) and once to embed.

Supported inputs:

* BEIR folders: ``corpus.jsonl[.gz]``, ``queries.jsonl[.gz]``, ``qrels/<split>.tsv``.
* JSONL (optionally gzipped), CSV and Parquet files, with configurable id/text/title fields.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from madapt_cli.errors import InputError

FILE_FORMATS = ("jsonl", "csv", "parquet")
#: what a damaged gzip stream raises while it is read (BadGzipFile is an OSError)
_UNREADABLE = (OSError, EOFError, zlib.error)
#: relevance grades madapt accepts: BEIR uses 0-2, TREC -2..4; anything far outside is a bug
MAX_RELEVANCE = 1000


@dataclass(frozen=True)
class TextItem:
    """One text to embed. ``title`` is kept apart for providers that take it separately."""

    id: str
    text: str
    title: str | None = None

    @property
    def joined(self) -> str:
        """The title and the text as one string, for models and APIs that take one."""
        return joined_text(self.title, self.text)


def joined_text(title: str | None, text: str) -> str:
    """``title + " " + text`` (the text alone without a title): the one string embedded for a
    titled row by every provider without a separate title field, and stored by --store-text."""
    return text if title is None else f"{title} {text}"


# --- generic text files ---------------------------------------------------------------------
def detect_file_format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    for suffix, fmt in (
        (".jsonl", "jsonl"),
        (".ndjson", "jsonl"),
        (".json", "jsonl"),
        (".csv", "csv"),
        (".parquet", "parquet"),
        (".pq", "parquet"),
    ):
        if name.endswith(suffix):
            return fmt
    raise InputError(f"{path}: unknown file type; expected .jsonl, .csv or .parquet (.gz allowed)")


def _open_text(path: Path) -> IO[bytes]:
    raw = path.open("rb")
    return gzip.open(raw) if path.name.lower().endswith(".gz") else raw  # type: ignore[return-value]


def _unreadable(path: Path, error: BaseException) -> Exception:
    """The one-line error for a file that cannot be read (a damaged gzip stream, ...); the
    machine's own failures (disk, permissions) stay OSErrors, which the CLI reports."""
    from madapt_cli.errors import environment_failure

    if isinstance(error, OSError) and environment_failure(error) is not None:
        return error
    if isinstance(error, zlib.error):
        return InputError(f"{path}: corrupt gzip data ({error})")
    return InputError(f"{path}: cannot read ({error})")


def _decode(raw: bytes, path: Path, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(
            f"{path}:{line}: not valid UTF-8 (byte {error.start + 1} of the line)"
        ) from None


@dataclass
class TextSource:
    """One file of texts with an id each.

    ``title_field`` is optional per row; a row's title is kept apart in :class:`TextItem` and
    joined to the text (:func:`joined_text`) by providers that take one string.
    """

    path: Path
    id_field: str = "id"
    text_field: str = "text"
    title_field: str | None = "title"
    file_format: str | None = None
    skip_empty: bool = False
    #: rows skipped for empty text in the last full pass (with ``skip_empty``)
    skipped_empty: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such file")
        self.file_format = self.file_format or detect_file_format(self.path)
        if self.file_format not in FILE_FORMATS:
            raise InputError(f"unknown input format {self.file_format!r}: use jsonl, csv, parquet")

    # --- raw rows: (location, mapping) ------------------------------------------------------
    def _rows(self) -> Iterator[tuple[str, dict[str, Any]]]:
        if self.file_format == "jsonl":
            yield from self._jsonl_rows()
        elif self.file_format == "csv":
            yield from self._csv_rows()
        else:
            yield from self._parquet_rows()

    def _jsonl_rows(self) -> Iterator[tuple[str, dict[str, Any]]]:
        try:
            with _open_text(self.path) as handle:
                for number, raw in enumerate(handle, start=1):
                    line = _decode(raw, self.path, number).strip()
                    if not line:
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise InputError(
                            f"{self.path}:{number}: malformed JSON ({error.msg} at column "
                            f"{error.colno})"
                        ) from None
                    if not isinstance(row, dict):
                        raise InputError(f"{self.path}:{number}: expected a JSON object")
                    yield f"{self.path}:{number}", row
        except _UNREADABLE as error:
            raise _unreadable(self.path, error) from None

    def _csv_rows(self) -> Iterator[tuple[str, dict[str, Any]]]:
        try:
            with _open_text(self.path) as raw:
                # Decode strictly ourselves so a bad byte is reported with its line.
                text = _StrictLines(raw, self.path)
                reader = csv.DictReader(text)
                for row in reader:
                    yield f"{self.path}:{reader.line_num}", row
        except csv.Error as error:
            raise InputError(f"{self.path}: malformed CSV ({error})") from None
        except _UNREADABLE as error:
            raise _unreadable(self.path, error) from None

    def _parquet_rows(self) -> Iterator[tuple[str, dict[str, Any]]]:
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(self.path)
        except Exception as error:  # pyarrow raises several types for a bad file
            raise InputError(f"{self.path}: not a readable Parquet file ({error})") from None
        names = set(parquet.schema_arrow.names)
        wanted = [f for f in (self.id_field, self.text_field, self.title_field) if f in names]
        row_number = 0
        batches = parquet.iter_batches(columns=wanted, batch_size=8192)
        while True:
            try:
                batch = next(batches, None)
            except Exception as error:  # a damaged page: pyarrow raises several types
                raise InputError(f"{self.path}: not a readable Parquet file ({error})") from None
            if batch is None:
                return
            for row in batch.to_pylist():
                row_number += 1
                yield f"{self.path} row {row_number}", row

    # --- typed items ------------------------------------------------------------------------
    def _item(self, where: str, row: dict[str, Any]) -> TextItem | None:
        raw_id = row.get(self.id_field)
        if raw_id is None or raw_id == "":
            raise InputError(f"{where}: missing id field '{self.id_field}'")
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
            raise InputError(f"{where}: id field '{self.id_field}' must be a string or integer")
        item_id = str(raw_id)
        if self.text_field not in row:
            raise InputError(f"{where}: id {item_id!r} has no text field '{self.text_field}'")
        text = row[self.text_field]
        title = row.get(self.title_field) if self.title_field else None
        if text is not None and not isinstance(text, str):
            raise InputError(f"{where}: id {item_id!r}: text field must be a string")
        if title is not None and not isinstance(title, str):
            raise InputError(f"{where}: id {item_id!r}: title field must be a string")
        text = (text or "").strip()
        title = (title or "").strip() or None
        if not text and not title:
            if self.skip_empty:
                self.skipped_empty += 1
                return None
            raise InputError(f"{where}: id {item_id!r} has empty text (use --skip-empty to skip)")
        return TextItem(id=item_id, text=text, title=title)

    def __iter__(self) -> Iterator[TextItem]:
        self.skipped_empty = 0
        for where, row in self._rows():
            item = self._item(where, row)
            if item is not None:
                yield item

    def validate(self, on_item: Callable[[TextItem], None] | None = None) -> int:
        """Read the whole source once; raise :class:`InputError` on the first problem.

        Checks every row (encoding, JSON, fields, empty text) and that ids are unique, in
        memory proportional to 8 bytes a row; ``on_item`` sees each valid item on the way.
        Returns the number of rows (not counting skipped empty ones).
        """
        digests = []
        for item in self:
            digests.append(_id_digest(item.id))
            if on_item is not None:
                on_item(item)
        hashes = np.array(digests, dtype=np.uint64)
        order = np.sort(hashes)
        repeated = order[1:][order[1:] == order[:-1]]
        if repeated.size:
            self._raise_duplicate(set(repeated.tolist()))
        return int(hashes.size)

    def _raise_duplicate(self, suspicious: set[int]) -> None:
        first_seen: dict[str, str] = {}
        for where, row in self._rows():
            raw_id = row.get(self.id_field)
            if raw_id is None or _id_digest(str(raw_id)) not in suspicious:
                continue
            item_id = str(raw_id)
            if item_id in first_seen:
                raise InputError(
                    f"{where}: duplicate id {item_id!r} (first at {first_seen[item_id]})"
                )
            first_seen[item_id] = where
        # Only a 64-bit hash collision between different ids gets here: nothing is wrong.


def _id_digest(item_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest(), "big")


class _StrictLines(io.TextIOBase):
    """Text lines from a byte stream, failing on bad UTF-8 with the line number."""

    def __init__(self, raw: IO[bytes], path: Path) -> None:
        self._raw = raw
        self._path = path
        self._line = 0

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        for raw in self._raw:
            self._line += 1
            yield _decode(raw, self._path, self._line)


# --- BEIR ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BeirDataset:
    """A BEIR folder: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``."""

    root: Path

    @staticmethod
    def is_beir(path: Path) -> bool:
        return path.is_dir() and _find(path, "corpus") is not None

    def corpus(self, skip_empty: bool = False, use_titles: bool = True) -> TextSource:
        path = _find(self.root, "corpus")
        if path is None:
            raise InputError(f"{self.root}: no corpus.jsonl in this BEIR folder")
        return TextSource(path, "_id", "text", "title" if use_titles else None, "jsonl", skip_empty)

    def queries(self, skip_empty: bool = False) -> TextSource | None:
        path = _find(self.root, "queries")
        return None if path is None else TextSource(path, "_id", "text", None, "jsonl", skip_empty)

    def qrels_path(self, split: str) -> Path:
        for candidate in (
            self.root / "qrels" / f"{split}.tsv",
            self.root / "qrels" / f"{split}.tsv.gz",
        ):
            if candidate.is_file():
                return candidate
        raise InputError(f"{self.root}: no qrels/{split}.tsv")


def _find(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        if (root / name).is_file():
            return root / name
    return None


# --- relevance judgements --------------------------------------------------------------------
Qrels = dict[str, dict[str, int]]


def read_qrels(path: str | Path) -> Qrels:
    """query id -> {document id: relevance} from a BEIR TSV (header, LF or CRLF) or a TREC
    qrels file (``qid 0 docid rel``, whitespace separated). Zero and negative relevance are
    kept: metrics decide what counts as relevant."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such qrels file")
    qrels: Qrels = {}
    try:
        for query_id, doc_id, relevance in _qrels_lines(path):
            qrels.setdefault(query_id, {})[doc_id] = relevance
    except _UNREADABLE as error:
        raise _unreadable(path, error) from None
    if not qrels:
        raise InputError(f"{path}: no judgements in this qrels file")
    return qrels


def _qrels_lines(path: Path) -> Iterator[tuple[str, str, int]]:
    with _open_text(path) as handle:
        for number, raw in enumerate(handle, start=1):
            line = _decode(raw, path, number).rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            if number == 1 and parts[0].strip().lower() in ("query-id", "query_id", "qid"):
                continue
            if len(parts) == 4:  # TREC: qid iteration docid relevance
                parts = [parts[0], parts[2], parts[3]]
            if len(parts) != 3:
                raise InputError(
                    f"{path}:{number}: expected 'query-id<TAB>corpus-id<TAB>score', got "
                    f"{len(parts)} fields"
                )
            query_id, doc_id, score = (p.strip() for p in parts)
            if not query_id or not doc_id:
                raise InputError(f"{path}:{number}: empty query or corpus id")
            yield query_id, doc_id, _relevance(score, path, number)


def _relevance(score: str, path: Path, number: int) -> int:
    """An integer grade (``2`` or ``2.0``) within +-MAX_RELEVANCE, or an InputError."""
    try:
        value = float(score)
    except ValueError:
        raise InputError(f"{path}:{number}: score {score!r} is not a number") from None
    if not value.is_integer() or abs(value) > MAX_RELEVANCE:
        raise InputError(
            f"{path}:{number}: score {score!r} is not a relevance grade (an integer from "
            f"-{MAX_RELEVANCE} to {MAX_RELEVANCE})"
        )
    return int(value)
