"""Overlap reading with work: an iterator consumed while a thread produces the next items."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any


def read_ahead(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """``items``, produced by a thread that runs up to ``depth`` items ahead of the consumer.

    Decoding Parquet releases the GIL, so the reading overlaps the searches of the batches
    already read. The producer's exception is raised in the consumer; if the consumer stops
    early, the producer stops at its next item.
    """
    done = object()
    buffer: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    failure: list[BaseException] = []

    def hand_over(item: Any) -> bool:
        """Wait for room, unless the consumer has stopped; False if it has."""
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not hand_over(item):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            failure.append(error)
        finally:
            hand_over(done)

    producer = threading.Thread(target=produce, name="madapt-read-ahead", daemon=True)
    producer.start()
    try:
        while (item := buffer.get()) is not done:
            yield item
        if failure:
            raise failure[0]
    finally:
        stop.set()
        producer.join(timeout=5)
