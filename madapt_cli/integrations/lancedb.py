"""A LanceDB embedding function named ``madapt``: texts go through an adaptor's recorded
upstream model and the adaptor (:class:`~madapt_cli.pipelines.encode.Encoder`), documents on
``table.add`` with the document role, queries on ``table.search("text")`` with the query role.

Importing this module registers it (LanceDB has no entry points for embedding functions), also
before opening an existing table made with it in a new process::

    import madapt_cli.integrations.lancedb  # noqa: F401 - registers "madapt"
    from lancedb.embeddings import get_registry

    func = get_registry().get("madapt").create(adaptor="adaptors/x", dim=128)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from lancedb.embeddings import TextEmbeddingFunction
from lancedb.embeddings.registry import register
from pydantic import PrivateAttr

from madapt_cli.pipelines.encode import Encoder


@register("madapt")
class MadaptEmbeddings(TextEmbeddingFunction):
    """``adaptor``: the adaptor directory; ``dim``: the output size (default: its full
    dimension); ``device`` and ``batch_size``: how a local model runs. An API base reads its
    credentials from the environment, as `madapt encode` does."""

    adaptor: str
    dim: int | None = None
    device: str = "cpu"
    batch_size: int = 64
    #: madapt's own clients retry API calls; a local model's errors do not go away on retry
    max_retries: int = 0
    _encoder: Any = PrivateAttr(default=None)

    def encoder(self) -> Encoder:
        """The adaptor and its model, loaded on first use and kept."""
        if self._encoder is None:
            encoder = Encoder.from_adaptor(
                self.adaptor, device=self.device, batch_size=self.batch_size
            )
            encoder.adaptor.check_dim(self.dim)
            self._encoder = encoder
        return self._encoder

    def ndims(self) -> int:
        if self.dim is not None:
            return self.dim
        from madapt_cli.methods.adaptor import Adaptor

        return Adaptor.load(self.adaptor).dimension

    def _embed(self, texts: Any, role: str) -> list[np.ndarray | None]:
        texts = list(self.sanitize_input(texts))
        present = [i for i, text in enumerate(texts) if isinstance(text, str) and text]
        vectors: list[np.ndarray | None] = [None] * len(texts)
        if present:
            encoded = self.encoder().encode([texts[i] for i in present], role=role, dim=self.dim)
            for i, vector in zip(present, encoded, strict=True):
                vectors[i] = vector
        return vectors

    def compute_query_embeddings(self, query: Any, *args: Any, **kwargs: Any) -> list:
        return self._embed(query, "query")

    def compute_source_embeddings(self, texts: Any, *args: Any, **kwargs: Any) -> list:
        return self._embed(texts, "document")

    def generate_embeddings(self, texts: Any, *args: Any, **kwargs: Any) -> list:
        return self._embed(texts, "document")
