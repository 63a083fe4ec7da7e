"""Where the time of one exact prefix search goes: torch profiler over `search_topk_prefixes`.

Synthetic unit vectors (query i a noisy copy of document i), one method's search at four
prefix sizes, timed twice (the first includes warm-up), then profiled once; prints the CUDA
(or CPU) kernels by total time.

    python bench/search_profile.py --docs 1000000 --queries 10000 --dim 768 --device cuda
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from madapt_cli.retrieval.search import search_topk_prefixes
from madapt_cli.util.device import resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--dims", default="64,128,256,512")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    sizes = [int(d) for d in args.dims.split(",")]

    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((args.docs, args.dim), dtype=np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    queries = corpus[: args.queries] + 0.05 * rng.standard_normal(
        (args.queries, args.dim), dtype=np.float32
    )
    corpus_tensor = torch.from_numpy(corpus).to(device)
    query_tensor = torch.from_numpy(queries).to(device)

    def search() -> None:
        search_topk_prefixes(query_tensor, corpus_tensor, sizes, 100, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for run in ("first (with warm-up)", "second"):
        started = time.perf_counter()
        search()
        print(f"search, {len(sizes)} sizes, {run}: {time.perf_counter() - started:.3f} s")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        search()
    sort_by = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(profiler.key_averages().table(sort_by=sort_by, row_limit=15))


if __name__ == "__main__":
    main()
