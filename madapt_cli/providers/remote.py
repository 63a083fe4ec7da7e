"""The shared base of API providers (OpenAI, Vertex): the options every one takes and
:meth:`RemoteProvider.embed_batch` = rate limit -> send -> retry transient failures -> bisect
on a 400, built from :mod:`madapt_cli.providers.resilience`."""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from typing import Any

import numpy as np

from madapt_cli.data import TextItem
from madapt_cli.errors import ProviderError
from madapt_cli.providers.base import EmbeddingProvider, Role, check_response
from madapt_cli.providers.resilience import (
    Counters,
    Failure,
    InvalidResponse,
    RateLimiter,
    RetryPolicy,
    Scrubber,
    embed_with_isolation,
    send_with_retries,
)


class RemoteProvider(EmbeddingProvider):
    """An embedding API behind an SDK: the options every API provider takes, and
    :meth:`embed_batch` = rate limit -> send -> retry transient failures -> bisect on 400.

    Subclasses implement :meth:`_send` (one request, no retries, raising :class:`Failure`-
    classifiable SDK exceptions or :class:`InvalidResponse`) and :meth:`_classify`.

    ``strict``: never truncate an over-long input; the API's rejection names it.
    ``skip_bad``: inputs the API rejects (HTTP 400) are skipped and counted, not fatal.
    """

    default_concurrency = 4
    family = "api"
    #: what every API provider takes (subclasses add theirs: ``dimensions``, ``base_url``...)
    accepts = frozenset(
        {
            "concurrency",
            "rpm",
            "tpm",
            "max_retries",
            "timeout",
            "strict",
            "skip_bad",
            "retry_base_delay",
        }
    )
    #: the local model's options (they have command-line defaults)
    ignores = frozenset({"batch_size", "device", "query_prompt", "document_prompt"})

    def __init__(  # noqa: PLR0913 - one keyword per command-line option of every API provider
        self,
        model: str,
        *,
        concurrency: int | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        max_retries: int = 10,
        strict: bool = False,
        skip_bad: bool = False,
        timeout: float = 60.0,
        retry_policy: RetryPolicy | None = None,
        retry_base_delay: float | None = None,
    ) -> None:
        super().__init__(model)
        if concurrency is not None and concurrency < 1:
            raise ProviderError("--concurrency must be at least 1", exit_code=2)
        if max_retries < 0:
            raise ProviderError("--max-retries must be 0 or more", exit_code=2)
        if timeout <= 0:
            raise ProviderError("the request timeout must be positive", exit_code=2)
        try:
            self._limiter = RateLimiter(rpm=rpm, tpm=tpm)
        except ValueError:
            raise ProviderError("--rpm and --tpm must be positive", exit_code=2) from None
        self._concurrency = concurrency or self.default_concurrency
        self.strict = strict
        self.skip_bad = skip_bad
        self.timeout = timeout
        if retry_policy is None and retry_base_delay is not None:  # --retry-base-delay (tests)
            retry_policy = RetryPolicy(
                max_retries=max_retries,
                base_delay=retry_base_delay,
                max_delay=max(retry_base_delay, 1.0) * 60,
            )
        self.retry_policy = retry_policy or RetryPolicy(max_retries=max_retries)
        self.counters = Counters()
        self.scrub = Scrubber()

    @property
    def concurrency(self) -> int:
        return self._concurrency

    def render(self, item: TextItem) -> str:
        """The text sent for ``item`` when the API has no separate title field."""
        return item.joined

    def count_tokens(self, text: str) -> int:
        """An upper estimate of the tokens in ``text`` (subclasses may count exactly)."""
        return len(text.encode("utf-8")) // 3 + 1

    def estimate_tokens(self, item: TextItem) -> int:
        return self.count_tokens(self.render(item))

    def stats(self) -> dict[str, Any]:
        return self.counters.snapshot()

    def close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None and hasattr(client, "close"):
            # closing is best effort: the run's result is already stored
            with contextlib.suppress(Exception):
                client.close()

    # --- one request ------------------------------------------------------------------
    @abstractmethod
    def _send(self, items: list[TextItem], role: Role) -> np.ndarray:
        """One request for ``items``: float32 (len(items), dimension), validated."""

    @abstractmethod
    def _classify(self, error: BaseException) -> Failure | None:
        """Map an SDK exception to a :class:`Failure` (``None``: not ours, re-raise)."""

    def embed_batch(self, items: list[TextItem], role: Role) -> np.ndarray:
        def embed(batch: list[TextItem]) -> np.ndarray:
            tokens = sum(min(self.estimate_tokens(i), self._max_input_tokens()) for i in batch)
            vectors = send_with_retries(
                lambda: self._send(batch, role),
                self._classify,
                policy=self.retry_policy,
                limiter=self._limiter,
                tokens=tokens,
                counters=self.counters,
                what=f"{self.name} request for {len(batch)} inputs ({batch[0].id!r}...)",
            )
            self.counters.add("accepted", len(batch))
            return vectors

        vectors = embed_with_isolation(
            items,
            embed,
            dimension=lambda: self.dimension,
            skip_bad=self.skip_bad,
            counters=self.counters,
            provider_name=f"{self.name} ({self.model})",
        )
        counts = self.counters.snapshot()
        rejected, accepted = counts.get("skipped_bad", 0), counts.get("accepted", 0)
        if rejected >= self.REJECTIONS_BEFORE_GIVING_UP and accepted == 0:
            # One-input requests (gemini-embedding-001) cannot tell a bad request from bad
            # data; a run where the API accepts nothing is not a data problem.
            raise ProviderError(
                f"{self.name} ({self.model}) rejected the first {rejected} inputs and accepted "
                f"none: the request itself is likely invalid (check --model/--dimensions)"
            )
        return vectors

    #: with --skip-bad, this many rejections before any success stops the run
    REJECTIONS_BEFORE_GIVING_UP = 5

    def _max_input_tokens(self) -> int:
        limit = self.limits.max_input_tokens
        return limit if limit is not None else 1 << 62

    def _check_vectors(self, vectors: list[list[float]], items: list[TextItem]) -> np.ndarray:
        """The response's vectors as float32 (len(items), dimension), or
        :class:`InvalidResponse`; a NaN, infinite or all-zero vector is
        :class:`~madapt_cli.providers.base.BadVectors` naming its input (never retried)."""
        count = len(items)
        if len(vectors) != count:
            raise InvalidResponse(f"{len(vectors)} vectors for {count} inputs")
        try:
            array = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError):
            raise InvalidResponse("vectors of unequal length or non-numbers") from None
        if array.ndim != 2 or array.shape[0] != count:
            raise InvalidResponse(f"vectors of shape {array.shape} for {count} inputs")
        check_response(array, items, f"{self.name} ({self.model}) response")
        return array
