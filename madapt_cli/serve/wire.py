"""OpenAI's embeddings wire format, without a web framework: parse a request body, build
the answer, and every error in OpenAI's ``{"error": {"message", "type", "param", "code"}}``
shape (https://platform.openai.com/docs/api-reference/embeddings)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: OpenAI's per-request limits, which clients already respect
MAX_INPUTS = 2048
MAX_REQUEST_TOKENS = 300_000
ROLES = ("query", "document")


class WireError(Exception):
    """An answer other than 200, in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> WireError:
    return WireError(400, message, code=code, param=param)


@dataclass(frozen=True)
class EmbeddingRequest:
    texts: list[str]
    model: str
    dimensions: int
    encoding_format: str  # "float" or "base64"
    role: str  # "query" or "document" (a madapt extension; default query)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_texts(value: Any) -> list[str]:
    """``input``: a string or a list of strings; token arrays and anything else are a 400."""
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, list):
        raise bad_request("'input' must be a string or an array of strings", "input")
    if not value:
        raise bad_request("'input' is empty: send at least one string", "input")
    if len(value) > MAX_INPUTS:
        raise bad_request(
            f"'input' has {len(value)} items; at most {MAX_INPUTS} per request", "input"
        )
    if all(_is_int(v) for v in value) or any(isinstance(v, list) for v in value):
        raise bad_request(
            "token arrays are not supported: this server embeds text, send 'input' as strings",
            "input",
            code="unsupported_input",
        )
    for index, text in enumerate(value):
        if not isinstance(text, str):
            raise bad_request(f"'input[{index}]' is a {type(text).__name__}, not a string", "input")
        if not text.strip():
            raise bad_request(f"'input[{index}]' is empty", "input")
    return value


def parse_request(raw: bytes, model: str, dimension: int) -> EmbeddingRequest:
    """The request in ``raw`` for the served ``model`` (``dimension``: its largest size)."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise bad_request("the body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object", code="invalid_json")
    asked = body.get("model")
    if not isinstance(asked, str) or not asked:
        raise bad_request("'model' is required: the name of the served adaptor", "model")
    if asked != model:
        raise WireError(
            404,
            f"The model `{asked}` does not exist: this server serves `{model}`",
            code="model_not_found",
            param="model",
        )
    if "input" not in body:
        raise bad_request("'input' is required", "input")
    texts = parse_texts(body["input"])
    dims = body.get("dimensions")
    if dims is None:
        dims = dimension
    elif not _is_int(dims) or not 1 <= dims <= dimension:
        raise bad_request(
            f"'dimensions' must be an integer from 1 to {dimension} (the adaptor's "
            f"dimension), not {dims!r}",
            "dimensions",
        )
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise bad_request(
            f"'encoding_format' must be 'float' or 'base64', not {encoding!r}", "encoding_format"
        )
    role = body.get("role") or "query"
    if role not in ROLES:
        raise bad_request(f"'role' must be 'query' or 'document', not {role!r}", "role")
    return EmbeddingRequest(texts, asked, dims, encoding, role)


def check_tokens(counts: Sequence[int]) -> int:
    """The request's total tokens, or a 400 past OpenAI's per-request limit."""
    total = int(sum(counts))
    if total > MAX_REQUEST_TOKENS:
        raise bad_request(
            f"the batch is too long: {total} tokens, at most {MAX_REQUEST_TOKENS} per "
            "request; split it",
            "input",
            code="too_many_tokens",
        )
    return total


def encode_vector(row: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":  # as OpenAI: the little-endian float32 bytes, base64
        return base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode("ascii")
    return row.tolist()


def embeddings_body(vectors: np.ndarray, request: EmbeddingRequest, tokens: int) -> dict[str, Any]:
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": encode_vector(row, request.encoding_format),
        }
        for i, row in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def models_body(model: str, created: float | None = None) -> dict[str, Any]:
    stamp = int(created if created is not None else time.time())
    return {
        "object": "list",
        "data": [{"id": model, "object": "model", "created": stamp, "owned_by": "madapt"}],
    }
