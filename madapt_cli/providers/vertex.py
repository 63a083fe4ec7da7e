"""Google Vertex AI text embeddings through Google's supported SDK, ``google-genai``.

``madapt embed SOURCE --provider vertex --model text-embedding-005 [--dimensions N]``
with ``--project``/``--location`` (or ``GOOGLE_CLOUD_PROJECT``/``GOOGLE_CLOUD_LOCATION``)
and Application Default Credentials (``gcloud auth application-default login`` or a service
account in ``GOOGLE_APPLICATION_CREDENTIALS``).

What google-genai 3.x sends for ``client.models.embed_content`` on Vertex:

- text-embedding / gecko models: ``POST …/publishers/google/models/{model}:predict`` with
  ``instances[{content, task_type, title}]`` and ``parameters{outputDimensionality,
  autoTruncate}``;
- Gemini models: ``:embedContent`` for one text (``:batchEmbedContents`` for several).

Corpus rows are embedded as ``RETRIEVAL_DOCUMENT`` with their title in the title field,
queries as ``RETRIEVAL_QUERY``. ``EmbedContentConfig.title`` is one title for the whole
request, but each document has its own; rather than fall back to the deprecated
``google-cloud-aiplatform`` ``TextEmbeddingModel`` (which takes a title per input) we keep
google-genai and give each instance its title through ``HttpOptions.extra_body``, the SDK's
documented way to add request fields it does not model.

Vertex truncates over-long inputs itself (``autoTruncate``) and says which it cut; with
``--strict`` we ask it not to, and the inputs it then rejects are named (or skipped).

The ``:predict`` request goes through the client's own HTTP layer (``client._api_client.
request``: its credentials and their refresh, base URL, API version, timeout and
``errors.APIError``) with the body above built here and the JSON answer read here, rather
than through ``models.embed_content``: that call turns every text into a pydantic
``Content`` and walks every answer through its converters and models, milliseconds of CPU
a request under the GIL, which capped a run at 8 requests in flight (docs/benchmarks.md).
google-genai documents no public raw-request method, so this is its internal one; a client
without it (another SDK version) gets ``models.embed_content``, as do Gemini models.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from madapt_cli.data import TextItem
from madapt_cli.errors import ProviderError
from madapt_cli.providers.base import BatchLimits, Role
from madapt_cli.providers.remote import RemoteProvider
from madapt_cli.providers.resilience import (
    Failure,
    InvalidResponse,
    UnusableResponse,
    parse_retry_after,
    sdk_failure,
)


@dataclass(frozen=True)
class VertexModel:
    """One model's published limits (Vertex AI "Get text embeddings" documentation)."""

    dimension: int  # native output size
    max_inputs: int  # texts per request
    max_total_tokens: int  # tokens per request, all texts together
    max_input_tokens: int  # tokens per text; longer ones are truncated (autoTruncate)
    flexible_dimensions: bool  # accepts outputDimensionality
    min_dimensions: int = 1


#: every model we know, in one place; ``--model`` outside it is refused (its limits are unknown)
MODELS: dict[str, VertexModel] = {
    "text-embedding-005": VertexModel(768, 250, 20_000, 2048, True),
    "text-embedding-004": VertexModel(768, 250, 20_000, 2048, True),
    "text-multilingual-embedding-002": VertexModel(768, 250, 20_000, 2048, True),
    "textembedding-gecko@003": VertexModel(768, 250, 20_000, 2048, False),
    "textembedding-gecko-multilingual@001": VertexModel(768, 250, 20_000, 2048, False),
    # Vertex documents one input text per request for gemini-embedding-001 (the SDK then
    # uses :embedContent); its 20,000-token request budget is moot at one text.
    "gemini-embedding-001": VertexModel(3072, 1, 20_000, 2048, True, min_dimensions=128),
}
TASK_TYPES: dict[Role, str] = {"document": "RETRIEVAL_DOCUMENT", "query": "RETRIEVAL_QUERY"}
DEFAULT_LOCATION = "us-central1"


def _import_genai() -> tuple[Any, Any]:
    try:
        from google import genai
        from google.genai import types
    except ImportError:
        raise ProviderError(
            "the vertex provider needs google-genai: pip install 'madapt[vertex]'", exit_code=2
        ) from None
    return genai, types


