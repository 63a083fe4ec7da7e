"""The Vertex provider, through the real google-genai SDK, against a local Vertex-like server."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("google.genai")

from fake_servers import FakeVertex, ServerState, serve, url, vector_for
from google.oauth2.credentials import Credentials

from madapt_cli.data import TextItem
from madapt_cli.errors import ProviderError
from madapt_cli.pipelines.embed import plan_requests
from madapt_cli.providers.resilience import RetryPolicy
from madapt_cli.providers.vertex import MODELS, VertexProvider

TOKEN = "ya29.test-ACCESS-token-0123456789"
PROJECT, LOCATION = "my-project", "europe-west4"
FAST_RETRIES = RetryPolicy(max_retries=8, base_delay=0.005, max_delay=0.02)


@pytest.fixture()
def server() -> Iterator[FakeVertex]:
    with serve(FakeVertex(ServerState(hang_seconds=2.0), TOKEN, PROJECT, LOCATION)) as running:
        yield running


def make(server: FakeVertex, model: str = "text-embedding-005", **options) -> VertexProvider:
    options.setdefault("retry_policy", FAST_RETRIES)
    options.setdefault("timeout", 1.5)  # ample: only the injected hang times out
    return VertexProvider(
        model,
        project=PROJECT,
        location=LOCATION,
        base_url=url(server),
        credentials=Credentials(token=TOKEN),
        **options,
    )


def expected(item: TextItem, role: str, width: int, model: str = "text-embedding-005"):
    task = "RETRIEVAL_DOCUMENT" if role == "document" else "RETRIEVAL_QUERY"
    title = item.title if role == "document" else None
    text = item.text if role == "document" or item.title is None else f"{item.title} {item.text}"
    return vector_for(text, width, f"{model}|{task}|{title}|")


def docs(n: int) -> list[TextItem]:
    return [
        TextItem(id=f"d{i}", text=f"document body {i}", title=f"Title {i}" if i % 3 else None)
        for i in range(n)
    ]


def test_documents_carry_their_own_titles_and_task_types(server):
    provider = make(server, dimensions=96)
    batch = docs(12)
    vectors = provider.embed_batch(batch, "document")
    assert vectors.shape == (12, 96)
    for item, vector in zip(batch, vectors, strict=True):
        np.testing.assert_allclose(vector, expected(item, "document", 96), atol=1e-6)
    (request,) = server.state.requests()
    assert request.path.endswith(
        f"/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/"
        "text-embedding-005:predict"
    )
    instances = request.body["instances"]
    assert [i.get("title") for i in instances] == [item.title for item in batch]
    assert {i["task_type"] for i in instances} == {"RETRIEVAL_DOCUMENT"}
    assert request.body["parameters"] == {"outputDimensionality": 96, "autoTruncate": True}
    assert request.headers["authorization"] == f"Bearer {TOKEN}"


def test_queries_use_the_query_task_and_differ_from_documents(server):
    provider = make(server)
    queries = [TextItem(id=f"q{i}", text=f"what is {i}?") for i in range(5)]
    vectors = provider.embed_batch(queries, "query")
    for item, vector in zip(queries, vectors, strict=True):
        np.testing.assert_allclose(vector, expected(item, "query", 768), atol=1e-6)
    assert {i["task_type"] for i in server.state.requests()[0].body["instances"]} == {
        "RETRIEVAL_QUERY"
    }
    assert provider.settings("query")["task_type"] == "RETRIEVAL_QUERY"
    assert provider.settings("document")["task_type"] == "RETRIEVAL_DOCUMENT"
    same = TextItem("x", "same text")
    assert provider.content_key(same, "query") != provider.content_key(same, "document")


def test_gemini_embedding_sends_one_text_per_embed_content_request(server):
    provider = make(server, "gemini-embedding-001", dimensions=256)
    batch = docs(5)
    assert provider.limits.max_inputs == 1
    for request_items in plan_requests(batch, provider):
        (vector,) = provider.embed_batch(request_items, "document")
        np.testing.assert_allclose(
            vector, expected(request_items[0], "document", 256, "gemini-embedding-001"), atol=1e-6
        )
    requests = server.state.requests()
    assert len(requests) == 5 and all(r.path.endswith(":embedContent") for r in requests)
    config = requests[1].body["embedContentConfig"]
    assert config == {
        "taskType": "RETRIEVAL_DOCUMENT",
        "title": "Title 1",
        "outputDimensionality": 256,
        "autoTruncate": True,
    }


def test_fault_storm_every_row_once_with_the_right_vector(server):
    server.state.faults.extend(["429", "hang", "500", "malformed", "wrong_count", "503"])
    provider = make(server)
    batch = docs(30)
    vectors = provider.embed_batch(batch, "document")
    for item, vector in zip(batch, vectors, strict=True):
        np.testing.assert_allclose(vector, expected(item, "document", 768), atol=1e-6)
    assert sorted(server.state.texts_served()) == sorted(i.text for i in batch)
    assert provider.stats()["retries"] == 6


def test_retry_after_seconds_is_honoured(server):
    server.state.retry_after, server.state.retry_after_ms = "1", None
    server.state.faults.append("429")
    make(server).embed_batch(docs(2), "document")
    first, second = server.state.requests()
    assert first.status == 429 and second.started - first.started >= 0.99


def test_over_long_inputs_are_counted_as_truncated_or_rejected_with_strict(server):
    batch = [TextItem("ok", "fine"), TextItem("long", "word " * 2000)]  # 10 kB > 2,048 tokens
    provider = make(server)
    assert np.isfinite(provider.embed_batch(batch, "query")).all()
    assert provider.stats()["truncated_ids"] == ["long"]
    with pytest.raises(ProviderError, match=r"rejected input id 'long'.*2048"):
        make(server, strict=True).embed_batch(batch, "query")
    assert server.state.requests()[-1].body["parameters"]["autoTruncate"] is False


def test_a_poisoned_input_is_isolated(server):
    batch = docs(40)
    server.state.poisoned.add(batch[25].text)
    with pytest.raises(ProviderError, match="rejected input id 'd25'"):
        make(server).embed_batch(batch, "document")
    provider = make(server, skip_bad=True)
    vectors = provider.embed_batch(batch, "document")
    assert np.flatnonzero(np.isnan(vectors).any(axis=1)).tolist() == [25]


def test_no_request_exceeds_the_count_or_token_limits(server):
    provider = make(server, dimensions=8)
    many = [TextItem(f"s{i}", f"s{i}") for i in range(600)]
    long = [TextItem(f"l{i}", "y" * 5000) for i in range(30)]  # ~1,667 tokens each
    for batch in plan_requests(many + long, provider):
        provider.embed_batch(batch, "document")
    requests = server.state.requests()
    assert all(r.status == 200 for r in requests)  # the server rejects anything over a limit
    assert max(len(r.texts) for r in requests) == 250
    served = server.state.texts_served()
    assert len(served) == 630 and len({*served} - {"y" * 5000}) == 600


def test_credentials_never_appear_in_errors(server):
    provider = VertexProvider(
        "text-embedding-005",
        project=PROJECT,
        location=LOCATION,
        base_url=url(server),
        credentials=Credentials(token="ya29.WRONG-token-hidden"),
        retry_policy=FAST_RETRIES,
    )
    with pytest.raises(ProviderError) as caught:
        provider.embed_batch(docs(1), "query")
    assert "HTTP 401" in str(caught.value) and "WRONG-token" not in str(caught.value)


def test_configuration_errors_are_clear(monkeypatch):
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    with pytest.raises(ProviderError, match="--project or set GOOGLE_CLOUD_PROJECT"):
        VertexProvider("text-embedding-005").embed_batch(docs(1), "query")
    with pytest.raises(ProviderError, match="unknown Vertex model"):
        VertexProvider("text-embedding-999")
    with pytest.raises(ProviderError, match="from 1 to 768"):
        VertexProvider("text-embedding-005", dimensions=1024)
    with pytest.raises(ProviderError, match="does not accept --dimensions"):
        VertexProvider("textembedding-gecko@003", dimensions=256)
    assert all(m.max_inputs <= 250 and m.max_input_tokens == 2048 for m in MODELS.values())


def test_missing_application_default_credentials_fail_with_a_hint(server, tmp_path, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    provider = VertexProvider(
        "text-embedding-005",
        project=PROJECT,
        location=LOCATION,
        base_url=url(server),
        retry_policy=FAST_RETRIES,
    )
    with pytest.raises(ProviderError, match=r"no usable Google credentials.*gcloud auth"):
        provider.embed_batch(docs(1), "query")
    assert server.state.requests() == []


def test_skip_bad_does_not_skip_a_whole_corpus_when_every_request_is_refused(server):
    provider = make(server, "gemini-embedding-001", skip_bad=True)  # one text a request
    batch = docs(8)
    server.state.poisoned.update(item.text for item in batch)  # as if the request were bad
    with pytest.raises(ProviderError, match=r"rejected the first 5 inputs and accepted none"):
        for item in batch:
            provider.embed_batch([item], "document")
    assert len(server.state.requests()) == 5


def test_vectors_of_the_wrong_size_are_not_retried_and_named(server):
    server.state.wrong_width = 256
    server.state.faults.extend(["429"])
    with pytest.raises(ProviderError, match=r"256 dimensions where .* gives 768"):
        make(server).embed_batch(docs(3), "document")
    assert len(server.state.requests()) == 2  # the 429, then one answer: not retried


@pytest.mark.parametrize("value", [float("nan"), 0.0])
def test_a_non_finite_or_zero_vector_names_the_input_and_is_not_retried(server, value):
    from madapt_cli.providers.base import BadVectors

    batch = docs(4)
    server.state.bad_values[batch[2].text] = value
    with pytest.raises(BadVectors, match=r"id 'd2' has (a non-finite|an all-zero)"):
        make(server).embed_batch(batch, "document")
    assert len(server.state.requests()) == 1


@pytest.mark.parametrize("strict", [False, True])
def test_the_direct_path_sends_and_reads_what_embed_content_does(server, strict):
    """``direct`` (the client's HTTP layer) and ``models.embed_content``: the same request,
    the same vectors, the same truncation notes."""
    long_doc = TextItem("long", "word " * 3000, "Long title")
    batch = [*docs(7), *([] if strict else [long_doc])]  # strict: the server refuses it
    results = {}
    for direct in (True, False):
        provider = make(server, dimensions=32, direct=direct, strict=strict)
        results[direct] = (provider.embed_batch(batch, "document"), provider.stats())
    sent = server.state.requests()
    assert len(sent) == 2 and sent[0].texts == [i.text for i in batch]
    assert sent[0].path == sent[1].path and sent[0].body == sent[1].body
    assert sent[0].headers["authorization"] == sent[1].headers["authorization"]
    assert sent[0].body["parameters"]["autoTruncate"] is (not strict)
    np.testing.assert_array_equal(results[True][0], results[False][0])
    assert results[True][1].get("truncated") == results[False][1].get("truncated")
    if not strict:  # the server cut the long input and said so
        assert results[True][1]["truncated"] == 1


def test_a_client_without_the_http_layer_falls_back_to_embed_content(server, monkeypatch):
    provider = make(server, dimensions=16)
    client = provider.client()
    monkeypatch.delattr(client, "_api_client")
    calls = []
    real = client.models.embed_content
    monkeypatch.setattr(client.models, "embed_content", lambda **kw: calls.append(kw) or real(**kw))
    batch = docs(4)
    vectors = provider.embed_batch(batch, "document")
    assert len(calls) == 1
    for item, vector in zip(batch, vectors, strict=True):
        np.testing.assert_allclose(vector, expected(item, "document", 16), atol=1e-6)
