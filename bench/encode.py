"""Throughput of Encoder.encode against a bare SentenceTransformer.encode + Adaptor.transform.

    python bench/encode.py --adaptor ADAPTOR --queries 1000 [--repeats 3] [--device cpu]

Both sides encode the same 1,000 short SciFact queries with the same model object settings
(batch size 64), one after the other, best of --repeats; prints queries/s and the ratio.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adaptor", required=True)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with gzip.open(HERE / "examples/scifact/queries.jsonl.gz", "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    texts = (texts * (args.queries // len(texts) + 1))[: args.queries]

    from madapt_cli import Encoder

    encoder = Encoder.from_adaptor(args.adaptor, device=args.device)
    encoder.encode(texts[:8], dim=args.dim)  # load the model
    model, adaptor = encoder.provider._load(), encoder.adaptor

    def bare() -> np.ndarray:
        raw = model.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False)
        return adaptor.transform(raw, dim=args.dim)

    def ours() -> np.ndarray:
        return encoder.encode(texts, role="query", dim=args.dim)

    best = {"bare": float("inf"), "encoder": float("inf")}
    for _ in range(args.repeats):
        for name, run in (("bare", bare), ("encoder", ours)):
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    assert np.abs(bare() - ours()).max() < 1e-5
    for name, seconds in best.items():
        print(f"{name:8s} {args.queries / seconds:8.1f} queries/s ({seconds:.3f} s)")
    print(f"ratio encoder/bare: {best['bare'] / best['encoder']:.3f}")


if __name__ == "__main__":
    main()