class VertexProvider(RemoteProvider):
    name = "vertex"
    default_model = "text-embedding-005"
    accepts = RemoteProvider.accepts | {"dimensions", "base_url", "project", "location"}
    default_concurrency = 4

    def __init__(
        self,
        model: str,
        *,
        dimensions: int | None = None,
        project: str | None = None,
        location: str | None = None,
        base_url: str | None = None,
        credentials: Any = None,
        api_version: str = "v1",
        direct: bool = True,
        **options: Any,
    ) -> None:
        """``direct``: send ``:predict`` requests through the client's HTTP layer (see the
        module docstring); ``False`` keeps ``models.embed_content`` for every request."""
        super().__init__(model, **options)
        self.direct = direct
        spec = MODELS.get(model)
        if spec is None:
            raise ProviderError(
                f"unknown Vertex model {model!r}: choose one of {', '.join(MODELS)}", exit_code=2
            )
        if dimensions is not None:
            if not spec.flexible_dimensions:
                raise ProviderError(f"{model} does not accept --dimensions", exit_code=2)
            if not spec.min_dimensions <= dimensions <= spec.dimension:
                raise ProviderError(
                    f"{model} takes --dimensions from {spec.min_dimensions} to {spec.dimension},"
                    f" not {dimensions}",
                    exit_code=2,
                )
        self.spec = spec
        self.requested_dimensions = dimensions
        self.project = project or os.environ.get("GOOGLE_CLOUD_PROJECT")
        self.location = location or os.environ.get("GOOGLE_CLOUD_LOCATION") or DEFAULT_LOCATION
        self.base_url = base_url
        self.api_version = api_version
        self._credentials = credentials
        token = getattr(credentials, "token", None)
        self.scrub.add(token if isinstance(token, str) else None)
        for variable in ("GOOGLE_API_KEY", "GEMINI_API_KEY"):  # unused, but never shown
            self.scrub.add(os.environ.get(variable))
        self._client: Any = None
        self._client_lock = threading.Lock()

    # --- planning ---------------------------------------------------------------------
    @property
    def limits(self) -> BatchLimits:
        return BatchLimits(
            max_inputs=self.spec.max_inputs,
            max_total_tokens=self.spec.max_total_tokens,
            max_input_tokens=self.spec.max_input_tokens,
        )

    @property
    def dimension(self) -> int:
        return self.requested_dimensions or self.spec.dimension

    def settings(self, role: Role) -> dict[str, Any]:
        return {"task_type": TASK_TYPES[role], "dimensions": self.requested_dimensions}

    # --- requests ---------------------------------------------------------------------
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                genai, types = _import_genai()
                if not self.project:
                    raise ProviderError(
                        "no Google Cloud project: pass --project or set GOOGLE_CLOUD_PROJECT",
                        exit_code=2,
                    )
                http_options = types.HttpOptions(
                    api_version=self.api_version,
                    timeout=int(self.timeout * 1000),  # milliseconds
                    base_url=self.base_url,
                )  # no retry_options: the SDK then tries once, and retries are ours
                try:
                    self._client = genai.Client(
                        vertexai=True,
                        project=self.project,
                        location=self.location,
                        credentials=self._credentials,
                        http_options=http_options,
                    )
                except Exception as error:  # e.g. no Application Default Credentials
                    raise ProviderError(
                        f"cannot set up Vertex AI: {self.scrub(error)} (run `gcloud auth "
                        "application-default login` or set GOOGLE_APPLICATION_CREDENTIALS)",
                        exit_code=2,
                    ) from None
            return self._client

    def _send(self, items: list[TextItem], role: Role) -> np.ndarray:
        texts = [i.text if role == "document" else self.render(i) for i in items]
        raw = self._http() if not self.model.startswith("gemini") else None
        if raw is not None:
            vectors, truncated = self._predict(raw, items, texts, role)
        else:
            vectors, truncated = self._embed_content(items, texts, role)
        array = self._check_vectors(vectors, items)
        if array.shape[1] != self.dimension:
            asked = (
                f"output_dimensionality {self.requested_dimensions} was sent"
                if self.requested_dimensions is not None
                else "no --dimensions was sent"
            )
            raise UnusableResponse(
                f"Vertex returned vectors of {array.shape[1]} dimensions where {self.model} "
                f"gives {self.dimension} ({asked}); check --model and --dimensions"
            )
        for item, cut in zip(items, truncated, strict=False):
            if cut:
                self.counters.note("truncated", item.id)
        return array

    def _http(self) -> Any:
        """The client's HTTP layer when ``direct`` and this SDK version has it, else None."""
        if not self.direct:
            return None
        api = getattr(self.client(), "_api_client", None)
        return api if callable(getattr(api, "request", None)) else None

    def _predict(
        self, api: Any, items: list[TextItem], texts: list[str], role: Role
    ) -> tuple[list[Any], list[bool]]:
        """One ``:predict`` request, built and read as the SDK would (module docstring)."""
        task_type = TASK_TYPES[role]
        instances: list[dict[str, Any]] = []
        for item, text in zip(items, texts, strict=True):
            instance = {"content": text, "task_type": task_type}
            if role == "document" and item.title:
                instance["title"] = item.title
            instances.append(instance)
        parameters: dict[str, Any] = {"autoTruncate": not self.strict}
        if self.requested_dimensions is not None:
            parameters["outputDimensionality"] = self.requested_dimensions
        path = f"publishers/google/models/{self.model}:predict"
        response = api.request("post", path, {"instances": instances, "parameters": parameters})
        try:
            predictions = json.loads(response.body or "{}")["predictions"]
            embeddings = [p["embeddings"] for p in predictions]
            vectors = [e["values"] for e in embeddings]
            truncated = [bool((e.get("statistics") or {}).get("truncated")) for e in embeddings]
        except (KeyError, TypeError, AttributeError):
            raise InvalidResponse("a body that is not a list of predictions") from None
        return vectors, truncated

    def _embed_content(
        self, items: list[TextItem], texts: list[str], role: Role
    ) -> tuple[list[Any], list[bool]]:
        """One request through ``models.embed_content`` (Gemini models, or ``direct=False``)."""
        _, types = _import_genai()
        task_type = TASK_TYPES[role]
        titled = role == "document" and any(i.title for i in items)
        config: dict[str, Any] = {
            "task_type": task_type,
            "auto_truncate": not self.strict,
        }
        if self.requested_dimensions is not None:
            config["output_dimensionality"] = self.requested_dimensions
        if titled and len(items) == 1:
            config["title"] = items[0].title
        elif titled:
            # one title per instance (see the module docstring); Gemini models take one text
            # per request (MODELS), so only :predict requests get here
            assert not self.model.startswith("gemini"), "titled Gemini batches are not built"
            instances = []
            for item, text in zip(items, texts, strict=True):
                instance = {"content": text, "task_type": task_type}
                if item.title:
                    instance["title"] = item.title
                instances.append(instance)
            config["http_options"] = types.HttpOptions(extra_body={"instances": instances})
        response = self.client().models.embed_content(
            model=self.model, contents=texts, config=types.EmbedContentConfig(**config)
        )
        embeddings = list(getattr(response, "embeddings", None) or [])
        vectors = [getattr(e, "values", None) or [] for e in embeddings]
        truncated = [
            bool(getattr(getattr(e, "statistics", None), "truncated", False)) for e in embeddings
        ]
        return vectors, truncated

    def _classify(self, error: BaseException) -> Failure | None:
        from google.genai import errors

        if isinstance(error, errors.APIError):
            code = int(error.code or 0)
            message = self.scrub(getattr(error, "message", None) or error)
            headers = getattr(getattr(error, "response", None), "headers", None)
            retry_after = parse_retry_after(dict(headers) if headers is not None else None)
            if code == 429 or code >= 500 or code == 408:
                return Failure("transient", f"HTTP {code}: {message}", retry_after)
            if code == 400:
                return Failure("bad_input", f"HTTP {code}: {message}")
            hint = (
                " (check --project, --location and your credentials)" if code in (401, 403) else ""
            )
            return Failure("fatal", f"HTTP {code}: {message}{hint}")
        try:
            from google.auth import exceptions as auth_errors
        except ImportError:  # pragma: no cover - google-genai depends on google-auth
            auth_errors = None
        if auth_errors is not None and isinstance(error, auth_errors.GoogleAuthError):
            message = self.scrub(error)
            if isinstance(error, auth_errors.TransportError) or getattr(error, "retryable", False):
                return Failure("transient", f"could not get an access token: {message}")
            return Failure(
                "fatal",
                f"no usable Google credentials: {message} (run `gcloud auth application-default "
                "login` or set GOOGLE_APPLICATION_CREDENTIALS)",
            )
        if isinstance(error, json.JSONDecodeError):
            return Failure("transient", "invalid response: body is not JSON")
        if _is_transport_error(error):
            kind = "timed out" if "Timeout" in type(error).__name__ else "connection error"
            return Failure("transient", f"request {kind}: {self.scrub(error)}")
        try:
            import pydantic
        except ImportError:  # pragma: no cover - google-genai depends on it
            return None
        if isinstance(error, pydantic.ValidationError):
            return Failure("transient", "invalid response: unexpected structure")
        return sdk_failure(error, self.scrub)


def _is_transport_error(error: BaseException) -> bool:
    """Timeouts and connection failures of the HTTP clients google-genai may use."""
    for module_name in ("httpx2", "httpx"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        if isinstance(error, module.TransportError):
            return True
    try:
        import requests
    except ImportError:
        return isinstance(error, ConnectionError | TimeoutError)
    return isinstance(
        error, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError
    )
