"""Binary Hamming search against float32 search at the same dimension, same machine, one run.

Random unit vectors (``--docs`` x ``--dim``; the speed of an exact search does not depend on
the data), their sign bits packed (``--dim`` / 8 bytes per vector), and ``--queries`` queries.
Times, each the best of ``--repeat`` rounds (the searches take turns within a round):

* ``float32``: madapt's own exact search (:func:`madapt_cli.retrieval.search.search_topk`,
  torch) of the float32 vectors, top ``--k``;
* ``numpy``: :func:`madapt_cli.retrieval.quantize.hamming_topk` with numpy's bitwise_count;
* ``faiss``: the same with faiss-cpu's flat binary index (when installed; the index build,
  a copy of the codes, is timed apart and included in the search figure).

Both Hamming backends are checked to return the same top k (ties by index). Goal (issue 18):
binary Hamming over 1,000,000 x 256 bits at least 8x faster than float32 at dimension 256.

    OMP_NUM_THREADS=1 python bench/binary_search.py --docs 1000000 --dim 256 --queries 300
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime

import numpy as np
import torch

from madapt_cli.retrieval import quantize
from madapt_cli.retrieval.quantize import hamming_topk, pack_binary
from madapt_cli.retrieval.search import search_topk


def _unit_rows(rng: np.random.Generator, rows: int, dim: int, batch: int = 262_144) -> np.ndarray:
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, batch):
        block = rng.standard_normal((min(batch, rows - start), dim), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def _best_of(repeat: int, work) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch and faiss threads")
    parser.add_argument("--skip-numpy", action="store_true")
    args = parser.parse_args()
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or os.cpu_count()
    torch.set_num_threads(threads)
    faiss = quantize._faiss()
    if faiss is not None:
        faiss.omp_set_num_threads(threads)

    rng = np.random.default_rng(0)
    corpus = _unit_rows(rng, args.docs, args.dim)
    queries = _unit_rows(rng, args.queries, args.dim)
    corpus_codes, query_codes = pack_binary(corpus), pack_binary(queries)
    figures: dict[str, float] = {}

    # the searches take turns, round after round, so a busy spell of a shared machine
    # slows all of them alike; each figure is its best round
    searches = {"float32": lambda: search_topk(queries, corpus, args.k)}
    if not args.skip_numpy:
        searches["numpy"] = lambda: hamming_topk(query_codes, corpus_codes, args.k, backend="numpy")
    if faiss is not None:
        searches["faiss"] = lambda: hamming_topk(query_codes, corpus_codes, args.k, backend="faiss")
    found = {}
    for _ in range(args.repeat):
        for name, search in searches.items():
            seconds, result = _best_of(1, search)
            figures[name] = min(figures.get(name, seconds), seconds)
            if name != "float32":
                found[name] = result
    if len(found) == 2:
        for a, b in zip(found["numpy"], found["faiss"], strict=True):
            np.testing.assert_array_equal(a, b)
    result = {
        "bench": "binary_search",
        "date": datetime.now(UTC).date().isoformat(),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "docs": args.docs,
        "dim": args.dim,
        "bytes_per_vector": {
            "float32": 4 * args.dim,
            "binary": quantize.bytes_per_vector("binary", args.dim),
        },
        "queries": args.queries,
        "k": args.k,
        "seconds": {name: round(value, 4) for name, value in figures.items()},
        "speedup_vs_float32": {
            name: round(figures["float32"] / value, 2)
            for name, value in figures.items()
            if name != "float32"
        },
        "backends_agree": len(found) == 2,
        "faiss_version": getattr(faiss, "__version__", None),
        "numpy_version": np.__version__,
        "torch_version": torch.__version__,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
