"""Readers: BEIR folders, JSONL/CSV/Parquet files, qrels, and every kind of bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import EXAMPLE_SCIFACT

from madapt_cli.data import BeirDataset, TextSource, read_qrels
from madapt_cli.errors import InputError


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_bundled_beir_example_reads_whole_corpus_with_titles():
    beir = BeirDataset(EXAMPLE_SCIFACT)
    corpus = beir.corpus()
    assert corpus.validate() == 5183
    first = next(iter(corpus))
    assert first.id == "4983"
    assert first.title.startswith("Microstructural development of human newborn")
    assert first.text.startswith("Alterations of the architecture")
    queries = beir.queries()
    assert queries is not None and queries.validate() == 1109
    assert all(q.title is None for q in queries)


def test_beir_qrels_with_crlf_and_header():
    qrels = read_qrels(BeirDataset(EXAMPLE_SCIFACT).qrels_path("test"))
    assert len(qrels) == 300
    assert sum(len(docs) for docs in qrels.values()) == 339
    assert qrels["1"] == {"31715818": 1}
    assert all("\r" not in doc for docs in qrels.values() for doc in docs)


def test_qrels_trec_format_and_graded(tmp_path: Path):
    path = tmp_path / "q.txt"
    path.write_text("q1 0 d1 2\nq1 0 d2 0\nq2 0 d3 1\n")
    assert read_qrels(path) == {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}}


def test_qrels_bad_line_names_file_and_line(tmp_path: Path):
    path = tmp_path / "bad.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\n")
    with pytest.raises(InputError, match=r"bad\.tsv:3: expected"):
        read_qrels(path)
    path.write_text("q1\td1\thigh\n")
    with pytest.raises(InputError, match=r"bad\.tsv:1: score 'high' is not a number"):
        read_qrels(path)


def test_jsonl_gz_with_custom_fields(tmp_path: Path):
    path = tmp_path / "docs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"doc": 7, "body": "hello", "head": "greeting"}) + "\n")
        handle.write("\n")  # blank lines are ignored
        handle.write(json.dumps({"doc": "b", "body": "world"}) + "\n")
    items = list(TextSource(path, id_field="doc", text_field="body", title_field="head"))
    assert [(i.id, i.title, i.text) for i in items] == [
        ("7", "greeting", "hello"),
        ("b", None, "world"),
    ]


def test_csv_and_parquet(tmp_path: Path):
    csv_path = tmp_path / "docs.csv"
    csv_path.write_text('id,text\n1,"a, quoted\nmultiline text"\n2,plain\n', encoding="utf-8")
    assert [(i.id, i.text) for i in TextSource(csv_path)] == [
        ("1", "a, quoted\nmultiline text"),
        ("2", "plain"),
    ]
    parquet_path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"pid": ["x", "y"], "passage": ["one", "two"]}), parquet_path)
    source = TextSource(parquet_path, id_field="pid", text_field="passage")
    assert [(i.id, i.text) for i in source] == [("x", "one"), ("y", "two")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"id": "a", "text": "ok"}\n{"id": "b", "text": \n', r"docs\.jsonl:2: malformed JSON"),
        (b'{"id": "a", "text": "ok"}\n{"text": "no id"}\n', r"docs\.jsonl:2: missing id field"),
        (b'{"id": "a", "body": "x"}\n', r"docs\.jsonl:1: id 'a' has no text field 'text'"),
        (
            b'{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n',
            r"docs\.jsonl:2: duplicate id 'a' \(first at .*docs\.jsonl:1\)",
        ),
        (
            b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n',
            r"docs\.jsonl:2: not valid UTF-8",
        ),
        (
            b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "   "}\n',
            r"docs\.jsonl:2: id 'b' has empty text \(use --skip-empty",
        ),
        (b'["a", "list"]\n', r"docs\.jsonl:1: expected a JSON object"),
    ],
    ids=[
        "malformed-json",
        "missing-id",
        "missing-text",
        "duplicate",
        "non-utf8",
        "empty",
        "not-object",
    ],
)
def test_bad_jsonl_is_a_one_line_error(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as raised:
        TextSource(path).validate()
    assert "\n" not in str(raised.value)


def test_skip_empty_counts_what_it_skipped(tmp_path: Path):
    path = write_jsonl(
        tmp_path / "docs.jsonl",
        [
            {"id": "a", "text": "one"},
            {"id": "b", "text": ""},
            {"id": "c", "text": "three"},
            {"id": "d", "text": " "},
        ],
    )
    source = TextSource(path, skip_empty=True)
    assert source.validate() == 2
    assert source.skipped_empty == 2


def test_bad_csv_byte_names_line(tmp_path: Path):
    path = tmp_path / "docs.csv"
    path.write_bytes(b"id,text\n1,fine\n2,bad \xff byte\n")
    with pytest.raises(InputError, match=r"docs\.csv:3: not valid UTF-8"):
        TextSource(path).validate()


def test_streaming_reads_one_line_at_a_time(tmp_path: Path):
    """A source is an iterator over the file: taking the first row reads only the start."""
    path = write_jsonl(tmp_path / "docs.jsonl", [{"id": str(i), "text": "t"} for i in range(3)])
    with path.open("ab") as handle:
        handle.write(b"this line is not JSON\n")
    first = next(iter(TextSource(path)))  # the bad last line is never reached
    assert first.id == "0"


@pytest.mark.parametrize("score", ["inf", "1e30", "-1e30", "nan", "1.5"])
def test_qrels_scores_must_be_integer_grades_in_range(tmp_path: Path, score: str):
    path = tmp_path / "q.tsv"
    path.write_text(f"query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t{score}\n")
    with pytest.raises(InputError, match=rf"q\.tsv:3: score '{score}' is not a relevance grade"):
        read_qrels(path)
    path.write_text("q1\td1\t2.0\nq1\td2\t-1\n")  # an integer written as a float is fine
    assert read_qrels(path) == {"q1": {"d1": 2, "d2": -1}}


def corrupt_gzip(path: Path, lines: bytes) -> Path:
    import gzip

    data = gzip.compress(lines * 500)
    path.write_bytes(data[:20] + bytes(b ^ 0x55 for b in data[20:60]) + data[60:])
    return path


def test_corrupt_gzip_is_a_one_line_error_for_sources_and_qrels(tmp_path: Path):
    source = corrupt_gzip(tmp_path / "docs.jsonl.gz", b'{"id": "a", "text": "x"}\n')
    with pytest.raises(InputError, match=r"docs\.jsonl\.gz: corrupt gzip data"):
        TextSource(source).validate()
    csv_source = corrupt_gzip(tmp_path / "docs.csv.gz", b"id,text\na,x\n")
    with pytest.raises(InputError, match=r"docs\.csv\.gz: corrupt gzip data"):
        TextSource(csv_source).validate()
    qrels = corrupt_gzip(tmp_path / "test.tsv.gz", b"q1\td1\t1\n")
    with pytest.raises(InputError, match=r"test\.tsv\.gz: corrupt gzip data"):
        read_qrels(qrels)


def test_corrupt_gzip_source_at_the_cli_exits_2_in_one_line(tmp_path: Path, monkeypatch):
    from typer.testing import CliRunner

    from madapt_cli.cli import app

    monkeypatch.setenv("OPENAI_API_KEY", "sk-unused")
    source = corrupt_gzip(tmp_path / "docs.jsonl.gz", b'{"id": "a", "text": "x"}\n')
    out = tmp_path / "store"
    result = CliRunner().invoke(
        app, ["embed", str(source), "--out", str(out), "--provider", "openai"]
    )
    assert result.exit_code == 2, result.output
    assert "corrupt gzip data" in result.output and "Traceback" not in result.output
    assert not out.exists()
