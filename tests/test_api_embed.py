"""`madapt embed --provider openai|vertex` end to end: the real CLI in a subprocess, the real
SDKs, local fake API servers. Covers fault storms, SIGKILL + resume, --dry-run, --skip-bad,
and that no key or token ever reaches stdout, stderr or the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openai")
pytest.importorskip("google.genai")

from fake_servers import (
    FakeOpenAI,
    FakeVertex,
    ServerState,
    serve,
    url,
    vector_for,
    write_service_account,
)

from madapt_cli.providers.base import BatchLimits, EmbeddingProvider
from madapt_cli.store.base import open_store

OPENAI_KEY = "sk-proj-E2E-SECRET-abcdef0123456789"
VERTEX_TOKEN = "ya29.E2E-access-token-0123456789"
PROJECT, LOCATION = "my-project", "us-central1"


@pytest.fixture()
def openai_server() -> Iterator[FakeOpenAI]:
    with serve(FakeOpenAI(ServerState(hang_seconds=2.5), OPENAI_KEY)) as running:
        yield running


@pytest.fixture()
def vertex_server() -> Iterator[FakeVertex]:
    state = ServerState(hang_seconds=2.5)
    with serve(FakeVertex(state, VERTEX_TOKEN, PROJECT, LOCATION)) as running:
        yield running


def write_docs(path: Path, n: int, body: str = "") -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            text = f"text of document {i}{body}".strip()  # the reader strips texts
            row = {"id": f"doc{i}", "title": f"Title {i}", "text": text}
            handle.write(json.dumps(row) + "\n")
    return path


def madapt(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "madapt_cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def openai_env(server: FakeOpenAI) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GOOGLE_"))}
    return {**env, "OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": url(server) + "/v1"}


def vertex_env(server: FakeVertex, tmp_path: Path) -> dict[str, str]:
    key_file = write_service_account(tmp_path / "service-account.json", url(server) + "/token")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GOOGLE_"))}
    return {
        **env,
        "GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "GOOGLE_CLOUD_LOCATION": LOCATION,
    }


def assert_no_secret(secrets: list[str], *texts: str, store: Path | None = None) -> None:
    for secret in secrets:
        for text in texts:
            assert secret not in text
        if store is not None:
            for file in store.rglob("*"):
                if file.is_file():
                    assert secret.encode() not in file.read_bytes(), file


FAST = ["--retry-base-delay", "0.01", "--timeout", "10"]
STORM = ["--retry-base-delay", "0.01", "--timeout", "2"]  # only the injected hang times out


def stored_rows(out: Path) -> int:
    try:
        return len(open_store(out).read_keys("corpus"))
    except Exception:  # not created yet, or mid-creation
        return 0


def test_openai_fault_storm_stores_every_row_once_with_its_vector(openai_server, tmp_path):
    source = write_docs(tmp_path / "docs.jsonl", 150, body=" " + "lorem ipsum " * 200)
    openai_server.state.faults.extend(
        ["429", "500", "hang", "malformed", "wrong_count", "503", "429", "500"]
    )
    out = tmp_path / "store"
    result = madapt(
        "embed", str(source), "--out", str(out), "--provider", "openai",
        "--dimensions", "32", "--concurrency", "4", "--json", *STORM,
        env=openai_env(openai_server),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rows_embedded"] == 150 and summary["provider_stats"]["retries"] == 8
    store = open_store(out)
    ids, vectors = store.read_vectors("corpus")
    assert sorted(ids) == sorted(f"doc{i}" for i in range(150))
    lines = [json.loads(line) for line in source.read_text().splitlines()]
    rendered = {row["id"]: f"{row['title']} {row['text']}" for row in lines}
    for doc_id, vector in zip(ids, vectors, strict=True):
        want = vector_for(rendered[doc_id], 32, "text-embedding-3-small")
        np.testing.assert_allclose(vector, want, atol=1e-5)
    served = openai_server.state.texts_served()
    assert sorted(served) == sorted(rendered.values())  # each paid for exactly once
    # ~2,400 bytes a text, ~1,200 estimated tokens: more than one request was needed
    assert len([r for r in openai_server.state.requests() if r.fault is None]) >= 1
    metadata = store.metadata("corpus")
    assert metadata["provider"] == "openai" and metadata["dimensions"] == 32
    assert_no_secret([OPENAI_KEY], result.stdout, result.stderr, json.dumps(metadata), store=out)

    # a rerun reuses everything and asks the API for nothing
    before = len(openai_server.state.requests())
    again = madapt(
        "embed", str(source), "--out", str(out), "--provider", "openai",
        "--dimensions", "32", "--json", *FAST, env=openai_env(openai_server),
    )  # fmt: skip
    assert again.returncode == 0 and json.loads(again.stdout)["rows_reused"] == 150
    assert len(openai_server.state.requests()) == before


def test_vertex_killed_run_resumes_without_re_requesting_stored_rows(vertex_server, tmp_path):
    # ~600-byte texts: ~200 estimated tokens, so ~99 a request under the 20,000-token limit;
    # ~10 requests of 0.4 s, so the run outlasts its first flush (FlushPolicy: ~2 s) by seconds
    source = write_docs(tmp_path / "docs.jsonl", 1000, body=" " + "x" * 570)
    env = vertex_env(vertex_server, tmp_path)
    vertex_server.state.latency = 0.4
    out = tmp_path / "store"
    args = [
        "embed", str(source), "--out", str(out), "--provider", "vertex", "--quiet",
        "--base-url", url(vertex_server), "--concurrency", "1",
        "--retry-base-delay", "0.01", "--timeout", "10",
    ]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "madapt_cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if stored_rows(out):  # kill as soon as the first flush's rows are stored
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL

    stored_ids = set(open_store(out).read_keys("corpus"))
    assert 0 < len(stored_ids) < 1000
    while vertex_server.state.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)  # the killed run's last request is still being answered
    first_run_requests = len(vertex_server.state.requests())
    vertex_server.state.latency = 0.0
    rerun = madapt(*args[:-4], "--json", *FAST, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["rows_reused"] == len(stored_ids)

    asked_again = [
        text for r in vertex_server.state.requests()[first_run_requests:] for text in r.texts
    ]
    texts = {row["id"]: row["text"] for row in map(json.loads, source.read_text().splitlines())}
    assert not {texts[i] for i in stored_ids} & set(asked_again)
    assert sorted(asked_again) == sorted(texts[i] for i in texts if i not in stored_ids)

    ids, vectors = open_store(out).read_vectors("corpus")
    assert len(ids) == len(set(ids)) == 1000
    for doc_id, vector in zip(ids, vectors, strict=True):
        number = int(doc_id.removeprefix("doc"))
        salt = f"text-embedding-005|RETRIEVAL_DOCUMENT|Title {number}|"
        np.testing.assert_allclose(vector, vector_for(texts[doc_id], 768, salt), atol=1e-5)
    key_file = Path(env["GOOGLE_APPLICATION_CREDENTIALS"]).read_text()
    private_key_line = json.loads(key_file)["private_key"].splitlines()[1]
    assert_no_secret([VERTEX_TOKEN, private_key_line], rerun.stdout, rerun.stderr, store=out)


def test_dry_run_estimates_cost_from_the_price_table_and_sends_nothing(openai_server, tmp_path):
    source = write_docs(tmp_path / "docs.jsonl", 40)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"openai": {"text-embedding-3-small": 2.5}}))
    env = {**openai_env(openai_server), "MADAPT_PRICING": str(prices)}
    result = madapt(
        "embed", str(source), "--out", str(tmp_path / "store"), "--provider", "openai",
        "--dry-run", "--json", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    texts = [f"Title {i} text of document {i}" for i in range(40)]
    tokens = sum(len(t.encode()) // 2 + 1 for t in texts)  # the no-tiktoken estimate
    assert summary["rows_to_embed"] == 40 and summary["estimated_tokens"] == tokens
    assert summary["estimated_cost_usd"] == pytest.approx(tokens / 1e6 * 2.5)
    assert openai_server.state.requests() == [] and not (tmp_path / "store").exists()

    human = madapt(
        "embed", str(source), "--out", str(tmp_path / "store"), "--provider", "openai",
        "--dry-run", env=openai_env(openai_server),
    )  # fmt: skip
    printed = " ".join(human.stderr.split())
    assert human.returncode == 0 and "nothing was sent or written" in printed
    assert "~590 tokens, ~$0.000012 at $0.02/1M tokens" in printed  # the packaged table


def test_a_rejected_input_fails_naming_it_or_is_skipped_and_retried_later(openai_server, tmp_path):
    source = write_docs(tmp_path / "docs.jsonl", 60)
    openai_server.state.poisoned.add("Title 42 text of document 42")
    out = tmp_path / "store"
    base = ["embed", str(source), "--out", str(out), "--provider", "openai", *FAST]
    env = openai_env(openai_server)
    env["OPENAI_API_KEY"] = OPENAI_KEY

    failed = madapt(*base, env=env)
    assert failed.returncode == 3
    assert "rejected input id 'doc42'" in failed.stderr and "Traceback" not in failed.stderr

    skipped = madapt(*base, "--skip-bad", "--json", env=env)
    assert skipped.returncode == 0, skipped.stderr
    summary = json.loads(skipped.stdout)
    assert summary["tables"][0]["skipped_bad"] == 1
    assert summary["provider_stats"]["skipped_bad_ids"] == ["doc42"]
    assert "doc42" not in open_store(out).read_keys("corpus")

    openai_server.state.poisoned.clear()
    before = len(openai_server.state.requests())
    fixed = madapt(*base, "--json", env=env)
    assert fixed.returncode == 0
    asked = [t for r in openai_server.state.requests()[before:] for t in r.texts]
    assert asked == ["Title 42 text of document 42"]
    assert len(open_store(out).read_keys("corpus")) == 60
    assert_no_secret([OPENAI_KEY], failed.stderr, skipped.stdout, skipped.stderr, store=out)


def test_a_wrong_key_fails_cleanly_without_showing_it(openai_server, tmp_path):
    source = write_docs(tmp_path / "docs.jsonl", 3)
    env = {**openai_env(openai_server), "OPENAI_API_KEY": "sk-WRONG-key-never-shown-123456"}
    result = madapt(
        "embed", str(source), "--out", str(tmp_path / "store"), "--provider", "openai", *FAST,
        env=env,
    )  # fmt: skip
    assert result.returncode == 3 and "HTTP 401" in result.stderr
    assert_no_secret(["sk-WRONG-key-never-shown-123456"], result.stdout, result.stderr)


def test_api_options_are_refused_for_local_models(tmp_path):
    source = write_docs(tmp_path / "docs.jsonl", 2)
    result = madapt(
        "embed", str(source), "--out", str(tmp_path / "s"), "--rpm", "60", env={**os.environ}
    )
    assert result.returncode == 2 and "--rpm: only for --provider openai or vertex" in result.stderr


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("local", {"rpm": 60, "tpm": 9, "max_retries": 3}, "--rpm, --tpm: only for --provider "
         "openai or vertex, not local"),
        ("local", {"project": "p"}, "--project: only for --provider openai or vertex, not local"),
        ("openai", {"project": "p", "location": "l"}, "--project applies to --provider vertex"),
        ("openai", {"location": "l"}, "--location applies to --provider vertex"),
    ],
)  # fmt: skip
def test_each_provider_refuses_the_options_it_does_not_take(name, options, message):
    from madapt_cli.errors import InputError
    from madapt_cli.providers.base import build_provider

    with pytest.raises(InputError) as refused:
        build_provider(name, None, {"batch_size": 64, "device": "auto", **options})
    assert str(refused.value) == message


def test_providers_declare_their_default_model_and_options():
    from madapt_cli.providers.base import build_provider

    local = build_provider("local", None, {"batch_size": 16, "max_retries": 3, "timeout": 1.0})
    assert (local.model, local.batch_size) == ("sentence-transformers/all-MiniLM-L6-v2", 16)
    openai = build_provider(
        "openai", None, {"batch_size": 16, "rpm": 60.0, "max_retries": 2, "retry_base_delay": 0.5}
    )
    assert openai.model == "text-embedding-3-small"
    assert (openai.retry_policy.max_retries, openai.retry_policy.base_delay) == (2, 0.5)
    vertex = build_provider("vertex", None, {"project": "p", "dimensions": 64})
    assert (vertex.model, vertex.dimension, vertex.project) == ("text-embedding-005", 64, "p")


class EchoProvider(EmbeddingProvider):
    """A provider added by one registry line (test_a_new_provider_needs_one_registry_line)."""

    name = "echo"
    default_model = "echo-1"
    family = "echo"
    accepts = frozenset({"batch_size"})
    ignores = frozenset({"device", "max_retries", "timeout"})
    limits = BatchLimits(max_inputs=3)
    dimension = 4

    def __init__(self, model: str, batch_size: int = 1) -> None:
        super().__init__(model)

    def embed_batch(self, items, role):
        return np.array([[len(i.joined), 1.0, 2.0, 3.0] for i in items], np.float32)


def test_a_new_provider_needs_one_registry_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from madapt_cli.cli import app
    from madapt_cli.providers.base import PROVIDERS

    monkeypatch.setitem(PROVIDERS, "echo", f"{__name__}:EchoProvider")
    source = write_docs(tmp_path / "docs.jsonl", 5)
    args = ["embed", str(source), "--provider", "echo", "--out", str(tmp_path / "s"), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"] == "echo-1"
    assert open_store(tmp_path / "s").metadata("corpus")["provider"] == "echo"
    refused = CliRunner().invoke(app, [*args, "--rpm", "5"])
    assert refused.exit_code == 2
    assert "--rpm: only for --provider openai or vertex, not echo" in refused.stderr


def test_vertex_fault_storm_with_concurrent_requests_through_the_pipeline(vertex_server, tmp_path):
    from google.oauth2.credentials import Credentials

    from madapt_cli.pipelines.embed import run_embed
    from madapt_cli.providers.resilience import RetryPolicy
    from madapt_cli.providers.vertex import VertexProvider

    # ~6 kB texts: ~2,000 estimated tokens, so ~10 a request and ~30 requests for 300 rows
    source = write_docs(tmp_path / "docs.jsonl", 300, body=" " + "z" * 5900)
    faults = ["429", "500", "malformed", "wrong_count", "503", "hang"] * 3
    vertex_server.state.faults.extend(faults)
    provider = VertexProvider(
        "text-embedding-005",
        dimensions=48,
        project=PROJECT,
        location=LOCATION,
        base_url=url(vertex_server),
        credentials=Credentials(token=VERTEX_TOKEN),
        concurrency=4,
        timeout=1.5,
        retry_policy=RetryPolicy(max_retries=10, base_delay=0.005, max_delay=0.02),
    )
    summary = run_embed(source, tmp_path / "store", provider)
    assert summary.rows_embedded == 300 and summary.provider_stats["retries"] == len(faults)
    requests = vertex_server.state.requests()
    assert len(requests) >= 25 + len(faults) and vertex_server.state.max_in_flight > 1
    assert all(len(r.texts) <= 250 and r.status != 400 for r in requests)  # within limits
    texts = {row["id"]: row for row in map(json.loads, source.read_text().splitlines())}
    assert sorted(vertex_server.state.texts_served()) == sorted(r["text"] for r in texts.values())
    ids, vectors = open_store(tmp_path / "store").read_vectors("corpus")
    assert len(ids) == len(set(ids)) == 300
    for doc_id, vector in zip(ids, vectors, strict=True):
        row = texts[doc_id]
        salt = f"text-embedding-005|RETRIEVAL_DOCUMENT|{row['title']}|"
        np.testing.assert_allclose(vector, vector_for(row["text"], 48, salt), atol=1e-5)


# --- the flush policy: finished requests are coalesced into few store appends -------------
def small_batch_openai(server: FakeOpenAI, per_request: int, concurrency: int):
    """An OpenAI provider that sends at most ``per_request`` texts a request (many requests)."""
    from madapt_cli.providers.base import BatchLimits
    from madapt_cli.providers.openai import LIMITS, OpenAIProvider
    from madapt_cli.providers.resilience import RetryPolicy

    class SmallBatches(OpenAIProvider):
        @property
        def limits(self) -> BatchLimits:
            return BatchLimits(per_request, LIMITS.max_total_tokens, LIMITS.max_input_tokens)

    return SmallBatches(
        "text-embedding-3-small", dimensions=16, base_url=url(server) + "/v1", api_key=OPENAI_KEY,
        concurrency=concurrency, timeout=10,
        retry_policy=RetryPolicy(max_retries=3, base_delay=0.005, max_delay=0.02),
    )  # fmt: skip


def corpus_job(path: Path):
    """The file at ``path`` as the documents of table 'corpus'."""
    from madapt_cli.data import TextSource
    from madapt_cli.pipelines.embed import EmbedJob

    return EmbedJob("corpus", "document", TextSource(path, "id", "text", "title", None, False))


def assert_each_row_once_with_its_vector(out: Path, source: Path, n: int) -> None:
    ids, vectors = open_store(out).read_vectors("corpus")
    assert len(ids) == len(set(ids)) == n
    rows = {row["id"]: row for row in map(json.loads, source.read_text().splitlines())}
    for doc_id, vector in zip(ids, vectors, strict=True):
        want = vector_for(
            f"{rows[doc_id]['title']} {rows[doc_id]['text']}", 16, "text-embedding-3-small"
        )
        np.testing.assert_allclose(vector, want, atol=1e-5)


def test_finished_requests_are_flushed_in_few_part_files_each_row_stored_once(
    openai_server, tmp_path
):
    from madapt_cli.pipelines.embed import (
        EVERY_REQUEST,
        FlushPolicy,
        embed_source,
        flush_policy_for,
    )
    from madapt_cli.providers.local import LocalProvider

    source = write_docs(tmp_path / "docs.jsonl", 500)
    provider = small_batch_openai(openai_server, per_request=20, concurrency=4)
    assert flush_policy_for(provider) == FlushPolicy()  # API providers coalesce by default
    assert flush_policy_for(LocalProvider()) == EVERY_REQUEST  # a local model: each batch
    store = open_store(tmp_path / "store", create=True)
    summary = embed_source(
        corpus_job(source), provider, store,
        flush_policy=FlushPolicy(max_rows=200, max_seconds=3600),
    )  # fmt: skip
    assert summary.embedded == 500 and summary.reused == 0
    assert len(openai_server.state.requests()) == 25  # 500 rows, 20 a request
    parts = sorted(p.name for p in (tmp_path / "store" / "corpus").glob("part-*.parquet"))
    assert len(parts) == 3  # flushed at >= 200 rows, twice, then the last 100 at the end
    assert_each_row_once_with_its_vector(tmp_path / "store", source, 500)


def test_an_interrupted_api_run_keeps_its_finished_rows_and_resumes_without_duplicates(
    openai_server, tmp_path
):
    from madapt_cli.pipelines.embed import FlushPolicy, embed_source

    source = write_docs(tmp_path / "docs.jsonl", 300)
    store = open_store(tmp_path / "store", create=True)
    finished = []

    def ctrl_c_on_the_sixth_request(event) -> None:
        if event.done:  # not the event that starts the table
            finished.append(event.done)
        if len(finished) == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_source(
            corpus_job(source), small_batch_openai(openai_server, 20, 4), store,
            progress=ctrl_c_on_the_sixth_request,
            flush_policy=FlushPolicy(max_rows=10_000, max_seconds=3600),  # only the final flush
        )  # fmt: skip
    # nothing had been flushed before Ctrl-C: the five requests finished before it are stored
    # in one part, not lost
    parts = list((tmp_path / "store" / "corpus").glob("part-*.parquet"))
    stored = set(open_store(tmp_path / "store").read_keys("corpus"))
    assert len(parts) == 1 and len(stored) == 100

    before = len(openai_server.state.requests())
    summary = embed_source(corpus_job(source), small_batch_openai(openai_server, 20, 4), store)
    assert summary.reused == 100 and summary.embedded == 200
    rows = {row["id"]: row for row in map(json.loads, source.read_text().splitlines())}
    asked_again = [t for r in openai_server.state.requests()[before:] for t in r.texts]
    assert sorted(asked_again) == sorted(
        f"{row['title']} {row['text']}" for i, row in rows.items() if i not in stored
    )  # the stored rows were not paid for twice
    assert_each_row_once_with_its_vector(tmp_path / "store", source, 300)
