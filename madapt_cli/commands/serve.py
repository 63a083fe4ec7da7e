"""`madapt serve`: the adaptor behind an OpenAI-compatible embeddings endpoint."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from madapt_cli import console
from madapt_cli.errors import InputError

DEFAULT_KEY_ENV = "MADAPT_SERVE_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _api_key(env: str | None) -> tuple[str | None, str]:
    """(the key, the variable it came from). ``--api-key-env`` named: the variable must be
    set; not named: ``MADAPT_SERVE_KEY`` is used when set, else no key is required."""
    name = env or DEFAULT_KEY_ENV
    value = os.environ.get(name)
    if value is not None and not value.strip():
        value = None
    if value is None and env is not None:
        raise InputError(f"--api-key-env {env}: the environment variable {env} is not set")
    return value, name


def _import_server() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise InputError(
            'madapt serve needs FastAPI and uvicorn: pip install "madapt[serve]"'
        ) from None


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        adaptor: Path = typer.Argument(..., help="An adaptor directory."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
        port: int = typer.Option(
            8000, "--port", min=0, max=65535, help="Port (0: any free port, printed)."
        ),
        api_key_env: str | None = typer.Option(
            None,
            "--api-key-env",
            help="Environment variable holding the API key clients must send "
            f"(default: {DEFAULT_KEY_ENV} if set; otherwise no key).",
        ),
        max_batch: int = typer.Option(
            256, "--max-batch", min=1, help="Most texts merged into one model batch."
        ),
        max_wait_ms: float = typer.Option(
            5.0, "--max-wait-ms", min=0.0, help="Longest wait for a batch to fill (ms)."
        ),
        max_queue: int | None = typer.Option(
            None,
            "--max-queue",
            min=1,
            help="Most texts waiting before requests get 429 (default: 32 x --max-batch).",
        ),
        access_log: bool = typer.Option(
            True, "--access-log/--no-access-log", help="Log each request line (stderr)."
        ),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (local models)."),
        base_url: str | None = typer.Option(None, "--base-url", help="API server (openai)."),
        project: str | None = typer.Option(None, "--project", help="Vertex: the project."),
        location: str | None = typer.Option(None, "--location", help="Vertex: the region."),
        timeout: float = typer.Option(60.0, "--timeout", min=0.001, help="API timeout (s)."),
        max_retries: int = typer.Option(10, "--max-retries", min=0, help="API retries."),
    ) -> None:
        """Serve the adaptor as an OpenAI-compatible embeddings endpoint: POST
        /v1/embeddings (model = the adaptor's name), GET /v1/models, GET /healthz. Texts
        go to the recorded upstream model, then the adaptor. SIGTERM finishes the requests
        in flight, then exits 0."""
        key, key_env = _api_key(api_key_env)
        _import_server()
        if not adaptor.is_dir():
            raise InputError(f"{adaptor}: no such adaptor directory")
        from madapt_cli.methods.adaptor import Adaptor
        from madapt_cli.pipelines.encode import Encoder, provider_for_adaptor
        from madapt_cli.serve.app import ServeOptions, create_app
        from madapt_cli.serve.runner import bind, run
        from madapt_cli.serve.upstream import Upstream

        loaded = Adaptor.load(adaptor)
        provider = provider_for_adaptor(
            loaded,
            options={
                "device": device,
                "batch_size": max_batch,
                "base_url": base_url,
                "project": project,
                "location": location,
                "timeout": timeout,
                "max_retries": max_retries,
            },
            on_warning=console.warn,
        )
        sock = bind(host, port)
        with Encoder(loaded, provider) as encoder:
            upstream = Upstream(encoder)
            upstream.warm_up()
            options = ServeOptions(
                model=loaded.name,
                api_key=key,
                max_batch=max_batch,
                max_wait=max_wait_ms / 1000,
                max_queue=max_queue or 32 * max_batch,
            )
            bound_host, bound_port = sock.getsockname()[:2]
            where = f"[{bound_host}]" if ":" in bound_host else bound_host
            auth = f"API key from ${key_env}" if key else "no API key"
            console.log(
                f"serving adaptor '{loaded.name}' ({upstream.description}, {loaded.dimension} "
                f"dims) at http://{where}:{bound_port}/v1 ({auth})"
            )
            if key is None and host not in LOOPBACK:
                console.warn(f"listening on {host} without an API key: set {DEFAULT_KEY_ENV}")
            run(create_app(upstream, options), sock, access_log=access_log)
