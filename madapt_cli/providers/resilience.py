"""What every remote embedding API needs: rate limits, retries, bad-input isolation, secrecy.

- :class:`RateLimiter`: client-side requests-per-minute and tokens-per-minute limits, shared by
  all worker threads (two token buckets).
- :class:`RetryPolicy`: exponential backoff with full jitter, ``delay = U(0, min(cap, base·2^n))``,
  never shorter than the server's ``Retry-After`` / ``retry-after-ms``.
- :func:`embed_with_isolation`: a 400 (bad request) is never retried; the batch is bisected
  until the input the server rejects is found, which is then named (or skipped).
- :class:`Scrubber`: removes keys and tokens from any text that may reach the user.

The providers classify their SDK's exceptions into :class:`Failure` values; everything else
here is SDK-independent. :class:`madapt_cli.providers.remote.RemoteProvider` puts it together.
"""

from __future__ import annotations

import email.utils
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np

from madapt_cli.data import TextItem
from madapt_cli.errors import ProviderError

T = TypeVar("T")

#: the longest Retry-After we wait for at once (a server asking for an hour is broken)
MAX_RETRY_AFTER_SECONDS = 300.0


# --- secrets ------------------------------------------------------------------------------
_SECRET_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"(?i)((?:api[-_]?key|key|access_token|token)=)[^&\s'\"]+"),
    re.compile(r"(?i)((?:x-goog-api-key|api-key|authorization)['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+"),
    re.compile(r"()sk-[A-Za-z0-9_-]{8,}"),
    re.compile(r"()AIza[0-9A-Za-z_-]{20,}"),
    re.compile(r"()ya29\.[0-9A-Za-z._-]+"),
)


class Scrubber:
    """Removes known secrets and anything shaped like a key from text shown to the user."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 4 and secret not in self._secrets:
            self._secrets = sorted([*self._secrets, secret], key=len, reverse=True)

    def __call__(self, text: object) -> str:
        cleaned = str(text)
        for secret in self._secrets:
            cleaned = cleaned.replace(secret, "***")
        for pattern in _SECRET_PATTERNS:
            cleaned = pattern.sub(lambda m: m.group(1) + "***", cleaned)
        # one line, bounded: SDK messages can embed whole response bodies
        cleaned = " ".join(cleaned.split())
        return cleaned if len(cleaned) <= 300 else cleaned[:297] + "..."


# --- failures -----------------------------------------------------------------------------
FailureKind = Literal["transient", "bad_input", "fatal"]


@dataclass(frozen=True)
class Failure:
    """What a provider made of an exception from its SDK."""

    kind: FailureKind
    message: str  # already scrubbed
    retry_after: float | None = None  # seconds, from the server


#: top-level packages of the SDKs and HTTP stacks we drive
_SDK_PACKAGES = {"openai", "google", "httpx", "httpx2", "httpcore", "requests", "urllib3", "anyio"}


def sdk_failure(error: BaseException, scrub: Callable[[object], str]) -> Failure | None:
    """Any other exception raised inside an SDK is fatal and reported scrubbed (its text may
    hold a URL or header); exceptions from our own code are left alone (``None``): bugs."""
    package = type(error).__module__.split(".")[0]
    if package in _SDK_PACKAGES:
        return Failure("fatal", f"{type(error).__name__}: {scrub(error)}")
    return None


class InvalidResponse(Exception):
    """A response we cannot use that may be a glitch (malformed body, a missing vector):
    retried."""


class UnusableResponse(Exception):
    """A well-formed response that can never become valid (vectors of the wrong size): the
    same request would get the same answer, so it is not retried and the run stops naming
    it."""


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI) or ``Retry-After`` (seconds or an
    HTTP date, RFC 9110 §10.2.3); ``None`` when absent or unparsable."""
    if not headers:
        return None
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    milliseconds = lowered.get("retry-after-ms")
    if milliseconds is not None:
        try:
            value = float(milliseconds) / 1000.0
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
    Jitter"): attempt ``n`` (0-based) waits ``U(0, min(max_delay, base_delay·2^n))``, or the
    server's Retry-After if that is longer. The defaults ride out a rate-limit storm of
    several minutes: ten retries, the last ones waiting up to a minute each."""

    max_retries: int = 10
    base_delay: float = 1.0
    max_delay: float = 60.0
    max_retry_after: float = MAX_RETRY_AFTER_SECONDS
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        ceiling = min(self.max_delay, self.base_delay * (2.0 ** min(attempt, 62)))
        jittered = self.rng.uniform(0.0, ceiling)
        if retry_after is not None:
            return max(jittered, min(retry_after, self.max_retry_after))
        return jittered


# --- client-side rate limits --------------------------------------------------------------
class TokenBucket:
    """A thread-safe token bucket that may go into debt: a request bigger than the bucket
    still runs once the bucket is full, and later callers wait for the debt to be repaid.
    Over any window of ``t`` seconds it grants at most ``capacity + rate·t``."""

    def __init__(
        self, rate_per_second: float, capacity: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate_per_second <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate_per_second
        self.capacity = capacity
        self._clock = clock
        self._level = capacity
        self._updated = clock()
        self._lock = threading.Lock()

    def reserve(self, amount: float) -> float:
        """Take ``amount`` now; returns how long the caller must wait before using it."""
        with self._lock:
            now = self._clock()
            self._level = min(self.capacity, self._level + (now - self._updated) * self.rate)
            self._updated = now
            # a request bigger than the bucket waits for a full bucket, then takes it all
            needed = min(amount, self.capacity)
            wait = max(0.0, (needed - self._level) / self.rate)
            self._level -= amount
            return wait


class RateLimiter:
    """Client-side ``rpm`` (requests per minute) and ``tpm`` (tokens per minute) limits.

    Each bucket holds one second's worth of its rate (at least one request), so any minute
    sees at most the limit plus one second's worth; set the limits a little under the
    server's quota. A request bigger than a bucket still goes, alone. ``None`` disables a
    limit."""

    BURST_SECONDS = 1.0

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._sleep = sleep
        self._requests = self._bucket(rpm, clock)
        self._tokens = self._bucket(tpm, clock)

    def _bucket(self, per_minute: float | None, clock: Callable[[], float]) -> TokenBucket | None:
        if per_minute is None:
            return None
        if per_minute <= 0:
            raise ValueError("rate limits must be positive")
        rate = per_minute / 60.0
        return TokenBucket(rate, max(1.0, rate * self.BURST_SECONDS), clock)

    def acquire(self, tokens: int) -> float:
        """Block until one request of ``tokens`` may be sent; returns the seconds waited."""
        wait = 0.0
        if self._requests is not None:
            wait = max(wait, self._requests.reserve(1))
        if self._tokens is not None:
            wait = max(wait, self._tokens.reserve(tokens))
        if wait > 0:
            self._sleep(wait)
        return wait


# --- counters -----------------------------------------------------------------------------
class Counters:
    """Thread-safe run statistics a provider reports (requests, retries, truncated...)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}
        self._lists: dict[str, list[str]] = {}
        self._seen: dict[str, set[str]] = {}

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def note(self, name: str, value: str) -> None:
        """Count ``name`` once per distinct ``value`` (e.g. the id of a skipped input), and
        remember the values: a retried or bisected request does not count twice."""
        with self._lock:
            seen = self._lists.setdefault(name, [])
            if value in self._seen.setdefault(name, set()):
                return
            self._seen[name].add(value)
            seen.append(value)
            self._values[name] = self._values.get(name, 0) + 1

    def snapshot(self) -> dict[str, int | list[str]]:
        with self._lock:
            return {**self._values, **{f"{k}_ids": list(v) for k, v in self._lists.items()}}


