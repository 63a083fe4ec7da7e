"""Issue #13: through an API provider too, `Encoder`, `madapt encode`, `embed --adaptor` and
`embed` + `apply` give the same vectors (the real openai SDK against the loopback fake
OpenAI server, which answers deterministic vectors per text)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("openai")

from fake_servers import FakeOpenAI, ServerState, serve, url

from madapt_cli.cli import app
from madapt_cli.store.base import open_store

KEY = "sk-test-ENCODE-0123456789abcdef"


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    with serve(FakeOpenAI(ServerState(), KEY)) as running:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", url(running) + "/v1")
        yield running


def run(*args: object, input: str | None = None):
    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    assert result.exit_code == 0, (args, result.output, repr(result.exception))
    return result


def test_api_encoder_matches_embed_and_apply(server, tmp_path):
    beir = tmp_path / "beir"
    beir.mkdir()
    docs = [{"_id": f"d{i}", "title": f"t{i}", "text": f"document number {i}"} for i in range(60)]
    queries = [{"_id": f"q{i}", "text": f"question about {i}"} for i in range(12)]
    for name, rows in (("corpus", docs), ("queries", queries)):
        (beir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ("--provider", "openai", "--model", "text-embedding-3-small", "--dimensions", "32")
    run("embed", beir, "--out", tmp_path / "store", *common, "--quiet")
    run("fit", tmp_path / "store", "--method", "pca", "--out", tmp_path / "ad")
    run("apply", tmp_path / "ad", tmp_path / "store", "--dims", "16", "--out", tmp_path / "app")
    ids, applied = open_store(tmp_path / "app").read_vectors("queries", "vector_16")
    expected = applied[[ids.index(q["_id"]) for q in queries]]
    texts = [q["text"] for q in queries]

    from madapt_cli import Encoder

    with Encoder.from_adaptor(tmp_path / "ad") as encoder:
        got = encoder.encode(texts, role="query", dim=16)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)

    lines = run("encode", "--adaptor", tmp_path / "ad", "--dim", "16", *texts).stdout
    encoded = np.array([json.loads(line)["vector"] for line in lines.splitlines()])
    np.testing.assert_allclose(encoded, expected, rtol=0, atol=1e-6)

    run(
        "embed",
        beir,
        "--out",
        tmp_path / "one",
        "--adaptor",
        tmp_path / "ad",
        "--dims",
        "16",
        "--quiet",
    )
    ids, one_pass = open_store(tmp_path / "one").read_vectors("queries", "vector_16")
    np.testing.assert_allclose(
        one_pass[[ids.index(q["_id"]) for q in queries]], expected, rtol=0, atol=1e-6
    )


def test_a_zero_option_reaches_the_provider(server, tmp_path):
    """``max_retries=0`` equals False: it must still reach the provider, not be dropped."""
    from madapt_cli.methods.adaptor import Adaptor
    from madapt_cli.pipelines.encode import provider_for_adaptor

    beir = tmp_path / "beir"
    beir.mkdir()
    rows = [{"_id": f"d{i}", "text": f"document number {i}"} for i in range(20)]
    (beir / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (beir / "queries.jsonl").write_text(json.dumps({"_id": "q0", "text": "a question"}) + "\n")
    common = ("--provider", "openai", "--model", "text-embedding-3-small", "--dimensions", "32")
    run("embed", beir, "--out", tmp_path / "store", *common, "--quiet")
    run("fit", tmp_path / "store", "--method", "pca", "--out", tmp_path / "ad")
    adaptor = Adaptor.load(tmp_path / "ad")
    for retries in (0, 3):
        provider = provider_for_adaptor(adaptor, options={"max_retries": retries})
        try:
            assert provider.retry_policy.max_retries == retries
        finally:
            provider.close()
