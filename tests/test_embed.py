"""`madapt embed` with the real packaged all-MiniLM-L6-v2 on SciFact documents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from madapt_cli.cli import app
from madapt_cli.providers.local import resolve_local_model
from madapt_cli.store.base import open_store

runner = CliRunner()


def embed(*args: str) -> dict:
    result = runner.invoke(app, ["embed", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def reference_model():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_local_model("all-MiniLM-L6-v2"), device="cpu")


@pytest.mark.parametrize("store_format", ["parquet", "lance"])
def test_embed_matches_the_model_and_reruns_reuse_everything(
    tmp_path: Path, small_scifact, scifact_docs, reference_model, store_format: str
):
    source = small_scifact(60)
    out = tmp_path / "store"
    summary = embed(str(source), "--out", str(out), "--format", store_format)
    assert summary["rows_embedded"] == 60 and summary["rows_reused"] == 0
    assert summary["model"] == "sentence-transformers/all-MiniLM-L6-v2"

    store = open_store(out)
    assert store.format == store_format
    ids, vectors = store.read_vectors("corpus")
    assert sorted(ids) == sorted(d["_id"] for d in scifact_docs[:60])
    assert vectors.shape == (60, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The same vectors as a bare SentenceTransformer.encode of "title text".
    by_id = {d["_id"]: d for d in scifact_docs}
    texts = [f"{by_id[i]['title']} {by_id[i]['text']}" for i in ids]
    expected = reference_model.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    meta = store.metadata("corpus")
    assert meta["provider"] == "local" and meta["dimension"] == 384 and meta["role"] == "document"

    again = embed(str(source), "--out", str(out))
    assert again["rows_embedded"] == 0 and again["rows_reused"] == 60


def test_changed_text_is_re_embedded_and_removed_rows_dropped(tmp_path: Path, small_scifact):
    source = small_scifact(40)
    out = tmp_path / "store"
    embed(str(source), "--out", str(out))
    before_ids, before = open_store(out).read_vectors("corpus")

    lines = source.read_text().splitlines()
    changed = json.loads(lines[3])
    changed["text"] = "A completely different abstract about volcanoes."
    lines[3] = json.dumps(changed)
    del lines[10]
    source.write_text("\n".join(lines) + "\n")

    summary = embed(str(source), "--out", str(out))
    table = summary["tables"][0]
    assert (table["embedded"], table["reused"], table["dropped"]) == (1, 38, 1)
    ids, after = open_store(out).read_vectors("corpus")
    assert len(ids) == 39 and len(set(ids)) == 39
    old = dict(zip(before_ids, before, strict=True))
    new = dict(zip(ids, after, strict=True))
    assert not np.allclose(new[changed["id"]], old[changed["id"]])
    unchanged = json.loads(lines[0])["id"]
    np.testing.assert_array_equal(new[unchanged], old[unchanged])


def test_beir_folder_fills_corpus_and_queries(tmp_path: Path, scifact_docs):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w") as handle:
        for doc in scifact_docs[:30]:
            handle.write(json.dumps(doc) + "\n")
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": f"question {i}?"}) + "\n" for i in range(7))
    )
    summary = embed(str(folder), "--out", str(tmp_path / "store"), "--query-prompt", "query: ")
    assert [(t["table"], t["rows"]) for t in summary["tables"]] == [("corpus", 30), ("queries", 7)]
    store = open_store(tmp_path / "store")
    assert store.metadata("queries")["role"] == "query"
    assert store.metadata("queries")["prompt"] == "query: "
    assert "prompt" not in store.metadata("corpus")


def test_bad_input_writes_nothing(tmp_path: Path):
    source = tmp_path / "docs.jsonl"
    source.write_text('{"id": "a", "text": "fine"}\n{"id": "a", "text": "again"}\n')
    out = tmp_path / "store"
    result = runner.invoke(app, ["embed", str(source), "--out", str(out)])
    assert result.exit_code == 2
    assert "docs.jsonl:2: duplicate id 'a'" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_unknown_offline_model_is_a_clear_error(tmp_path: Path, small_scifact):
    result = runner.invoke(
        app,
        [
            "embed",
            str(small_scifact(3)),
            "--out",
            str(tmp_path / "s"),
            "--model",
            "acme/no-such-model",
        ],
    )
    assert result.exit_code == 2
    assert "model 'acme/no-such-model' is not available offline" in result.output


def test_skip_empty_is_counted(tmp_path: Path):
    source = tmp_path / "docs.jsonl"
    source.write_text('{"id": "a", "text": "a short text"}\n{"id": "b", "text": ""}\n')
    summary = embed(str(source), "--out", str(tmp_path / "s"), "--skip-empty")
    assert summary["tables"][0]["skipped_empty"] == 1
    assert summary["rows_embedded"] == 1


def test_progress_is_reported_per_model_batch_and_printed_as_plain_lines_in_a_log(
    tmp_path: Path, small_scifact, reference_model, capsys
):
    from madapt_cli.console import ProgressPrinter
    from madapt_cli.pipelines.embed import run_embed
    from madapt_cli.providers.local import LocalProvider
    from madapt_cli.util.progress import ProgressEvent

    source = small_scifact(40)
    provider = LocalProvider(batch_size=8, device="cpu")  # one request of 40: five batches
    events: list[ProgressEvent] = []
    run_embed(source, tmp_path / "store", provider, progress=events.append)
    assert events == [
        *(ProgressEvent("embed corpus", done, 40) for done in (0, 8, 16, 24, 32, 40)),
        ProgressEvent("embed corpus", 40, 40, finished=True),
    ]
    # counting batches changes no number: the vectors of a bare encode of the same request
    ids, vectors = open_store(tmp_path / "store").read_vectors("corpus")
    rows = {row["id"]: row for row in map(json.loads, source.read_text().splitlines())}
    texts = [f"{rows[i]['title']} {rows[i]['text']}" for i in ids]
    bare = reference_model.encode(texts, batch_size=8, convert_to_numpy=True)
    bare = bare / np.maximum(np.linalg.norm(bare, axis=1, keepdims=True), 1e-12)
    assert np.array_equal(vectors, bare)

    # stderr is not a terminal here (a CI log): one plain line per interval, and the last
    # (the finished event repeats the last batch's figures, so it is not printed twice)
    capsys.readouterr()
    with ProgressPrinter(interval=0.0) as printer:
        run_embed(source, tmp_path / "again", provider, progress=printer)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" rows")[0] for line in lines] == [
        "embed corpus: 0/40",
        *(f"embed corpus: {done}/40" for done in (8, 16, 24, 32, 40)),
    ]
    assert "rows/s" in lines[-1]


def test_the_command_prints_progress_lines_when_stderr_is_a_log(tmp_path: Path, small_scifact):
    result = runner.invoke(app, ["embed", str(small_scifact(10)), "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith("embed corpus: 0/10 rows in ")  # the start, at once
    assert lines[1].startswith("embed corpus: 10/10 rows in ")  # and the end
    assert lines[2].startswith("corpus: 10 rows (10 embedded, 0 reused) in ")
