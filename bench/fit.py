"""Speed of the unsupervised Matryoshka-Adaptor fit on synthetic clustered unit vectors.

Target configuration: N = 1,000,000 x D = 768, 10 epochs (GPU). Reports the exact top-k
mining time (chunked, never N x N in memory) and seconds per epoch, using the same function
as `madapt fit` (train_unsupervised).

    python bench/fit.py --n 20000 --dim 768 --epochs 2 --device cpu
    python bench/fit.py --n 1000000 --dim 768 --epochs 10 --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from madapt_cli.methods.matryoshka import train_unsupervised
from madapt_cli.training.config import TrainConfig


def clustered_unit_vectors(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Gaussian clusters around random centres with a decaying spectrum, unit-normalised."""
    rng = np.random.default_rng(seed)
    spectrum = np.linspace(2.0, 0.2, dim).astype(np.float32)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32) * spectrum
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # in blocks, to bound temporary memory
        stop = min(n, start + 100_000)
        labels = rng.integers(0, clusters, stop - start)
        block = centres[labels] + 0.5 * rng.standard_normal((stop - start, dim), np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    vectors = clustered_unit_vectors(args.n, args.dim, args.clusters, args.seed)
    generated = time.perf_counter() - started
    config = TrainConfig(epochs=args.epochs, device=args.device, seed=args.seed)
    if args.batch_size:
        config.batch_size = args.batch_size
    epoch_ends: list[float] = []

    def on_epoch(record: dict) -> None:
        if args.device != "cpu" and torch.cuda.is_available():
            torch.cuda.synchronize()
        epoch_ends.append(time.perf_counter())
        print(f"epoch {record['epoch']} loss {record['loss']:.4f}", flush=True)

    started = time.perf_counter()
    result = train_unsupervised(vectors, config, on_epoch=on_epoch)
    total = time.perf_counter() - started
    training_start = started + result.topk_mining_seconds
    per_epoch = np.diff([training_start, *epoch_ends]).tolist()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {
        "n": args.n,
        "dim": args.dim,
        "epochs": args.epochs,
        "batch_size": config.batch_size,
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "generate_seconds": round(generated, 2),
        "topk_mining_seconds": round(result.topk_mining_seconds, 2),
        "seconds_per_epoch": [round(s, 2) for s in per_epoch],
        "mean_seconds_per_epoch": round(float(np.mean(per_epoch)), 2) if per_epoch else None,
        "total_seconds": round(total, 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
