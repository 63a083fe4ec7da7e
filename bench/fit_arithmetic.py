"""The arithmetic floor of a fit epoch: the rows an epoch passes through the adaptor's MLP,
the floating-point work they take, and the CPU's matrix-product rate, side by side.

Counts every row that goes through ``ResidualMLP.from_start`` in one epoch of the
``supervised`` (stage 2) and ``paper`` objectives on ``bench/fit.py``'s synthetic data, and
times one large product in float32 and bfloat16. A row trained costs 2.5 forward passes
(forward, then the gradients of both layers' weights and of the hidden layer's input; the
rotated rows need no gradient), a row evaluated one.

    python bench/fit_arithmetic.py --n 20000 --dim 768 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fit as fit_bench

TRAINED_FORWARDS = 2.5


def count_rows(args: argparse.Namespace) -> dict[str, dict[str, int]]:
    from madapt_cli.methods.matryoshka import train_supervised, train_unsupervised
    from madapt_cli.training import modules
    from madapt_cli.training.config import TrainConfig

    rows = {"trained": 0, "evaluated": 0}
    original = modules.ResidualMLP.from_start

    def counted(self, started):
        rows["trained" if torch.is_grad_enabled() else "evaluated"] += started.shape[0]
        return original(self, started)

    corpus = fit_bench.clustered_unit_vectors(args.n, args.dim, args.clusters, args.seed)
    queries, source_rows = fit_bench.synthetic_queries(corpus, args.queries, args.seed)
    counts = {}
    modules.ResidualMLP.from_start = counted
    try:
        for objective in ("supervised", "paper"):
            rows.update(trained=0, evaluated=0)
            config = TrainConfig(epochs=1, supervised_epochs=1, device="cpu", seed=args.seed)
            if objective == "supervised":
                corpus_ids = [f"d{i}" for i in range(len(corpus))]
                query_ids = [f"q{i}" for i in range(len(queries))]
                qrels = {q: {corpus_ids[r]: 1} for q, r in zip(query_ids, source_rows, strict=True)}
                train_supervised(
                    corpus, corpus_ids, queries, query_ids, qrels, config, two_stage=False
                )
            else:
                train_unsupervised(corpus, config)
            counts[objective] = dict(rows)
    finally:
        modules.ResidualMLP.from_start = original
    return counts


def product_rate(dim: int, hidden: int, dtype: torch.dtype, repeats: int = 20) -> float:
    """GFLOP/s of a (4,096 x dim) by (dim x hidden) product."""
    a, w = torch.randn(4096, dim, dtype=dtype), torch.randn(dim, hidden, dtype=dtype)
    for _ in range(3):
        a @ w
    started = time.perf_counter()
    for _ in range(repeats):
        a @ w
    seconds = (time.perf_counter() - started) / repeats
    return 2 * 4096 * dim * hidden / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=5_000)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hidden = 2 * args.dim  # TrainConfig.hidden's default
    forward_flop = 2 * 2 * args.dim * hidden  # two products a row
    rates = {
        "float32": product_rate(args.dim, hidden, torch.float32),
        "bfloat16": product_rate(args.dim, hidden, torch.bfloat16),
    }
    report = {"n": args.n, "dim": args.dim, "hidden": hidden, "threads": args.threads}
    report["product_gflops"] = {k: round(v, 1) for k, v in rates.items()}
    for objective, rows in count_rows(args).items():
        flop = (TRAINED_FORWARDS * rows["trained"] + rows["evaluated"]) * forward_flop
        report[objective] = {
            **rows,
            "tflop": round(flop / 1e12, 2),
            "floor_seconds": {k: round(flop / (v * 1e9), 1) for k, v in rates.items()},
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
