"""What `madapt serve` needs from an :class:`Encoder`: vectors, token counts, worker count.

Usage is counted with the upstream's own tokenizer where there is one: a local model's
(sentence-transformers) tokenizer, special tokens excluded and nothing cut (the model itself
reads at most its ``max_seq_length`` tokens of each text); for an API provider its own count
(OpenAI: tiktoken's cl100k_base when its file is on disk, otherwise the provider's upper
estimate; Vertex: the provider's estimate).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from madapt_cli.pipelines.encode import Encoder
from madapt_cli.providers.local import LocalProvider


class Upstream:
    """An :class:`Encoder` as the server uses it (thread-safe for its ``workers``)."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.local = isinstance(encoder.provider, LocalProvider)
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    @property
    def workers(self) -> int:
        """Threads that may call :meth:`encode` at once: one for a local model (it uses
        every core already), the provider's request concurrency for an API."""
        return 1 if self.local else max(1, self.encoder.provider.concurrency)

    @property
    def description(self) -> str:
        provider = self.encoder.provider
        return f"{provider.name} model {provider.model}"

    def warm_up(self) -> None:
        """Load the model now (a missing model fails at start, not on the first request).
        An API is not called: its failures are answered with 503s."""
        if self.local:
            self.encoder.encode(["warm up"], role="query")
            self._local_tokenizer()

    def encode(self, texts: Sequence[str], role: Any) -> np.ndarray:
        """(len(texts), D) unit vectors: the upstream, then the adaptor at full size."""
        return self.encoder.encode(list(texts), role=role)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if not self.local:
            return [int(self.encoder.provider.count_tokens(text)) for text in texts]
        tokenizer = self._local_tokenizer()
        with self._lock:  # a fast tokenizer is not safe to call from two threads at once
            encoded = tokenizer(list(texts), add_special_tokens=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def _local_tokenizer(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                # the provider loads its model on first use; its tokenizer is what it reads
                model = self.encoder.provider._load()
                # a copy: the model's own is used by the worker thread (with its padding and
                # truncation settings), and a fast tokenizer must not be shared across threads
                self._tokenizer = copy.deepcopy(model.tokenizer)
            return self._tokenizer
