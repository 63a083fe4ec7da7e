"""Bind the listening socket and run uvicorn until SIGTERM or Ctrl-C.

On SIGTERM uvicorn stops accepting connections, answers every request in flight, runs the
application's shutdown (the batcher drains), then re-raises the signal it caught; a no-op
handler installed here receives it, so the process ends with status 0.
"""

from __future__ import annotations

import copy
import signal
import socket
from typing import Any

from madapt_cli.errors import InputError


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` (0: any free port), or a one-line error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise InputError(f"--host {host}: {error.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise InputError(
            f"--host/--port: cannot listen on {host}:{port}: {error.strerror or error}"
        ) from None
    return sock


def _log_config(access_log: bool) -> dict[str, Any]:
    """uvicorn's logging, all on stderr (stdout is for results); no headers are logged."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    if not access_log:
        config["loggers"]["uvicorn.access"]["handlers"] = []
        config["loggers"]["uvicorn.access"]["propagate"] = False
    config["loggers"]["madapt"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def run(app: Any, sock: socket.socket, *, access_log: bool = True) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM/SIGINT; returns after a graceful shutdown."""
    import uvicorn

    config = uvicorn.Config(
        app,
        log_config=_log_config(access_log),
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=None,  # answer every request in flight, however long
    )
    server = uvicorn.Server(config)
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    if not server.started:
        raise InputError("the server did not start (see the log above)")
