"""The OpenAI provider, through the real `openai` SDK, against a local OpenAI-shaped server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("openai")

from fake_servers import OPENAI_DIMENSIONS, FakeOpenAI, ServerState, serve, url, vector_for

from madapt_cli.data import TextItem
from madapt_cli.errors import ProviderError
from madapt_cli.pipelines.embed import plan_requests
from madapt_cli.providers.openai import OpenAIProvider
from madapt_cli.providers.resilience import RetryPolicy

KEY = "sk-test-SECRET-0123456789abcdef"
MODEL = "text-embedding-3-small"
FAST_RETRIES = RetryPolicy(max_retries=8, base_delay=0.005, max_delay=0.02)


@pytest.fixture()
def server() -> Iterator[FakeOpenAI]:
    with serve(FakeOpenAI(ServerState(hang_seconds=2.0), KEY)) as running:
        yield running


def make(server: FakeOpenAI, **options) -> OpenAIProvider:
    options.setdefault("retry_policy", FAST_RETRIES)
    options.setdefault("timeout", 1.5)  # ample: only the injected hang times out
    return OpenAIProvider(MODEL, base_url=url(server) + "/v1", api_key=KEY, **options)


def expected(text: str, width: int = 1536, model: str = MODEL) -> np.ndarray:
    return vector_for(text, width, model)


def items(n: int, prefix: str = "text") -> list[TextItem]:
    return [TextItem(id=f"d{i}", text=f"{prefix} number {i}") for i in range(n)]


def test_each_row_gets_its_own_vector_and_dimensions_are_sent(server):
    provider = make(server, dimensions=64)
    batch = items(20)
    vectors = provider.embed_batch(batch, "document")
    assert vectors.shape == (20, 64) and provider.dimension == 64
    for item, vector in zip(batch, vectors, strict=True):
        np.testing.assert_allclose(vector, expected(item.text, 64), atol=1e-6)
    assert provider.settings("document") == {"dimensions": 64} == provider.settings("query")


def test_fault_storm_every_row_once_with_the_right_vector(server):
    server.state.faults.extend(["429", "500", "hang", "malformed", "wrong_count", "503", "429"])
    provider = make(server, dimensions=32)
    batch = items(40)
    vectors = provider.embed_batch(batch, "document")
    for item, vector in zip(batch, vectors, strict=True):
        np.testing.assert_allclose(vector, expected(item.text, 32), atol=1e-6)
    assert sorted(server.state.texts_served()) == sorted(i.text for i in batch)
    stats = provider.stats()
    assert stats["retries"] == 7 and stats["requests"] == 8


def test_sdk_retries_are_off_and_ours_give_up_after_max_retries(server):
    server.state.faults.extend(["500"] * 10)
    provider = make(server, retry_policy=RetryPolicy(max_retries=2, base_delay=0.001))
    with pytest.raises(ProviderError, match="after 3 attempts: HTTP 500"):
        provider.embed_batch(items(3), "document")
    assert len(server.state.requests()) == 3  # the SDK itself retried nothing


def test_retry_after_ms_is_honoured(server):
    server.state.retry_after_ms = "300"
    server.state.faults.append("429")
    provider = make(server)
    provider.embed_batch(items(2), "document")
    first, second = server.state.requests()
    assert first.status == 429 and second.status == 200
    assert second.started - first.started >= 0.29


def test_a_poisoned_input_is_named_or_skipped(server):
    batch = items(30)
    server.state.poisoned.add(batch[17].text)
    with pytest.raises(ProviderError, match="rejected input id 'd17'"):
        make(server).embed_batch(batch, "document")
    provider = make(server, skip_bad=True)
    vectors = provider.embed_batch(batch, "document")
    bad_rows = np.flatnonzero(np.isnan(vectors).any(axis=1)).tolist()
    assert bad_rows == [17]
    for i, item in enumerate(batch):
        if i != 17:
            np.testing.assert_allclose(vectors[i], expected(item.text), atol=1e-6)
    assert provider.stats()["skipped_bad_ids"] == ["d17"]


def test_over_long_inputs_are_truncated_and_counted_or_rejected_with_strict(server):
    long_text = "lorem ipsum dolor " * 2000  # 36 kB: over 8,192 tokens on the server
    batch = [TextItem("short", "short text"), TextItem("long", long_text)]
    provider = make(server)
    vectors = provider.embed_batch(batch, "document")
    assert np.isfinite(vectors).all()
    assert provider.stats()["truncated_ids"] == ["long"]
    sent = server.state.requests()[-1].body["input"][1]
    assert long_text.startswith(sent) and len(sent) < len(long_text)
    with pytest.raises(ProviderError, match=r"rejected input id 'long'.*8192"):
        make(server, strict=True).embed_batch(batch, "document")


def test_no_request_exceeds_the_limits(server):
    # 2,100 tiny texts (the count limit binds) and 60 large ones (the token limit binds)
    provider = make(server, dimensions=8)
    tiny = [TextItem(f"t{i}", f"t{i}") for i in range(2100)]
    large = [TextItem(f"l{i}", f"{i} " + "x" * 16_000) for i in range(60)]
    for batch in plan_requests(tiny + large, provider):
        provider.embed_batch(batch, "document")
    requests = server.state.requests()
    assert all(r.status == 200 for r in requests), [r.status for r in requests]
    assert max(len(r.texts) for r in requests) == 2048
    # the large ones (~8,000 estimated tokens each) need at least two requests
    assert sum(any(t.startswith("1 x") or len(t) > 16_000 for t in r.texts) for r in requests) >= 2
    served = server.state.texts_served()
    assert len(served) == len(set(served)) == 2160


def test_requests_run_concurrently_up_to_the_limit(server):
    server.state.latency = 0.1
    provider = make(server, concurrency=4)
    from concurrent.futures import ThreadPoolExecutor

    batches = [items(5, prefix=f"batch {b}") for b in range(12)]
    started = time.perf_counter()
    with ThreadPoolExecutor(provider.concurrency) as pool:
        list(pool.map(lambda b: provider.embed_batch(b, "document"), batches))
    elapsed = time.perf_counter() - started
    assert server.state.max_in_flight == 4
    assert elapsed < 12 * 0.1  # well below sequential time


def test_unknown_model_learns_its_dimension_from_the_server(server):
    OPENAI_DIMENSIONS["compatible-embedder"] = 48
    try:
        provider = OpenAIProvider(
            "compatible-embedder",
            base_url=url(server) + "/v1",
            api_key=KEY,
            retry_policy=FAST_RETRIES,
        )
        assert provider.dimension == 48
    finally:
        del OPENAI_DIMENSIONS["compatible-embedder"]


def test_the_key_never_appears_in_errors(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-KEY-that-must-stay-hidden")
    provider = OpenAIProvider(MODEL, base_url=url(server) + "/v1", retry_policy=FAST_RETRIES)
    with pytest.raises(ProviderError) as caught:
        provider.embed_batch(items(2), "document")
    message = str(caught.value)
    assert "HTTP 401" in message and "Incorrect API key provided" in message
    assert "sk-wrong-KEY" not in message and "must-stay-hidden" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_missing_key_and_bad_options_are_clear(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ProviderError, match="OPENAI_API_KEY"):
        OpenAIProvider(MODEL, base_url="http://127.0.0.1:9/v1").embed_batch(items(1), "query")
    with pytest.raises(ProviderError, match="at most 1536"):
        OpenAIProvider(MODEL, dimensions=5000)
    with pytest.raises(ProviderError, match="does not accept --dimensions"):
        OpenAIProvider("text-embedding-ada-002", dimensions=256)


def test_rpm_limit_holds_across_worker_threads(server):
    provider = make(server, rpm=1200, concurrency=8)  # 20 requests/s, a burst of 20
    from concurrent.futures import ThreadPoolExecutor

    batches = [[TextItem(f"r{i}", f"request {i}")] for i in range(60)]
    provider.client()  # SDK set-up would otherwise delay the first request
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda b: provider.embed_batch(b, "document"), batches))
    starts = sorted(r.started for r in server.state.requests())
    assert len(starts) == 60
    # after the burst of 20, requests go out at 20 a second (10% slack for arrival jitter)
    assert starts[-1] - starts[0] >= (60 - 20) / 20 * 0.9
    assert starts[-1] - starts[20] >= (60 - 21) / 20 * 0.9


def test_a_truncated_input_is_counted_once_however_often_it_is_resent(server):
    server.state.faults.extend(["500", "500"])
    batch = [*items(6), TextItem("long", "lorem ipsum " * 3000)]
    server.state.poisoned.add(batch[2].text)  # bisection re-sends "long" in smaller requests
    provider = make(server, skip_bad=True)
    provider.embed_batch(batch, "document")
    stats = provider.stats()
    assert stats["truncated"] == 1 and stats["truncated_ids"] == ["long"]
    assert sum("lorem" in text for text in server.state.texts_requested()) >= 3


def test_vectors_of_the_wrong_size_are_not_retried_and_named(server):
    # a compatible server answering 256-d for a 1536-d model, amid rate limiting: the
    # deterministic cause is reported at once, not the last 429 after every retry
    server.state.wrong_width = 256
    server.state.faults.extend(["429"])
    with pytest.raises(ProviderError, match=r"256 dimensions where .* gives 1536.*no --dimensions"):
        make(server).embed_batch(items(3), "document")
    assert len(server.state.requests()) == 2  # the 429, then one answer: not retried


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0])
def test_a_non_finite_or_zero_vector_names_the_input_and_is_not_retried(server, value):
    from madapt_cli.providers.base import BadVectors

    batch = items(4)
    server.state.bad_values[batch[2].text] = value
    for skip_bad in (False, True):  # never taken for an input the user chose to skip
        with pytest.raises(BadVectors, match=r"id 'd2' has (a non-finite|an all-zero)"):
            make(server, skip_bad=skip_bad).embed_batch(batch, "document")
    assert len(server.state.requests()) == 2