# --- the request loop ---------------------------------------------------------------------
class BadInputError(Exception):
    """The server rejected a request for its content (HTTP 400): not worth retrying as is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def send_with_retries(
    send: Callable[[], T],
    classify: Callable[[BaseException], Failure | None],
    *,
    policy: RetryPolicy,
    limiter: RateLimiter,
    tokens: int,
    counters: Counters,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``send`` until it succeeds; transient failures are retried per ``policy``.

    Raises :class:`BadInputError` for a 400 (the caller bisects) and :class:`ProviderError`
    for anything fatal or for transient failures that outlast the retries.
    """
    attempt = 0
    while True:
        limiter.acquire(tokens)
        counters.add("requests")
        try:
            return send()
        except UnusableResponse as error:
            raise ProviderError(f"{what} failed: {error} (not retried)") from None
        except InvalidResponse as error:
            failure = Failure("transient", f"invalid response: {error}")
        except Exception as error:
            failure = classify(error)
            if failure is None:
                raise
        if failure.kind == "bad_input":
            raise BadInputError(failure.message) from None
        if failure.kind == "fatal":
            raise ProviderError(f"{what} failed: {failure.message}") from None
        if attempt >= policy.max_retries:
            raise ProviderError(
                f"{what} failed after {attempt + 1} attempts: {failure.message} "
                "(raise --max-retries or lower --concurrency/--rpm/--tpm, then rerun to resume)"
            ) from None
        counters.add("retries")
        sleep(policy.delay(attempt, failure.retry_after))
        attempt += 1


def embed_with_isolation(
    items: list[TextItem],
    embed: Callable[[list[TextItem]], np.ndarray],
    *,
    dimension: Callable[[], int],
    skip_bad: bool,
    counters: Counters,
    provider_name: str,
) -> np.ndarray:
    """``embed(items)``; on a 400, bisect to find the inputs the server rejects.

    A rejected input is named in a :class:`ProviderError`, or with ``skip_bad`` its row is
    returned as NaN (the pipeline stores no NaN row, so a rerun tries it again). If every
    input of a multi-input request is rejected the request itself is wrong (a bad option or
    model), and that is reported instead of blaming the data.
    """
    rejected: list[tuple[TextItem, str]] = []

    def run(batch: list[TextItem]) -> np.ndarray | None:
        try:
            return embed(batch)
        except BadInputError as error:
            if len(batch) == 1:
                rejected.append((batch[0], error.message))
                return None
            counters.add("bisections")
            middle = len(batch) // 2
            left, right = run(batch[:middle]), run(batch[middle:])
            width = dimension()
            parts = [
                part if part is not None else np.full((len(half), width), np.nan, np.float32)
                for part, half in ((left, batch[:middle]), (right, batch[middle:]))
            ]
            return np.concatenate(parts, axis=0)

    result = run(items)
    if not rejected:
        assert result is not None
        return result
    if len(rejected) == len(items) and len(items) > 1:
        raise ProviderError(
            f"{provider_name} rejected every input of a request of {len(items)}, so the request "
            f"itself is invalid (check --model/--dimensions): {rejected[0][1]}"
        )
    if not skip_bad:
        item, message = rejected[0]
        raise ProviderError(
            f"{provider_name} rejected input id {item.id!r}: {message} "
            "(fix or remove it, or pass --skip-bad to skip such inputs)"
        )
    for item, _ in rejected:
        counters.note("skipped_bad", item.id)
    if result is None:  # a one-input request that was rejected
        return np.full((len(items), dimension()), np.nan, np.float32)
    return result
