"""Retry, backoff, rate limiting, bisection and scrubbing, without any network."""

from __future__ import annotations

import email.utils
import random
import threading

import numpy as np
import pytest

from madapt_cli.data import TextItem
from madapt_cli.errors import ProviderError
from madapt_cli.providers.resilience import (
    BadInputError,
    Counters,
    Failure,
    RateLimiter,
    RetryPolicy,
    Scrubber,
    TokenBucket,
    embed_with_isolation,
    parse_retry_after,
    send_with_retries,
)


class FakeClock:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def test_retry_after_forms():
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    # OpenAI's millisecond header wins over the coarser one
    assert parse_retry_after({"Retry-After": "2", "retry-after-ms": "250"}) == 0.25
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=now) == pytest.approx(30, abs=1)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after({"Retry-After": past}, now=now) == 0.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({"Retry-After": "-3"}) is None
    assert parse_retry_after({}) is None
    assert parse_retry_after(None) is None


def test_backoff_is_full_jitter_capped_and_honours_retry_after():
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0, rng=random.Random(1))
    delays = [[policy.delay(attempt) for _ in range(300)] for attempt in range(8)]
    for attempt, sample in enumerate(delays):
        ceiling = min(4.0, 0.5 * 2**attempt)
        assert min(sample) >= 0 and max(sample) <= ceiling
        # full jitter: spread over the whole range, not clustered at the ceiling
        assert np.mean(sample) == pytest.approx(ceiling / 2, rel=0.2)
    assert policy.delay(0, retry_after=3.0) >= 3.0
    assert RetryPolicy(max_retry_after=10).delay(0, retry_after=3600) <= 10


def test_token_bucket_never_grants_more_than_capacity_plus_rate_times_time():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_second=5.0, capacity=10.0, clock=clock)
    granted_at = []
    for _ in range(100):
        clock.sleep(bucket.reserve(1))
        granted_at.append(clock())
    elapsed = granted_at[-1] - granted_at[0]
    assert 10 + 5.0 * elapsed + 1e-6 >= 100
    assert elapsed == pytest.approx((100 - 10) / 5.0, rel=0.01)
    # a request bigger than the bucket waits for a full bucket, then goes into debt
    big = TokenBucket(rate_per_second=1.0, capacity=10.0, clock=clock)
    assert big.reserve(25) == 0.0
    assert big.reserve(1) == pytest.approx(16.0)


def test_rate_limiter_is_thread_safe_and_limits_requests_and_tokens():
    clock = FakeClock()
    limiter = RateLimiter(rpm=600, tpm=60_000, clock=clock, sleep=lambda s: None)
    waits: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            wait = limiter.acquire(tokens=100)
            with lock:
                waits.append(wait)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 400 requests of 100 tokens at 1000 tokens/s with a 1 s (1,000-token) burst: the
    # token limit binds; the last request may start at (40,000 - 1,000) / 1000 = 39 s.
    assert len(waits) == 400
    assert max(waits) == pytest.approx(39.0, rel=0.02)


def test_scrubber_removes_keys_tokens_and_key_shaped_strings():
    scrub = Scrubber(["my-very-secret-key"])
    text = (
        "Incorrect API key provided: my-very-secret-key. Authorization: Bearer abc.def-123 "
        "url https://x/v1/models?key=AIzaSyA1234567890abcdefghijklmnop&alt=json "
        "sk-proj-ABCDEFGH12345678 token ya29.a0AfB_byC"
    )
    cleaned = scrub(text)
    for secret in ("my-very-secret-key", "abc.def-123", "AIzaSyA1234567890", "sk-proj-", "ya29.a0"):
        assert secret not in cleaned
    assert "Incorrect API key provided" in cleaned and "\n" not in scrub("a\nb")


def _items(n: int) -> list[TextItem]:
    return [TextItem(id=f"id{i}", text=f"text {i}") for i in range(n)]


def test_send_gives_up_after_max_retries_with_an_actionable_error():
    calls = []

    def send() -> None:
        calls.append(1)
        raise TimeoutError("slow")

    counters = Counters()
    with pytest.raises(ProviderError, match=r"after 4 attempts.*--max-retries"):
        send_with_retries(
            send,
            lambda e: Failure("transient", "timed out"),
            policy=RetryPolicy(max_retries=3, base_delay=0.001, max_delay=0.001),
            limiter=RateLimiter(),
            tokens=1,
            counters=counters,
            what="request",
        )
    assert len(calls) == 4 and counters.snapshot()["retries"] == 3


def test_bisection_names_or_skips_exactly_the_rejected_inputs():
    bad = {"id13", "id71"}
    seen_batches: list[int] = []

    def embed(batch: list[TextItem]) -> np.ndarray:
        seen_batches.append(len(batch))
        if any(item.id in bad for item in batch):
            raise BadInputError("HTTP 400: rejected")
        return np.array([[float(item.id[2:]), 1.0] for item in batch], np.float32)

    items = _items(100)
    with pytest.raises(ProviderError, match=r"input id 'id13'.*--skip-bad"):
        embed_with_isolation(
            items,
            embed,
            dimension=lambda: 2,
            skip_bad=False,
            counters=Counters(),
            provider_name="p",
        )
    counters = Counters()
    vectors = embed_with_isolation(
        items, embed, dimension=lambda: 2, skip_bad=True, counters=counters, provider_name="p"
    )
    rejected_rows = {items[i].id for i in np.flatnonzero(np.isnan(vectors).any(axis=1))}
    assert rejected_rows == bad
    good = ~np.isnan(vectors).any(axis=1)
    assert np.array_equal(
        vectors[good, 0], np.array([i for i in range(100) if f"id{i}" not in bad])
    )
    snapshot = counters.snapshot()
    assert snapshot["skipped_bad"] == 2 and sorted(snapshot["skipped_bad_ids"]) == sorted(bad)


def test_a_request_rejected_for_every_input_is_reported_as_a_bad_request_not_bad_data():
    def embed(batch: list[TextItem]) -> np.ndarray:
        raise BadInputError("HTTP 400: invalid 'dimensions'")

    with pytest.raises(ProviderError, match=r"rejected every input.*dimensions"):
        embed_with_isolation(
            _items(8),
            embed,
            dimension=lambda: 2,
            skip_bad=True,
            counters=Counters(),
            provider_name="p",
        )
