"""`madapt embed` when the provider, the disk or the destination misbehaves: one line, the
right exit code, no half-made store, and a rerun that resumes correctly. In-process CLI
(typer's runner) against the local fake OpenAI server and the real SDK."""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("openai")

from fake_servers import FakeOpenAI, ServerState, serve, url

from madapt_cli.cli import app
from madapt_cli.store.base import open_store

runner = CliRunner()
KEY = "sk-test-SAFETY-0123456789abcdef"


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    with serve(FakeOpenAI(ServerState(), KEY)) as running:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", url(running) + "/v1")
        yield running


def write_docs(path: Path, n: int, prefix: str = "doc") -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            handle.write(json.dumps({"id": f"{prefix}{i}", "text": f"text of {prefix} {i}"}) + "\n")
    return path


def write_beir(root: Path, docs: int, queries: int) -> Path:
    root.mkdir()
    write_docs(root / "corpus.jsonl", docs)
    with (root / "queries.jsonl").open("w", encoding="utf-8") as handle:
        for i in range(queries):
            handle.write(json.dumps({"_id": f"q{i}", "text": f"question {i}"}) + "\n")
    lines = (root / "corpus.jsonl").read_text().replace('"id"', '"_id"')
    (root / "corpus.jsonl").write_text(lines)
    return root


def embed(source: Path, out: Path, *extra: str):
    args = ["embed", str(source), "--out", str(out), "--provider", "openai", "--quiet"]
    return runner.invoke(app, [*args, "--retry-base-delay", "0.001", *extra])


def one_line_error(result, exit_code: int) -> str:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0])
def test_a_non_finite_or_zero_vector_from_the_api_exits_2_naming_table_and_id(
    server, tmp_path, value
):
    source = write_docs(tmp_path / "docs.jsonl", 5)
    server.state.bad_values["text of doc 3"] = value
    message = one_line_error(embed(source, tmp_path / "store"), 2)
    assert "table 'corpus'" in message and "id 'doc3'" in message
    assert len(server.state.requests()) == 1  # not retried


def test_vectors_of_the_wrong_size_fail_at_once_naming_the_cause(server, tmp_path):
    source = write_docs(tmp_path / "docs.jsonl", 5)
    server.state.wrong_width = 256
    server.state.faults.extend(["429", "429"])
    message = one_line_error(embed(source, tmp_path / "store"), 3)
    assert "256 dimensions" in message and "1536" in message and "429" not in message
    assert len(server.state.requests()) == 3
    assert not (tmp_path / "store").exists()  # a failed first run leaves no store


def test_a_failed_first_run_leaves_no_store_but_an_existing_empty_folder_stays(server, tmp_path):
    source = write_docs(tmp_path / "docs.jsonl", 5)
    server.state.faults.extend(["500"] * 3)
    one_line_error(embed(source, tmp_path / "store", "--max-retries", "1"), 3)
    assert not (tmp_path / "store").exists()
    (tmp_path / "empty").mkdir()
    one_line_error(embed(source, tmp_path / "empty", "--max-retries", "0"), 3)
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())


def test_an_empty_source_is_refused_and_creates_nothing(server, tmp_path):
    source = tmp_path / "docs.jsonl"
    source.write_text("")
    message = one_line_error(embed(source, tmp_path / "store"), 2)
    assert "no rows to embed" in message and "docs.jsonl" in message
    assert not (tmp_path / "store").exists()
    assert server.state.requests() == []


@pytest.mark.parametrize("content", ["a file", "a folder of parquet files"])
def test_out_that_exists_and_is_not_a_store_is_refused(server, tmp_path, content):
    source = write_docs(tmp_path / "docs.jsonl", 3)
    out = tmp_path / "mine"
    out.mkdir()
    if content == "a file":
        (out / "notes.txt").write_text("keep me")
    else:  # looks like a marker-less parquet store to a reader; still not madapt's
        (out / "data").mkdir()
        (out / "data" / "x.parquet").write_bytes(b"PAR1")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    message = one_line_error(embed(source, out), 2)
    assert "is not a madapt store" in message
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert server.state.requests() == []


def test_a_full_disk_exits_4_and_the_rerun_resumes(server, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    beir = write_beir(tmp_path / "beir", docs=8, queries=4)
    out = tmp_path / "store"
    real_write = pq.write_table
    calls = {"n": 0}

    def full_on_second_write(table, where, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # corpus stored, then the disk fills while storing queries
            raise OSError(errno.ENOSPC, "No space left on device", str(where))
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr("madapt_cli.store.parquet.pq.write_table", full_on_second_write)
    message = one_line_error(embed(beir, out), 4)
    assert "No space left on device" in message
    monkeypatch.setattr("madapt_cli.store.parquet.pq.write_table", real_write)
    store = open_store(out)
    assert store.num_rows("corpus") == 8 and not store.has_table("queries")
    assert not list(out.rglob(".tmp-*"))  # no staging left behind

    result = embed(beir, out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    by_table = {t["table"]: t for t in summary["tables"]}
    assert by_table["corpus"]["embedded"] == 0 and by_table["corpus"]["reused"] == 8
    assert by_table["queries"]["embedded"] == 4
    assert len(open_store(out).read_vectors("queries")[0]) == 4


def test_a_read_only_destination_exits_4(server, tmp_path, monkeypatch):
    source = write_docs(tmp_path / "docs.jsonl", 3)
    out = tmp_path / "readonly" / "store"
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self == out or out in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    message = one_line_error(embed(source, out), 4)
    assert "Read-only file system" in message


def test_a_model_returning_nan_is_an_error_not_a_skipped_input(tmp_path):
    # An all-NaN row used to pass for an input skipped with --skip-bad: silently not stored.
    import numpy as np

    from madapt_cli.data import TextSource
    from madapt_cli.errors import InputError
    from madapt_cli.pipelines.embed import EmbedJob, embed_source
    from madapt_cli.providers.base import BatchLimits, EmbeddingProvider

    class Broken(EmbeddingProvider):
        name = "local"
        limits = BatchLimits(max_inputs=2)
        dimension = 4

        def embed_batch(self, items, role):
            vectors = np.ones((len(items), 4), np.float32)
            vectors[[i for i, item in enumerate(items) if item.id == "doc2"]] = np.nan
            return vectors

    source = TextSource(write_docs(tmp_path / "docs.jsonl", 4))
    store = open_store(tmp_path / "store", "parquet", create=True)
    with pytest.raises(InputError, match=r"table 'corpus' .*id 'doc2' has a non-finite"):
        embed_source(EmbedJob("corpus", "document", source), Broken("m"), store)
    assert sorted(store.read_keys("corpus")) == ["doc0", "doc1"]  # finished rows kept
