"""Local stand-ins for the OpenAI and Vertex AI embedding endpoints (127.0.0.1, ephemeral port).

They validate requests the way the real services do (auth header, model, input types, the
per-request limits), return deterministic vectors derived from each text (so a test can check
every row got its own vector), log what they were asked for, and inject faults on demand:

    server.faults.extend(["429", "500", "hang", "malformed", "wrong_count"])
    server.poisoned.add("text the server rejects with a 400")
    server.wrong_width = 256          # every answer: vectors of this size, whatever was asked
    server.bad_values["some text"] = float("nan")  # that text's vector: this value, or zeros

Faults are consumed one per request, in order. Tokens are counted as ``ceil(utf8_bytes / 3)``
(title included), which the clients' estimates never undercount.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

OPENAI_LIMITS = {"max_inputs": 2048, "max_total_tokens": 300_000, "max_input_tokens": 8192}
VERTEX_TEXT_LIMITS = {"max_inputs": 250, "max_total_tokens": 20_000, "max_input_tokens": 2048}
VERTEX_DIMENSIONS = {
    "text-embedding-005": 768,
    "text-embedding-004": 768,
    "text-multilingual-embedding-002": 768,
    "textembedding-gecko@003": 768,
    "gemini-embedding-001": 3072,
}
OPENAI_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072}


def count_tokens(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / 3)


def vector_for(text: str, dimension: int, salt: str = "") -> np.ndarray:
    """A unit vector seeded by sha256(salt + text): each text has its own, reproducibly."""
    seed = int.from_bytes(hashlib.sha256((salt + text).encode("utf-8")).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dimension).astype(np.float32)
    return vector / np.linalg.norm(vector)


@dataclass
class Logged:
    path: str
    texts: list[str]
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    started: float
    fault: str | None = None


@dataclass
class ServerState:
    faults: list[str] = field(default_factory=list)
    poisoned: set[str] = field(default_factory=set)
    wrong_width: int | None = None
    bad_values: dict[str, float] = field(default_factory=dict)
    latency: float = 0.0
    hang_seconds: float = 3.0
    retry_after: str = "0"
    retry_after_ms: str | None = "20"
    log: list[Logged] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    max_in_flight: int = 0
    keep_log: bool = True
    tokens_issued: int = 0

    def next_fault(self) -> str | None:
        with self.lock:
            return self.faults.pop(0) if self.faults else None

    def texts_requested(self) -> list[str]:
        with self.lock:
            return [t for entry in self.log for t in entry.texts]

    def texts_served(self) -> list[str]:
        """Texts of requests answered with good vectors (a 200 without an injected fault)."""
        with self.lock:
            return [
                t
                for entry in self.log
                if entry.status == 200 and entry.fault is None
                for t in entry.texts
            ]

    def requests(self) -> list[Logged]:
        with self.lock:
            return list(self.log)


class _Reject(Exception):
    def __init__(self, status: int, message: str, reason: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        pass

    def do_POST(self) -> None:
        state = self.server.state
        started = time.monotonic()
        with state.lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            self._handle(state, started)
        finally:
            with state.lock:
                state.in_flight -= 1

    def _handle(self, state: ServerState, started: float) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        texts: list[str] = []
        fault: str | None = None
        body: dict[str, Any] = {}
        reply: tuple[int, bytes, dict[str, str]] | None
        try:
            if self.path == "/token":  # OAuth 2.0 token endpoint (service-account JWT grant)
                reply = self.server.token_reply(raw)
                self._send(*reply)
                return
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                raise _Reject(400, "body is not JSON") from None
            texts = self.server.extract_texts(self.path, body)
            if state.latency:
                time.sleep(state.latency)
            fault = state.next_fault()
            if fault == "hang":
                time.sleep(state.hang_seconds)
                reply = None  # the client gave up; nothing is sent back
            elif fault == "429":
                extra = {"Retry-After": state.retry_after}
                if state.retry_after_ms is not None:
                    extra["retry-after-ms"] = state.retry_after_ms
                reply = self.server.error_reply(429, "Rate limit reached", "RESOURCE_EXHAUSTED")
                reply[2].update(extra)
            elif fault == "500":
                reply = self.server.error_reply(500, "internal error", "INTERNAL")
            elif fault == "503":
                reply = self.server.error_reply(503, "overloaded", "UNAVAILABLE")
            else:
                self.server.check_auth(headers)
                payload = self.server.respond(self.path, body, texts)
                if fault == "malformed":
                    reply = (200, b'{"data": [{"embedding": [0.1, 0.2', {})
                else:
                    if fault == "wrong_count":
                        payload = self.server.drop_one(payload)
                    reply = (200, json.dumps(payload).encode(), {})
        except _Reject as rejection:
            reply = self.server.error_reply(rejection.status, rejection.message, rejection.reason)
        # log before answering, so a client that got its answer finds its request logged
        if state.keep_log:
            status = 599 if reply is None else reply[0]
            with state.lock:
                state.log.append(Logged(self.path, texts, status, body, headers, started, fault))
        if reply is None:
            self.close_connection = True
            return
        self._send(*reply)

    def _send(self, status: int, data: bytes, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: ServerState, api_key: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state
        self.api_key = api_key

    def token_reply(self, raw: bytes) -> tuple[int, bytes, dict]:
        form = urllib.parse.parse_qs(raw.decode())
        grant = form.get("grant_type", [""])[0]
        if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer" or not form.get("assertion"):
            raise _Reject(400, f"unsupported grant {grant!r}")
        with self.state.lock:
            self.state.tokens_issued += 1
        body = {"access_token": self.api_key, "expires_in": 3600, "token_type": "Bearer"}
        return 200, json.dumps(body).encode(), {}

    def values_for(self, text: str, width: int, salt: str) -> list[float]:
        """The vector of ``text``, spoilt on demand (``wrong_width``, ``bad_values``)."""
        vector = vector_for(text, self.state.wrong_width or width, salt)
        bad = self.state.bad_values.get(text)
        if bad is not None:
            vector = np.zeros_like(vector) if bad == 0 else vector
            vector[1] = bad
        return vector.tolist()

    # overridden per API
    def extract_texts(self, path: str, body: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def check_auth(self, headers: dict[str, str]) -> None:
        received = headers.get("authorization")
        if received != f"Bearer {self.api_key}":
            # like the real services, echo what was sent: clients must scrub it
            raise _Reject(401, f"Incorrect API key provided: {received}", "UNAUTHENTICATED")

    def respond(self, path: str, body: dict[str, Any], texts: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def drop_one(self, payload: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def error_reply(self, status: int, message: str, reason: str) -> tuple[int, bytes, dict]:
        raise NotImplementedError


class FakeOpenAI(_Server):
    """``POST /v1/embeddings`` as documented in the OpenAI API reference."""

    def extract_texts(self, path: str, body: dict[str, Any]) -> list[str]:
        if path.rstrip("/") != "/v1/embeddings":
            raise _Reject(404, f"no route {path}")
        value = body.get("input")
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _Reject(400, "'input' must be a string or an array of strings")
        return value

    def respond(self, path: str, body: dict[str, Any], texts: list[str]) -> dict[str, Any]:
        model = body.get("model")
        if model not in OPENAI_DIMENSIONS:
            raise _Reject(404, f"The model `{model}` does not exist")
        if body.get("encoding_format") not in (None, "float"):
            raise _Reject(400, "this server only speaks encoding_format=float")
        if not texts or len(texts) > OPENAI_LIMITS["max_inputs"]:
            raise _Reject(400, f"'input' must have 1 to 2048 items, not {len(texts)}")
        tokens = [count_tokens(t) for t in texts]
        for text, n in zip(texts, tokens, strict=True):
            if not text:
                raise _Reject(400, "'input' cannot contain an empty string")
            if n > OPENAI_LIMITS["max_input_tokens"]:
                raise _Reject(400, f"This model's maximum context length is 8192 tokens, got {n}")
            if text in self.state.poisoned:
                raise _Reject(400, "Invalid input: content rejected")
        if sum(tokens) > OPENAI_LIMITS["max_total_tokens"]:
            raise _Reject(400, f"Requested {sum(tokens)} tokens, max 300000 tokens per request")
        width = OPENAI_DIMENSIONS[model]
        dimensions = body.get("dimensions")
        if dimensions is not None:
            if not isinstance(dimensions, int) or not 1 <= dimensions <= width:
                raise _Reject(400, f"invalid 'dimensions' {dimensions!r}")
            width = dimensions
        data = [
            {"object": "embedding", "index": i, "embedding": self.values_for(t, width, model)}
            for i, t in enumerate(texts)
        ]
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": sum(tokens), "total_tokens": sum(tokens)},
        }

    def drop_one(self, payload: dict[str, Any]) -> dict[str, Any]:
        payload["data"] = payload["data"][:-1] if len(payload["data"]) > 1 else []
        return payload

    def error_reply(self, status: int, message: str, reason: str) -> tuple[int, bytes, dict]:
        body = {"error": {"message": message, "type": reason.lower(), "param": None, "code": None}}
        return status, json.dumps(body).encode(), {}


_VERTEX_ROUTE = re.compile(
    r"^/v1(?:beta1)?/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/publishers/google/models/(?P<model>[^/:]+):(?P<method>predict|embedContent|batchEmbedContents)$"
)


class FakeVertex(_Server):
    """Vertex AI: ``…/publishers/google/models/{model}:predict`` (text-embedding models:
    ``instances[{content, task_type, title}]``, ``parameters{autoTruncate,
    outputDimensionality}``) and ``:embedContent`` / ``:batchEmbedContents`` (Gemini)."""

    def __init__(self, state: ServerState, api_key: str, project: str, location: str) -> None:
        super().__init__(state, api_key)
        self.project = project
        self.location = location

    def _route(self, path: str) -> re.Match[str]:
        match = _VERTEX_ROUTE.match(path.split("?")[0])
        if not match:
            raise _Reject(404, f"no route {path}", "NOT_FOUND")
        if match["project"] != self.project or match["location"] != self.location:
            raise _Reject(403, "wrong project or location", "PERMISSION_DENIED")
        if match["model"] not in VERTEX_DIMENSIONS:
            raise _Reject(404, f"Publisher model {match['model']} not found", "NOT_FOUND")
        return match

    def extract_texts(self, path: str, body: dict[str, Any]) -> list[str]:
        match = self._route(path)
        if match["method"] == "predict":
            instances = body.get("instances")
            if not isinstance(instances, list):
                raise _Reject(400, "instances must be a list")
            texts = []
            for instance in instances:
                if not isinstance(instance, dict) or not isinstance(instance.get("content"), str):
                    raise _Reject(400, "each instance needs a string content")
                texts.append(instance["content"])
            return texts
        requests = [body] if match["method"] == "embedContent" else body.get("requests")
        if not isinstance(requests, list):
            raise _Reject(400, "requests must be a list")
        texts = []
        for request in requests:
            parts = (request.get("content") or {}).get("parts") or []
            if len(parts) != 1 or not isinstance(parts[0].get("text"), str):
                raise _Reject(400, "content must have one text part")
            texts.append(parts[0]["text"])
        return texts

    def _embed(
        self,
        model: str,
        text: str,
        title: str | None,
        task_type: str | None,
        dimensions: int | None,
        auto_truncate: bool,
    ) -> tuple[list[float], int, bool]:
        if text in self.state.poisoned:
            raise _Reject(400, "The input contains content that cannot be processed")
        if title is not None and task_type != "RETRIEVAL_DOCUMENT":
            raise _Reject(400, "title is only valid with task_type RETRIEVAL_DOCUMENT")
        full = text if title is None else f"{title} {text}"
        tokens = count_tokens(full)
        truncated = tokens > VERTEX_TEXT_LIMITS["max_input_tokens"]
        if truncated and not auto_truncate:
            raise _Reject(400, f"Input of {tokens} tokens is longer than the 2048 limit")
        width = VERTEX_DIMENSIONS[model]
        if dimensions is not None:
            if not isinstance(dimensions, int) or not 1 <= dimensions <= width:
                raise _Reject(400, f"invalid outputDimensionality {dimensions!r}")
            width = dimensions
        # the vector depends on everything that should change it
        salt = f"{model}|{task_type}|{title}|"
        values = self.values_for(full[: 3 * 2048] if truncated else text, width, salt)
        return values, min(tokens, 2048), truncated

    def respond(self, path: str, body: dict[str, Any], texts: list[str]) -> dict[str, Any]:
        match = self._route(path)
        model = match["model"]
        if match["method"] == "predict":
            if model.startswith("gemini"):
                raise _Reject(400, f"{model} is served by embedContent, not predict")
            instances = body["instances"]
            if not instances or len(instances) > VERTEX_TEXT_LIMITS["max_inputs"]:
                raise _Reject(400, f"1 to 250 instances per request, not {len(instances)}")
            parameters = body.get("parameters") or {}
            auto_truncate = parameters.get("autoTruncate", True)
            dimensions = parameters.get("outputDimensionality")
            predictions, total = [], 0
            for instance in instances:
                values, tokens, truncated = self._embed(
                    model,
                    instance["content"],
                    instance.get("title"),
                    instance.get("task_type"),
                    dimensions,
                    auto_truncate,
                )
                total += tokens
                predictions.append(
                    {
                        "embeddings": {
                            "values": values,
                            "statistics": {"truncated": truncated, "token_count": tokens},
                        }
                    }
                )
            if total > VERTEX_TEXT_LIMITS["max_total_tokens"]:
                raise _Reject(400, f"{total} tokens in a request, the limit is 20000")
            return {"predictions": predictions, "metadata": {"billableCharacterCount": total}}
        requests = [body] if match["method"] == "embedContent" else body["requests"]
        if match["method"] == "batchEmbedContents" and len(requests) > 250:
            raise _Reject(400, "at most 250 requests")
        embeddings = []
        for request in requests:
            config = request.get("embedContentConfig") or {}
            values, tokens, truncated = self._embed(
                model,
                request["content"]["parts"][0]["text"],
                config.get("title"),
                config.get("taskType"),
                config.get("outputDimensionality"),
                config.get("autoTruncate", True),
            )
            embeddings.append({"values": values})
        if match["method"] == "embedContent":
            return {
                "embedding": embeddings[0],
                "usageMetadata": {"promptTokenCount": tokens},
                "truncated": truncated,
            }
        return {"embeddings": embeddings}

    def drop_one(self, payload: dict[str, Any]) -> dict[str, Any]:
        if "predictions" in payload:
            payload["predictions"] = payload["predictions"][:-1]
        elif "embeddings" in payload:
            payload["embeddings"] = payload["embeddings"][:-1]
        else:
            payload["embedding"] = {"values": []}
        return payload

    def error_reply(self, status: int, message: str, reason: str) -> tuple[int, bytes, dict]:
        body = {"error": {"code": status, "message": message, "status": reason}}
        return status, json.dumps(body).encode(), {}


@contextmanager
def serve(server: _Server) -> Iterator[_Server]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def write_service_account(path: Path, token_uri: str) -> Path:
    """A service-account key file whose token endpoint is ``token_uri`` (for ADC in tests)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "my-project",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": "madapt-test@my-project.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(info), encoding="utf-8")
    return path


def url(server: _Server) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"
