"""Throughput of `madapt embed` with an API provider against a local server with fixed latency.

The server (tests/fake_servers.py, in its own process so it does not share our GIL) answers
every request after ``--latency`` seconds. With ``c`` requests in flight and ``b`` texts a
request, no client can beat ``bound = c * b / latency`` texts per second; the goal is >= 80% of
it, end to end (reading the source, planning, the real SDK, normalising, writing the store).

    python bench/api_embed.py --provider all --paths all --concurrency 4,8 --batch 100 \
        --texts 50000 --latency 0.2 --repeats 2

runs openai, vertex through the client's HTTP layer (``direct``, the default) and vertex
through ``models.embed_content`` (``sdk``, the path before it) side by side at 4 and 8
requests in flight, in rounds whose order rotates so that machine noise hits each alike.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

KEY = "sk-bench-key-0123456789"
TOKEN = "ya29.bench-token"
PROJECT, LOCATION = "bench-project", "us-central1"


def _serve(kind: str, latency: float, connection) -> None:  # runs in the server process
    from fake_servers import FakeOpenAI, FakeVertex, ServerState

    state = ServerState(latency=latency, keep_log=False)
    server = (
        FakeOpenAI(state, KEY) if kind == "openai" else FakeVertex(state, TOKEN, PROJECT, LOCATION)
    )
    connection.send(server.server_address[1])
    server.serve_forever(poll_interval=0.05)


def start_server(kind: str, latency: float) -> tuple[multiprocessing.Process, str]:
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_serve, args=(kind, latency, child), daemon=True)
    server.start()
    return server, f"http://127.0.0.1:{parent.recv()}"


def make_provider(kind: str, path: str, concurrency: int, args: argparse.Namespace, base: str):
    """``path``: vertex ``direct`` (the client's HTTP layer, the default) or ``sdk``
    (``models.embed_content``, the path before it); openai has one (``post``)."""
    from google.oauth2.credentials import Credentials

    from madapt_cli.providers.base import BatchLimits
    from madapt_cli.providers.openai import OpenAIProvider
    from madapt_cli.providers.vertex import VertexProvider

    if kind == "openai":
        provider = OpenAIProvider(
            "text-embedding-3-small",
            dimensions=args.dimensions,
            base_url=base + "/v1",
            api_key=KEY,
            concurrency=concurrency,
        )
    else:
        provider = VertexProvider(
            "text-embedding-005",
            dimensions=args.dimensions,
            project=PROJECT,
            location=LOCATION,
            base_url=base,
            credentials=Credentials(token=TOKEN),
            concurrency=concurrency,
            direct=path == "direct",
        )
    if args.batch is not None:
        limits = provider.limits
        capped = BatchLimits(
            min(args.batch, limits.max_inputs), limits.max_total_tokens, limits.max_input_tokens
        )
        provider.__class__ = type(  # a benchmark-only cap, on this instance alone
            type(provider).__name__, (type(provider),), {"limits": property(lambda _: capped)}
        )
    provider.client()  # SDK import and client set-up are not what we measure
    return provider


def run_once(provider: Any, args: argparse.Namespace, scratch: Path, source: Path) -> dict:
    from madapt_cli.pipelines.embed import plan_requests, run_embed
    from madapt_cli.providers.base import TextItem
    from madapt_cli.store.base import open_store

    load_before = os.getloadavg()[0]
    cpu_started = time.process_time()
    started = time.perf_counter()
    if args.mode == "pipeline":
        run_embed(source, scratch / "store", provider)
        stored = open_store(scratch / "store").num_rows("corpus")
        parts = len(list((scratch / "store" / "corpus").glob("*.parquet")))
        shutil.rmtree(scratch / "store")
    else:
        items = [TextItem(f"t{i}", text_of(i)) for i in range(args.texts)]
        started = time.perf_counter()
        with ThreadPoolExecutor(provider.concurrency) as pool:
            results = list(
                pool.map(
                    lambda batch: provider.embed_batch(batch, "document"),
                    plan_requests(items, provider),
                )
            )
        stored = sum(len(r) for r in results)
        parts = None
    seconds = time.perf_counter() - started
    client_cpu = time.process_time() - cpu_started
    requests = provider.stats()["requests"]
    bound = provider.concurrency * (args.texts / requests) / args.latency
    return {
        "stored": stored,
        "store_files": parts,  # Parquet files the pipeline wrote (FlushPolicy coalesces)
        "requests": requests,
        "retries": provider.stats().get("retries", 0),
        "texts_per_request": round(args.texts / requests, 1),
        "bound_texts_per_s": round(bound, 1),
        "texts_per_s": round(args.texts / seconds, 1),
        "fraction_of_bound": round(args.texts / seconds / bound, 3),
        "seconds": round(seconds, 2),
        "client_cpu_s": round(client_cpu, 2),
        "load_average_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }


def text_of(i: int) -> str:
    return f"passage {i}: a short benchmark text about topic {i % 997}"


PATHS = {"openai": ("post",), "vertex": ("direct", "sdk")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", choices=("openai", "vertex", "all"), default="openai")
    parser.add_argument("--texts", type=int, default=50_000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", default="8", help="one or more, comma-separated")
    parser.add_argument("--dimensions", type=int, default=64)
    parser.add_argument(
        "--batch", type=int, default=None, help="cap texts per request (default: the API's limit)"
    )
    parser.add_argument(
        "--paths",
        default="direct",
        help="vertex request paths, comma-separated: direct (default), sdk (the old "
        "models.embed_content path); 'all' runs both side by side",
    )
    parser.add_argument("--repeats", type=int, default=1, help="rounds, alternating the order")
    parser.add_argument(
        "--mode",
        choices=("pipeline", "provider"),
        default="pipeline",
        help="pipeline: `madapt embed` end to end (file -> store); provider: embed_batch calls "
        "on a thread pool only (the SDK, retries and rate limiter, no file or store)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    kinds = ("openai", "vertex") if args.provider == "all" else (args.provider,)
    vertex_paths = PATHS["vertex"] if args.paths == "all" else tuple(args.paths.split(","))
    runs = [
        (kind, path, int(c))
        for kind in kinds
        for path in (vertex_paths if kind == "vertex" else PATHS[kind])
        for c in args.concurrency.split(",")
    ]
    servers = {kind: start_server(kind, args.latency) for kind in kinds}
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            source = Path(scratch) / "texts.jsonl"
            with source.open("w", encoding="utf-8") as handle:
                for i in range(args.texts):
                    handle.write(json.dumps({"id": f"t{i}", "text": text_of(i)}) + "\n")
            for repeat in range(args.repeats):
                shift = repeat % len(runs)
                for kind, path, concurrency in runs[shift:] + runs[:shift]:
                    provider = make_provider(kind, path, concurrency, args, servers[kind][1])
                    row = {"provider": kind, "path": path, "concurrency": concurrency}
                    row.update(run_once(provider, args, Path(scratch), source))
                    provider.close()
                    results.append({"round": repeat + 1, **row})
                    if not args.json:
                        print(
                            f"round {repeat + 1} {kind:6} {path:6} x{concurrency}: "
                            f"{row['fraction_of_bound']:.1%} of {row['bound_texts_per_s']:.0f}"
                            f"/s in {row['seconds']} s (client CPU {row['client_cpu_s']} s, "
                            f"load {row['load_average_1m']})",
                            flush=True,
                        )
    finally:
        for server, _ in servers.values():
            server.terminate()
            server.join(timeout=5)
    summary = {
        "texts": args.texts,
        "latency_s": args.latency,
        "mode": args.mode,
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{multiprocessing.cpu_count()} CPUs, Python {platform.python_version()}",
        "best_fraction_of_bound": {
            f"{kind} {path} x{c}": max(
                r["fraction_of_bound"]
                for r in results
                if (r["provider"], r["path"], r["concurrency"]) == (kind, path, c)
            )
            for kind, path, c in runs
        },
    }
    if args.json:
        print(json.dumps({**summary, "runs": results}, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
