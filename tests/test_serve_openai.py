"""`madapt serve` for an adaptor whose base is an OpenAI model: the server calls the fake
OpenAI upstream (tests/fake_servers.py) through madapt's retrying provider; 503 when the
upstream fails, 429 when the queue is full, SIGTERM under load answers what it admitted."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fake_servers import FakeOpenAI, ServerState, serve, url
from serve_process import ServerProcess, perturbed_adaptor, wait_until

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

UPSTREAM_KEY = "sk-upstream-SECRET-0123456789abcdef"
NAME = "openai-ad"
SETTINGS = {"query": {"dimensions": 32}, "document": {"dimensions": 32}}


@pytest.fixture()
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    with serve(FakeOpenAI(ServerState(), UPSTREAM_KEY)) as running:
        monkeypatch.setenv("OPENAI_API_KEY", UPSTREAM_KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", url(running) + "/v1")
        yield running


@pytest.fixture(scope="module")
def adaptor(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve-openai")
    return perturbed_adaptor(
        root / NAME,
        32,
        "text-embedding-3-small",
        base_provider="openai",
        base_settings=SETTINGS,
    )


def start(adaptor: Path, tmp_path: Path, *args: str) -> ServerProcess:
    # OPENAI_API_KEY and OPENAI_BASE_URL reach the subprocess from the fixture's environment.
    # One retry: `--max-retries 0` is dropped by provider_for_adaptor (0 counts as unset).
    return ServerProcess(adaptor, "--max-retries", "1", *args, logs=tmp_path)


def test_vectors_equal_encoder_through_the_provider(upstream, adaptor, tmp_path):
    from madapt_cli import Encoder

    texts = [f"question about {i}" for i in range(12)]
    with Encoder.from_adaptor(adaptor) as encoder:
        expected = encoder.encode(texts, dim=16)
    running = start(adaptor, tmp_path)
    try:
        client = openai.OpenAI(api_key="x", base_url=running.base + "/v1", max_retries=0)
        answer = client.embeddings.create(model=NAME, input=texts, dimensions=16)
        got = np.array([row.embedding for row in answer.data])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
        # usage: the provider's count (tiktoken when its file is cached, else its estimate)
        assert answer.usage.prompt_tokens >= len(texts)
        # the upstream saw the recorded settings: model and dimensions
        sent = upstream.state.requests()[-1]
        assert sent.body["model"] == "text-embedding-3-small" and sent.body["dimensions"] == 32
    finally:
        running.stop()
    assert UPSTREAM_KEY not in running.log()


def test_upstream_failure_is_503_then_recovers(upstream, adaptor, tmp_path):
    running = start(adaptor, tmp_path)
    try:
        client = openai.OpenAI(api_key="x", base_url=running.base + "/v1", max_retries=0)
        upstream.state.faults.extend(["500", "500"])  # the try and its retry
        with pytest.raises(openai.InternalServerError) as caught:
            client.embeddings.create(model=NAME, input=["a", "b"])
        assert caught.value.status_code == 503
        error = caught.value.body
        assert error["code"] == "upstream_unavailable" and error["type"] == "server_error"
        answer = client.embeddings.create(model=NAME, input=["a", "b"])  # the next one works
        assert len(answer.data) == 2
    finally:
        running.stop()
    assert UPSTREAM_KEY not in running.log()


def test_unreachable_upstream_is_503(upstream, adaptor, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens there
    running = start(adaptor, tmp_path, "--timeout", "5")
    try:
        status, body = running.request("POST", "/v1/embeddings", {"model": NAME, "input": "x"})
        assert status == 503 and body["error"]["code"] == "upstream_unavailable"
    finally:
        running.stop()


def test_full_queue_is_429(upstream, adaptor, tmp_path):
    upstream.state.latency = 1.5
    running = start(adaptor, tmp_path, "--max-queue", "4")
    try:
        first: dict[str, object] = {}

        def slow() -> None:
            first["answer"] = running.request(
                "POST", "/v1/embeddings", {"model": NAME, "input": ["a", "b", "c"]}
            )

        thread = threading.Thread(target=slow)
        thread.start()
        wait_until(lambda: upstream.state.in_flight > 0)
        status, body = running.request(
            "POST", "/v1/embeddings", {"model": NAME, "input": ["d", "e"]}
        )
        assert status == 429, body
        assert body["error"]["code"] == "queue_full" and "--max-queue 4" in body["error"]["message"]
        thread.join(30)
        assert first["answer"][0] == 200
    finally:
        running.stop()


def test_sigterm_under_load_loses_no_answered_request(upstream, adaptor, tmp_path):
    from madapt_cli import Encoder

    texts = [f"text {i}" for i in range(64)]
    with Encoder.from_adaptor(adaptor) as encoder:
        expected = encoder.encode(texts)
    upstream.state.latency = 0.3
    running = start(adaptor, tmp_path, "--max-batch", "4")
    outcomes: dict[int, object] = {}

    def call(index: int) -> None:
        client = openai.OpenAI(api_key="x", base_url=running.base + "/v1", max_retries=0)
        try:
            answer = client.embeddings.create(model=NAME, input=texts[index])
            outcomes[index] = np.array(answer.data[0].embedding)
        except openai.APIError as error:
            outcomes[index] = error

    with ThreadPoolExecutor(16) as pool:
        for index in range(len(texts)):
            pool.submit(call, index)
        wait_until(lambda: upstream.state.in_flight > 0)
        assert running.terminate() == 0
    answered = {i: v for i, v in outcomes.items() if isinstance(v, np.ndarray)}
    refused = [v for v in outcomes.values() if not isinstance(v, np.ndarray)]
    assert answered, "SIGTERM came before any request was answered"
    for index, vector in answered.items():
        np.testing.assert_allclose(vector, expected[index], rtol=0, atol=1e-5)
    # after SIGTERM the port is closed: later requests fail to connect, never with a bad answer
    assert all(isinstance(e, openai.APIConnectionError) for e in refused), refused
    assert len(answered) + len(refused) == len(texts)
