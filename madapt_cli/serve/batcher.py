"""Dynamic micro-batching: concurrent requests merged into upstream (model) batches.

Requests are queued; a worker thread takes the oldest, then keeps adding queued requests of
the same role until the batch holds ``max_batch`` texts or ``max_wait`` seconds have passed
since it started collecting, and encodes the batch in one call. While a worker is busy, new
requests pile up, so under load batches fill without waiting. The model runs in the workers,
never on the event loop; callers get a :class:`concurrent.futures.Future` per request.

The queue is bounded in texts (those admitted and not yet answered): :meth:`submit` raises
:class:`QueueFull` past ``max_queue``, except that an idle server always admits one request,
so a request larger than the bound can still be served.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from madapt_cli.errors import ProviderError

#: (texts, role) -> (len(texts), D) float32 unit rows
EncodeFn = Callable[[Sequence[str], Any], np.ndarray]


class QueueFull(Exception):
    """The queue holds ``max_queue`` texts already: try again later (HTTP 429)."""


@dataclass
class _Job:
    texts: list[str]
    role: Any
    dim: int
    future: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    """Counters since start, for /healthz and tests: ``batches`` upstream calls made for
    ``requests`` requests holding ``texts`` texts; ``largest`` texts in one batch."""

    batches: int = 0
    requests: int = 0
    texts: int = 0
    largest: int = 0
    failed_batches: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def prefix_normalized(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The first ``dim`` coordinates of each row, re-normalised to unit length."""
    cut = np.ascontiguousarray(vectors[:, :dim], dtype=np.float32)
    if dim == vectors.shape[1]:
        return cut
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return cut / np.maximum(norms, np.finfo(np.float32).tiny)


class MicroBatcher:
    """Merges concurrent :meth:`submit` calls into calls of ``encode`` in ``workers`` threads."""

    def __init__(
        self,
        encode: EncodeFn,
        *,
        max_batch: int,
        max_wait: float,
        max_queue: int,
        workers: int = 1,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or workers < 1 or max_wait < 0:
            raise ValueError("max_batch, max_queue and workers must be positive")
        self._encode = encode
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._pending: deque[_Job] = deque()
        self._admitted = 0  # texts queued or being encoded
        self._closing = False
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._work, name=f"madapt-serve-worker-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def queued(self) -> int:
        """Texts admitted and not yet answered."""
        with self._cond:
            return self._admitted

    def submit(self, texts: list[str], role: Any, dim: int) -> Future:
        """Queue ``texts``; the future gets their (len(texts), dim) unit vectors, or the
        exception the upstream raised. Raises :class:`QueueFull` when the queue is full."""
        job = _Job(texts, role, dim)
        with self._cond:
            if self._closing:
                raise RuntimeError("the batcher is closed")
            if self._admitted and self._admitted + len(texts) > self.max_queue:
                raise QueueFull(
                    f"the server's queue is full ({self._admitted} texts waiting, "
                    f"--max-queue {self.max_queue}): retry later"
                )
            self._admitted += len(texts)
            self._pending.append(job)
            self._cond.notify()
        return job.future

    def close(self, timeout: float | None = None) -> None:
        """Finish every queued request, then stop the workers."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    # --- the workers ------------------------------------------------------------------
    def _next_batch(self) -> list[_Job] | None:
        """The next batch to encode (blocks), or None once closed and drained."""
        with self._cond:
            while not self._pending:
                if self._closing:
                    return None
                self._cond.wait()
            batch = [self._pending.popleft()]
            size = len(batch[0].texts)
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch:
                if self._pending:
                    following = self._pending[0]
                    if following.role != batch[0].role:
                        break
                    if size + len(following.texts) > self.max_batch:
                        break
                    batch.append(self._pending.popleft())
                    size += len(following.texts)
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self._closing:
                    break
                self._cond.wait(left)
            return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        texts = [text for job in batch for text in job.texts]
        try:
            vectors = self._encode(texts, batch[0].role)
        except BaseException as error:
            self._count(batch, failed=True)
            if len(batch) > 1 and not isinstance(error, ProviderError):
                # one request's text may be what the upstream refuses: isolate, so the
                # others still get their vectors and only that request its error (a provider
                # that failed after its retries fails them all: no point in asking again)
                for job in batch:
                    self._run([job])
                return
            self._finish(batch[0], error=error)
            return
        self._count(batch)
        start = 0
        for job in batch:
            part = vectors[start : start + len(job.texts)]
            start += len(job.texts)
            try:
                result = prefix_normalized(part, job.dim)
            except BaseException as error:  # a bug, reported to its request, not fatal
                self._finish(job, error=error)
            else:
                self._finish(job, result=result)

    def _count(self, batch: list[_Job], failed: bool = False) -> None:
        size = sum(len(job.texts) for job in batch)
        with self._cond:
            self.stats.batches += 1
            if failed:
                self.stats.failed_batches += 1
                return
            self.stats.requests += len(batch)
            self.stats.texts += size
            self.stats.largest = max(self.stats.largest, size)

    def _finish(
        self, job: _Job, result: np.ndarray | None = None, error: BaseException | None = None
    ) -> None:
        with self._cond:
            self._admitted -= len(job.texts)
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
