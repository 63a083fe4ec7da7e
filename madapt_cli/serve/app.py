"""The FastAPI application: ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /healthz``.

Every answer other than 200 is in OpenAI's error shape (:mod:`.wire`): 400 bad input, 401
missing or wrong key (compared in constant time; the key is never logged or echoed), 404 an
unknown model or route, 429 the queue is full, 503 the upstream is failing.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from madapt_cli.errors import MadaptError
from madapt_cli.serve.batcher import MicroBatcher, QueueFull
from madapt_cli.serve.upstream import Upstream
from madapt_cli.serve.wire import (
    WireError,
    check_tokens,
    embeddings_body,
    error_body,
    models_body,
    parse_request,
)

logger = logging.getLogger("madapt.serve")

#: texts shorter than this (characters, in all) are counted on the event loop; longer
#: requests in a thread, so one huge request does not stall the others
_INLINE_COUNT_CHARS = 20_000


@dataclass(frozen=True)
class ServeOptions:
    model: str  # the name clients ask for: the adaptor's
    api_key: str | None = None
    max_batch: int = 256
    max_wait: float = 0.005  # seconds
    max_queue: int = 8192  # texts


def _json(payload: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(payload, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
    )


def _check_key(request: Request, key: str | None) -> None:
    if key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise WireError(
            401,
            "missing API key: send it as 'Authorization: Bearer KEY'",
            code="invalid_api_key",
        )
    if not hmac.compare_digest(given.strip().encode("utf-8"), key.encode("utf-8")):
        raise WireError(401, "incorrect API key", code="invalid_api_key")


async def _embed(
    raw: bytes, upstream: Upstream, batcher: MicroBatcher, model: str, dimension: int
) -> Response:
    """One ``POST /v1/embeddings``: parse, count, queue, wait for the batch, answer."""
    parsed = parse_request(raw, model, dimension)
    if sum(len(text) for text in parsed.texts) < _INLINE_COUNT_CHARS:
        counts = upstream.count_tokens(parsed.texts)
    else:
        counts = await asyncio.to_thread(upstream.count_tokens, parsed.texts)
    tokens = check_tokens(counts)
    try:
        future = batcher.submit(parsed.texts, parsed.role, parsed.dimensions)
    except QueueFull as error:
        raise WireError(429, str(error), "rate_limit_error", code="queue_full") from None
    try:
        vectors = await asyncio.wrap_future(future)
    except MadaptError as error:  # already one line, secrets scrubbed by the provider
        logger.warning("upstream failed: %s", error)
        raise WireError(
            503, f"the upstream failed: {error}", "server_error", code="upstream_unavailable"
        ) from None
    return _json(embeddings_body(vectors, parsed, tokens))


def _add_error_handlers(app: FastAPI) -> None:
    """Every answer other than 200 in OpenAI's error shape, unknown routes included."""

    @app.exception_handler(WireError)
    async def wire_error(_: Request, error: WireError) -> Response:
        return _json(error.body(), error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> Response:
        kind = "not_found" if error.status_code == 404 else "invalid_request_error"
        return _json(error_body(str(error.detail), kind), error.status_code)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, error: Exception) -> Response:
        logger.error("internal error: %s: %s", type(error).__name__, error)
        return _json(error_body("internal server error", "server_error", "internal_error"), 500)


def create_app(upstream: Upstream, options: ServeOptions) -> FastAPI:
    """The application serving ``upstream`` under the model name ``options.model``."""
    batcher: MicroBatcher | None = None
    created = time.time()
    dimension = upstream.encoder.dimension

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        nonlocal batcher
        batcher = MicroBatcher(
            upstream.encode,
            max_batch=options.max_batch,
            max_wait=options.max_wait,
            max_queue=options.max_queue,
            workers=upstream.workers,
        )
        app.state.batcher = batcher
        try:
            yield
        finally:  # uvicorn has answered every request in flight by now
            await asyncio.to_thread(batcher.close)

    app = FastAPI(
        title="madapt serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )

    _add_error_handlers(app)

    @app.get("/healthz")
    async def healthz() -> Response:
        assert batcher is not None
        return _json(
            {
                "status": "ok",
                "model": options.model,
                "dimension": dimension,
                "upstream": upstream.description,
                "queued": batcher.queued,
                "stats": batcher.stats.as_dict(),
            }
        )

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        _check_key(request, options.api_key)
        return _json(models_body(options.model, created))

    @app.get("/v1/models/{name}")
    async def model(name: str, request: Request) -> Response:
        _check_key(request, options.api_key)
        if name != options.model:
            raise WireError(404, f"The model `{name}` does not exist", code="model_not_found")
        return _json(models_body(options.model, created)["data"][0])

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        _check_key(request, options.api_key)
        assert batcher is not None
        return await _embed(await request.body(), upstream, batcher, options.model, dimension)

    return app
