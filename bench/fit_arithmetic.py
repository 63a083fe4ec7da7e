"""The arithmetic floor of a fit epoch: the rows an epoch passes through the adaptor's MLP,
the floating-point work they take, and the CPU's matrix-product rate, side by side.

Counts every row that goes through ``ResidualMLP.from_start`` in one epoch of the
``supervised`` (stage 2) and ``paper`` objectives on ``bench/fit.py``'s synthetic data, and
times one large product in float32 and bfloat16. A row trained costs 2.5 forward passes
(forward, then the gradients of both layers' weights and of the hidden layer's input; the
rotated rows need no gradient), a row evaluated one. ``--objectives smec`` counts the rows
through SMEC's stages (``SMECModule.from_start``, or ``residual`` on older commits: run it
with such a commit's tree first on PYTHONPATH); its products are not full width (the last
layer is cut to the largest size), so no floor is given for it.

    python bench/fit_arithmetic.py --n 20000 --dim 768 --threads 2
    python bench/fit_arithmetic.py --n 20000 --dim 768 --threads 2 --objectives smec
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
    from madapt_cli.methods.smec import SMECOptions, train_smec
    from madapt_cli.methods.smec_module import SMECModule
    from madapt_cli.training import modules
    from madapt_cli.training.config import TrainConfig

    rows = {"trained": 0, "evaluated": 0}
    # (class, method) whose calls see every row f adapts: SMEC's from_start (since the
    # rotation is applied once per stage), its residual before
    smec_entry = "from_start" if hasattr(SMECModule, "from_start") else "residual"
    patched = [(modules.ResidualMLP, "from_start"), (SMECModule, smec_entry)]
    originals = [getattr(owner, name) for owner, name in patched]

    def counting(original):
        def counted(self, vectors):
            rows["trained" if torch.is_grad_enabled() else "evaluated"] += vectors.shape[0]
            return original(self, vectors)

        return counted

    corpus = fit_bench.clustered_unit_vectors(args.n, args.dim, args.clusters, args.seed)
    queries, source_rows = fit_bench.synthetic_queries(corpus, args.queries, args.seed)
    corpus_ids = [f"d{i}" for i in range(len(corpus))]
    query_ids = [f"q{i}" for i in range(len(queries))]
    qrels = {q: {corpus_ids[r]: 1} for q, r in zip(query_ids, source_rows, strict=True)}
    counts = {}
    for (owner, name), original in zip(patched, originals, strict=True):
        setattr(owner, name, counting(original))
    try:
        for objective in args.objectives.split(","):
            rows.update(trained=0, evaluated=0)
            config = TrainConfig(epochs=1, supervised_epochs=1, device="cpu", seed=args.seed)
            if objective == "supervised":
                train_supervised(
                    corpus, corpus_ids, queries, query_ids, qrels, config, two_stage=False
                )
            elif objective == "smec":
                train_smec(
                    corpus, config, SMECOptions(), corpus_ids=corpus_ids, queries=queries,
                    query_ids=query_ids, qrels=qrels,
                )  # fmt: skip
            else:
                train_unsupervised(corpus, config)
            counts[objective] = dict(rows)
    finally:
        for (owner, name), original in zip(patched, originals, strict=True):
            setattr(owner, name, original)
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
    parser.add_argument(
        "--objectives", default="supervised,paper", help="of supervised, paper, smec"
    )
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
        if objective == "smec":  # cut last layer: the full-width floor would not be one
            report[objective] = rows
            continue
        flop = (TRAINED_FORWARDS * rows["trained"] + rows["evaluated"]) * forward_flop
        report[objective] = {
            **rows,
            "tflop": round(flop / 1e12, 2),
            "floor_seconds": {k: round(flop / (v * 1e9), 1) for k, v in rates.items()},
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
