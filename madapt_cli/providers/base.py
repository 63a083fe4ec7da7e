"""The embedding-provider interface.

A provider turns texts into vectors for one model. The embed pipeline
(:mod:`madapt_cli.pipelines.embed`) owns batching, concurrency, caching and resume; a provider only
says what one request may hold (:class:`BatchLimits`), how many requests may be in flight, and
performs one request in :meth:`EmbeddingProvider.embed_batch`.

A provider class declares what the command line needs to build it: its ``default_model``, the
options it ``accepts`` and those it ``ignores`` (:func:`build_provider` refuses the rest);
registering it is one line in :data:`PROVIDERS`.

Roles: a corpus is embedded as ``"document"``, questions as ``"query"``. Providers map the role
to what their model expects (a prompt prefix for local models, a task type for Vertex).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from madapt_cli.data import TextItem
from madapt_cli.errors import InputError, MadaptError
from madapt_cli.util.vectors import check_vectors

Role = Literal["document", "query"]


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

    #: registry name (:data:`PROVIDERS`): "local", "openai", "vertex"
    name: ClassVar[str] = ""
    #: the model ``madapt embed`` uses without ``--model``
    default_model: ClassVar[str] = ""
    #: providers of one family share their options ("local", "api"); see :func:`_refusal`
    family: ClassVar[str] = ""
    #: the generic command-line options (constructor keywords) this provider takes
    accepts: ClassVar[frozenset[str]] = frozenset()
    #: options (with a command-line default) that this provider ignores rather than refuses
    ignores: ClassVar[frozenset[str]] = frozenset()

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
        text = item.joined
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

    def embed_request(
        self, items: list[TextItem], role: Role, on_rows: Callable[[int], None]
    ) -> np.ndarray:
        """:meth:`embed_batch`, calling ``on_rows(n)`` in this thread as parts of the request
        finish (the parts add up to ``len(items)``), for progress. By default the request is
        one part; a local model reports each model batch."""
        vectors = self.embed_batch(items, role)
        on_rows(len(items))
        return vectors

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


#: provider name -> "module:Class". A new provider is one module in providers/ (a subclass of
#: :class:`EmbeddingProvider` declaring ``name``, ``default_model``, ``family``, ``accepts`` and
#: ``ignores``) plus one line here; ``madapt embed --provider NAME`` then builds it.
PROVIDERS: dict[str, str] = {
    "local": "madapt_cli.providers.local:LocalProvider",
    "openai": "madapt_cli.providers.openai:OpenAIProvider",
    "vertex": "madapt_cli.providers.vertex:VertexProvider",
}


def provider_class(name: str) -> type[EmbeddingProvider]:
    """The class registered as ``name`` in :data:`PROVIDERS`."""
    if name not in PROVIDERS:
        raise MadaptError(f"unknown provider {name!r}: choose one of {', '.join(PROVIDERS)}")
    module_name, class_name = PROVIDERS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            raise MadaptError(f"provider {name!r} is not available in this version") from None
        raise
    return getattr(module, class_name)


def build_provider(name: str, model: str | None, values: Mapping[str, Any]) -> EmbeddingProvider:
    """The provider ``name`` for ``model`` (its ``default_model`` when None) from the generic
    option values of the command line (:func:`provider_options`)."""
    chosen = provider_class(name)
    return chosen(model or chosen.default_model, **provider_options(chosen, values))


def provider_options(chosen: type[EmbeddingProvider], values: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords ``chosen`` is built with: every option it ``accepts`` that has a value.

    ``values`` maps each generic option (``rpm``, ``batch_size``...: a constructor keyword,
    ``--rpm``, ``--batch-size`` on the command line) to its value; None or False (or an equal
    0) is "not given". A given option that the provider neither accepts nor ``ignores`` is an
    :class:`InputError` rather than silently dropped (:func:`_refusal` words it).
    """
    given = [k for k, v in values.items() if v not in (None, False)]
    refused = [k for k in given if k not in chosen.accepts | chosen.ignores]
    if refused:
        raise InputError(_refusal(chosen, refused))
    return {k: v for k, v in values.items() if k in chosen.accepts and v is not None}


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _refusal(chosen: type[EmbeddingProvider], refused: list[str]) -> str:
    """An option that another provider of ``chosen``'s family takes names that provider
    (``--project applies to --provider vertex``); options of another family name that whole
    family (``--rpm: only for --provider openai or vertex, not local``)."""
    classes: dict[str, type[EmbeddingProvider]] = {}
    for name in PROVIDERS:
        try:
            classes[name] = provider_class(name)
        except MadaptError:  # not in this version: it takes nothing
            continue
    siblings = [n for n, c in classes.items() if c.family == chosen.family and n != chosen.name]
    for option in refused:
        takers = [n for n in siblings if option in classes[n].accepts]
        if takers:
            return f"{_flag(option)} applies to --provider {' or '.join(takers)}"
    families = {c.family for c in classes.values() if c.accepts.intersection(refused)}
    takers = [n for n, c in classes.items() if c.family in families]
    flags = ", ".join(sorted(_flag(o) for o in refused))
    return f"{flags}: only for --provider {' or '.join(takers)}, not {chosen.name}"
