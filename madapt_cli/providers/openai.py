"""OpenAI embeddings (and Azure / OpenAI-compatible servers) through the official SDK.

``madapt embed SOURCE --provider openai --model text-embedding-3-small [--dimensions N]``.
The key comes from ``OPENAI_API_KEY``, the server from ``--base-url`` or ``OPENAI_BASE_URL``.
Limits per request: 2,048 inputs, 300,000 tokens in total, 8,192 tokens per input; longer
inputs are cut to 8,192 tokens (counted by tiktoken when its BPE file is available offline,
otherwise estimated high) unless ``--strict``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
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

#: model -> (native dimension, accepts ``dimensions``)
MODELS: dict[str, tuple[int, bool]] = {
    "text-embedding-3-small": (1536, True),
    "text-embedding-3-large": (3072, True),
    "text-embedding-ada-002": (1536, False),
}
LIMITS = BatchLimits(max_inputs=2048, max_total_tokens=300_000, max_input_tokens=8192)
ENCODING = "cl100k_base"  # the tokenizer of every OpenAI embedding model
_ENCODING_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
PROBE_TEXT = "dimension probe"


def _import_openai() -> Any:
    try:
        import openai
    except ImportError:
        raise ProviderError(
            "the openai provider needs the openai SDK: pip install 'madapt[openai]'", exit_code=2
        ) from None
    return openai


def load_tiktoken_offline() -> Any | None:
    """cl100k_base from tiktoken, only if its BPE file is already on disk.

    tiktoken downloads the file on first use; without a network that would stall or fail,
    so we look where tiktoken caches it (``TIKTOKEN_CACHE_DIR``, ``DATA_GYM_CACHE_DIR`` or
    ``$TMPDIR/data-gym-cache``) and fall back to an estimate when it is absent.
    """
    try:
        import tiktoken
    except ImportError:
        return None
    cache_dir = (
        os.environ.get("TIKTOKEN_CACHE_DIR")
        or os.environ.get("DATA_GYM_CACHE_DIR")
        or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    )
    cached = os.path.join(cache_dir, hashlib.sha1(_ENCODING_URL.encode()).hexdigest())
    if not os.path.exists(cached):
        return None
    try:
        return tiktoken.get_encoding(ENCODING)
    except Exception:  # a corrupt cache: estimating is still correct, only less tight
        return None


class OpenAIProvider(RemoteProvider):
    """``POST /v1/embeddings`` with ``encoding_format="float"`` (compatible servers often
    lack base64) and the SDK's own retries off (``max_retries=0``): retries are ours."""

    name = "openai"
    default_model = "text-embedding-3-small"
    accepts = RemoteProvider.accepts | {"dimensions", "base_url"}
    default_concurrency = 4

    def __init__(
        self,
        model: str,
        *,
        dimensions: int | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        use_tiktoken: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        known = MODELS.get(model)
        if dimensions is not None:
            if dimensions < 1:
                raise ProviderError("--dimensions must be positive", exit_code=2)
            if known is not None and not known[1]:
                raise ProviderError(f"{model} does not accept --dimensions", exit_code=2)
            if known is not None and dimensions > known[0]:
                raise ProviderError(
                    f"{model} returns at most {known[0]} dimensions, not {dimensions}", exit_code=2
                )
        self.requested_dimensions = dimensions
        self._dimension: int | None = dimensions or (known[0] if known else None)
        self._dimension_lock = threading.RLock()  # the probe re-enters it
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY")
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self.scrub.add(self.api_key)
        self._encoding = load_tiktoken_offline() if use_tiktoken else None
        self._client: Any = None
        self._client_lock = threading.Lock()

    # --- planning ---------------------------------------------------------------------
    @property
    def limits(self) -> BatchLimits:
        return LIMITS

    @property
    def exact_tokens(self) -> bool:
        """True when tokens are counted by the model's own tokenizer (tiktoken)."""
        return self._encoding is not None

    def count_tokens(self, text: str) -> int:
        if self._encoding is not None:
            return len(self._encoding.encode(text, disallowed_special=()))
        # No tokenizer: cl100k averages ~4 bytes a token in English and rarely fewer than 2
        # outside pathological strings; 2 errs high, so batches stay within the limits.
        return len(text.encode("utf-8")) // 2 + 1

    def estimate_tokens(self, item: TextItem) -> int:
        tokens = self.count_tokens(self.render(item))
        if self.strict and self.exact_tokens and tokens > LIMITS.max_input_tokens:
            raise ProviderError(
                f"input id {item.id!r} has {tokens} tokens, over the {LIMITS.max_input_tokens}"
                f"-token limit of {self.model} (--strict forbids truncating it)",
                exit_code=2,
            )
        return tokens

    def truncate(self, text: str) -> tuple[str, bool]:
        """``text`` cut to the per-input token limit; ``True`` if it was cut."""
        limit = LIMITS.max_input_tokens
        if self.count_tokens(text) <= limit:
            return text, False
        if self._encoding is not None:
            tokens = self._encoding.encode(text, disallowed_special=())[:limit]
            cut = self._encoding.decode(tokens)
            # a multi-byte character split across tokens decodes one token longer; trim
            while cut and self.count_tokens(cut) > limit:
                cut = cut[:-1]
            return cut, True
        budget = (limit - 1) * 2  # bytes, the inverse of count_tokens' estimate
        return text.encode("utf-8")[:budget].decode("utf-8", errors="ignore"), True

    # --- identity ---------------------------------------------------------------------
    @property
    def dimension(self) -> int:
        if self._dimension is None:
            with self._dimension_lock:
                if self._dimension is None:  # an unknown model: ask the server once
                    self.embed_batch([TextItem(id="<dimension probe>", text=PROBE_TEXT)], "query")
        assert self._dimension is not None
        return self._dimension

    def settings(self, role: Role) -> dict[str, Any]:
        # The role changes nothing for OpenAI models; the requested size does.
        return {"dimensions": self.requested_dimensions}

    # --- requests ---------------------------------------------------------------------
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                openai = _import_openai()
                if not self.api_key:
                    raise ProviderError(
                        "no OpenAI API key: set OPENAI_API_KEY (for a server without keys, "
                        "set it to any value)",
                        exit_code=2,
                    )
                self._client = openai.OpenAI(
                    api_key=self.api_key,
                    base_url=self.base_url,
                    max_retries=0,  # ours: backoff with jitter, Retry-After, bisection
                    timeout=self.timeout,
                )
            return self._client

    def _send(self, items: list[TextItem], role: Role) -> np.ndarray:
        texts = []
        for item in items:
            text = self.render(item)
            if not self.strict:
                text, cut = self.truncate(text)
                if cut:
                    self.counters.note("truncated", item.id)
            texts.append(text)
        options: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.requested_dimensions is not None:
            options["dimensions"] = self.requested_dimensions
        # The SDK's own POST (its auth, base URL, timeout and error classes), answered as
        # bytes and parsed here: `embeddings.create` walks every input through its parameter
        # transform (~2 ms of CPU a request of 100 texts) and its response models visit every
        # float in Python (~15 us each: minutes of CPU for one request of 2,048 x 1,536).
        content = self.client().post("/embeddings", body=options, cast_to=bytes)
        try:
            body = json.loads(content)
            data = body["data"]
            ordered = sorted(data, key=lambda d: d["index"])
            indices = [d["index"] for d in ordered]
            vectors = [d["embedding"] for d in ordered]
        except (ValueError, KeyError, TypeError):
            raise InvalidResponse("a body that is not an embeddings list") from None
        if indices != list(range(len(indices))):
            raise InvalidResponse(f"indices {indices[:5]}... are not 0..{len(items) - 1}")
        if any(isinstance(v, str) for v in vectors):
            raise InvalidResponse("base64 vectors where floats were asked for")
        array = self._check_vectors(vectors, items)
        self._learn_dimension(array.shape[1])
        return array

    def _learn_dimension(self, width: int) -> None:
        with self._dimension_lock:
            if self._dimension is None:
                self._dimension = width
            elif width != self._dimension:
                asked = (
                    f"--dimensions {self.requested_dimensions} was sent"
                    if self.requested_dimensions is not None
                    else "no --dimensions was sent"
                )
                raise UnusableResponse(
                    f"the server returned vectors of {width} dimensions where {self.model} "
                    f"gives {self._dimension} ({asked}); check --model, --dimensions and "
                    "--base-url"
                )

    def _classify(self, error: BaseException) -> Failure | None:
        openai = _import_openai()
        message = self.scrub(_openai_message(error))
        if isinstance(error, openai.APITimeoutError):
            return Failure("transient", "request timed out")
        if isinstance(error, openai.APIConnectionError):
            return Failure("transient", f"connection error: {message}")
        if isinstance(error, openai.APIStatusError):
            status = error.status_code
            retry_after = parse_retry_after(dict(error.response.headers))
            if status == 429 or status >= 500 or status == 408 or status == 409:
                return Failure("transient", f"HTTP {status}: {message}", retry_after)
            if status in (400, 413, 422):
                return Failure("bad_input", f"HTTP {status}: {message}")
            hint = " (check OPENAI_API_KEY)" if status in (401, 403) else ""
            return Failure("fatal", f"HTTP {status}: {message}{hint}")
        if isinstance(error, openai.APIResponseValidationError):
            return Failure("transient", f"invalid response: {message}")
        if isinstance(error, openai.OpenAIError):
            return Failure("fatal", message)
        return sdk_failure(error, self.scrub)


def _openai_message(error: BaseException) -> str:
    """The server's own error message when there is one (not the SDK's repr of the body)."""
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
    return str(getattr(error, "message", None) or error)
