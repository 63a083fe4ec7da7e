"""Throughput of `madapt embed` with an API provider against a local server with fixed latency.

The server (tests/fake_servers.py, in its own process so it does not share our GIL) answers
every request after ``--latency`` seconds. With ``c`` requests in flight and ``b`` texts a
request, no client can beat ``bound = c * b / latency`` texts per second; the goal is >= 80% of
it, end to end (reading the source, planning, the real SDK, normalising, writing the store).

    python bench/api_embed.py --provider openai --texts 50000 --latency 0.2 --concurrency 8
    python bench/api_embed.py --provider vertex --texts 50000 --latency 0.2 --concurrency 8
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", choices=("openai", "vertex"), default="openai")
    parser.add_argument("--texts", type=int, default=50_000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--dimensions", type=int, default=64)
    parser.add_argument(
        "--batch", type=int, default=None, help="cap texts per request (default: the API's limit)"
    )
    parser.add_argument(
        "--mode",
        choices=("pipeline", "provider"),
        default="pipeline",
        help="pipeline: `madapt embed` end to end (file -> store); provider: embed_batch calls "
        "on a thread pool only (the SDK, retries and rate limiter, no file or store)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()

    from google.oauth2.credentials import Credentials

    from madapt_cli.pipelines.embed import plan_requests, run_embed
    from madapt_cli.providers.base import BatchLimits, TextItem
    from madapt_cli.providers.openai import OpenAIProvider
    from madapt_cli.providers.vertex import VertexProvider
    from madapt_cli.store.base import open_store

    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(
        target=_serve, args=(args.provider, args.latency, child), daemon=True
    )
    server.start()
    port = parent.recv()
    base = f"http://127.0.0.1:{port}"
    try:
        with tempfile.TemporaryDirectory() as scratch:
            source = Path(scratch) / "texts.jsonl"
            with source.open("w", encoding="utf-8") as handle:
                for i in range(args.texts):
                    text = f"passage {i}: a short benchmark text about topic {i % 997}"
                    handle.write(json.dumps({"id": f"t{i}", "text": text}) + "\n")
            if args.provider == "openai":
                provider = OpenAIProvider(
                    "text-embedding-3-small",
                    dimensions=args.dimensions,
                    base_url=base + "/v1",
                    api_key=KEY,
                    concurrency=args.concurrency,
                )
            else:
                provider = VertexProvider(
                    "text-embedding-005",
                    dimensions=args.dimensions,
                    project=PROJECT,
                    location=LOCATION,
                    base_url=base,
                    credentials=Credentials(token=TOKEN),
                    concurrency=args.concurrency,
                )
            if args.batch is not None:
                limits = provider.limits
                capped = BatchLimits(
                    min(args.batch, limits.max_inputs),
                    limits.max_total_tokens,
                    limits.max_input_tokens,
                )
                type(provider).limits = property(lambda self: capped)  # type: ignore[method-assign]
            provider.client()  # SDK import and client set-up are not what we measure
            load_before = os.getloadavg()[0]
            cpu_started = time.process_time()
            started = time.perf_counter()
            if args.mode == "pipeline":
                run_embed(source, Path(scratch) / "store", provider)
                stored = open_store(Path(scratch) / "store").num_rows("corpus")
                parts = len(list((Path(scratch) / "store" / "corpus").glob("*.parquet")))
            else:
                items = [
                    TextItem(f"t{i}", f"passage {i}: a short benchmark text about topic {i % 997}")
                    for i in range(args.texts)
                ]
                started = time.perf_counter()
                with ThreadPoolExecutor(args.concurrency) as pool:
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
    finally:
        server.terminate()
        server.join(timeout=5)

    stats = provider.stats()
    requests = stats["requests"]
    per_request = args.texts / requests
    bound = args.concurrency * per_request / args.latency
    throughput = args.texts / seconds
    result = {
        "provider": args.provider,
        "texts": args.texts,
        "stored": stored,
        "store_files": parts,  # Parquet files the pipeline wrote (FlushPolicy coalesces)
        "latency_s": args.latency,
        "concurrency": args.concurrency,
        "requests": requests,
        "retries": stats.get("retries", 0),
        "texts_per_request": round(per_request, 1),
        "bound_texts_per_s": round(bound, 1),
        "texts_per_s": round(throughput, 1),
        "fraction_of_bound": round(throughput / bound, 3),
        "seconds": round(seconds, 2),
        "mode": args.mode,
        "client_cpu_s": round(client_cpu, 2),
        "load_average_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{multiprocessing.cpu_count()} CPUs, Python {platform.python_version()}",
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
