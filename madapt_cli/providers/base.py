"""The embedding-provider interface.

A provider turns texts into vectors for one model. The embed pipeline
(:mod:`madapt_cli.embedding`) owns batching, concurrency, caching and resume; a provider only
says what one request may hold (:class:`BatchLimits`), how many requests may be in flight, and
performs one request in :meth:`EmbeddingProvider.embed_batch`.

Roles: a corpus is embedded as ``"document"``, questions as ``"query"``. Providers map the role
to what their model expects (a prompt prefix for local models, a task type for Vertex).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from madapt_cli.errors import InputError, MadaptError
from madapt_cli.util.vectors import check_vectors

Role = Literal["document", "query"]


ROLES: tuple[Role, ...] = ("document", "query")


@dataclass(frozen=True)
class TextItem:
    """One text to embed. ``title`` is kept apart for providers that take it separately."""

    id: str
    text: str
    title: str | None = None


class BadVectors(InputError):
    """A provider answered with a vector madapt refuses (NaN, infinity, all zeros): a fact of
    the model and text, so never retried; the pipeline adds the table to the message."""


def check_response(vectors: np.ndarray, items: list[TextItem], where: str) -> None:
    """Raise :class:`BadVectors` naming the first input whose vector is non-finite or zero."""
    try:
        check_vectors(vectors, [item.id for item in items], where)
    except InputError as error:
        raise BadVectors(str(error)) from None


@dataclass(frozen=True)
class BatchLimits:
    """What one request may hold. ``None`` means unbounded."""

    max_inputs: int
    max_total_tokens: int | None = None
    max_input_tokens: int | None = None


class EmbeddingProvider(ABC):
    """One embedding model behind one API (or a local library)."""

    #: registry name: "local", "openai", "vertex"
    name: str = ""

    def __init__(self, model: str) -> None:
        self.model = model

    # --- what the pipeline needs to plan requests -------------------------------------
    @property
    @abstractmethod
    def limits(self) -> BatchLimits:
        """Per-request limits; the pipeline never sends a batch that exceeds them."""

    @property
    def concurrency(self) -> int:
        """How many :meth:`embed_batch` calls the pipeline may run at once."""
        return 1

    def estimate_tokens(self, item: TextItem) -> int:
        """A conservative (over-)estimate of the tokens ``item`` costs."""
        text = item.text if item.title is None else f"{item.title} {item.text}"
        # ~4 characters a token for English; count bytes so non-ASCII text errs high.
        return len(text.encode("utf-8")) // 3 + 1

    # --- the work -------------------------------------------------------------------
    @property
    @abstractmethod
    def dimension(self) -> int:
        """Length of the vectors this provider returns."""

    @abstractmethod
    def embed_batch(self, items: list[TextItem], role: Role) -> np.ndarray:
        """Embed one batch (within :attr:`limits`): returns float32 (len(items), dimension).

        A row of NaN marks an input the API rejected and the user chose to skip
        (``--skip-bad``); the pipeline does not store it.
        """

    # --- identity: what makes two vectors interchangeable ------------------------------
    def settings(self, role: Role) -> dict[str, Any]:
        """Everything besides the text that changes the vector (prompt, task type, dims…).

        Never includes secrets: it is written to the store's metadata.
        """
        return {}

    def content_key(self, item: TextItem, role: Role) -> str:
        """sha256 over provider, model, settings and text: equal keys mean equal vectors."""
        payload = {
            "provider": self.name,
            "model": self.model,
            "settings": self.settings(role),
            "title": item.title,
            "text": item.text,
        }
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()

    def metadata(self, role: Role, normalized: bool) -> dict[str, Any]:
        """The store metadata for a table this provider fills."""
        return {
            "provider": self.name,
            "model": self.model,
            "dimension": self.dimension,
            "normalized": normalized,
            "role": role,
            **self.settings(role),
        }

    def stats(self) -> dict[str, Any]:
        """Counters of the run so far for the summary (requests, retries, truncated...)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients and pools."""


#: provider name -> "module:Class"
PROVIDERS: dict[str, str] = {
    "local": "madapt_cli.providers.local:LocalProvider",
    "openai": "madapt_cli.providers.openai:OpenAIProvider",
    "vertex": "madapt_cli.providers.vertex:VertexProvider",
}


def get_provider(name: str, model: str, **options: Any) -> EmbeddingProvider:
    """Build the provider ``name`` for ``model``; options are the provider's own."""
    if name not in PROVIDERS:
        raise MadaptError(f"unknown provider {name!r}: choose one of {', '.join(PROVIDERS)}")
    module_name, class_name = PROVIDERS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            raise MadaptError(f"provider {name!r} is not available in this version") from None
        raise
    provider_class = getattr(module, class_name)
    return provider_class(model, **options)
