"""`madapt apply --engine ray` against the local engine, in one run, on synthetic vectors.

Writes a Parquet store of ``--rows`` random unit vectors of ``--dim`` dimensions (through
the store layer, as `madapt embed` would: one file of 65,536 rows per append, the fragments
the Ray workers read) and an adaptor with random weights of the
architecture `madapt fit` trains (ResidualMLP, hidden 2 x dim), then applies it at
``--dims`` with: the local engine on 1 torch thread, Ray with 1 worker (1 CPU), Ray with 2
workers (1 CPU each), and the local engine on 2 threads. Ray runs on a local Ray started
once (its start is reported apart: on a cluster it is already running); each Ray figure
includes starting the actor pool. Every output is checked against the first (same ids,
vectors within 1e-6). Prints rows/s and the 1-worker overhead (Ray time / local time).

    OMP_NUM_THREADS=1 python bench/ray_apply.py --rows 1000000 --dim 768 \
        --work /work/scratch/ray/bench --json ray_apply.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import residual_adaptor

from madapt_cli.pipelines.apply import apply_adaptor
from madapt_cli.pipelines.ray_apply import apply_adaptor_ray
from madapt_cli.pipelines.ray_engine import RayOptions, ray_session
from madapt_cli.store.base import (
    embedding_schema,
    new_table_metadata,
    open_store,
    vectors_to_arrow,
)

MODEL = "bench-model"


def make_inputs(work: Path, rows: int, dim: int, chunk: int = 65_536) -> None:
    store = open_store(work / "store", format="parquet", create=True)
    rng = np.random.default_rng(0)
    metadata = new_table_metadata(
        provider="local", model=MODEL, dimension=dim, normalized=True, dtype="float32"
    )
    schema = embedding_schema(dim, "float32", False, metadata)
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        vectors = rng.normal(size=(n, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        columns = [
            pa.array([f"doc-{start + i}" for i in range(n)], pa.string()),
            vectors_to_arrow(vectors),
            pa.array(["0" * 64] * n, pa.string()),
        ]
        store.append("corpus", pa.Table.from_arrays(columns, schema=schema))
    store.retain("corpus")  # nothing superseded: the files stay, as `madapt embed` leaves them
    torch.manual_seed(0)
    adaptor = residual_adaptor(dim, MODEL)
    with torch.no_grad():
        for parameter in adaptor.module.parameters():
            parameter.normal_(0, 0.02)
    adaptor.save(work / "adaptor")


def timed(label: str, run, rows: int) -> dict:
    """Run ``run(progress)``; its seconds, rows/s and when the first rows were written (for
    Ray: the actor pool's start plus the first fragment)."""
    first: list[float] = []

    def progress(event) -> None:
        if not first and event.done:
            first.append(time.perf_counter() - started)

    started = time.perf_counter()
    run(progress)
    seconds = time.perf_counter() - started
    result = {
        "run": label,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "first_rows_written_after_s": round(first[0], 2) if first else None,
        "load_average_1min_after": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--dims", default="64,128,256")
    parser.add_argument("--block-rows", type=int, default=16_384)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = time.perf_counter()
    make_inputs(args.work, args.rows, args.dim)
    print(f"inputs: {args.rows} x {args.dim} in {time.perf_counter() - started:.1f}s", flush=True)
    store, adaptor = args.work / "store", args.work / "adaptor"

    def local(threads: int, out: str):
        def run(progress) -> None:
            torch.set_num_threads(threads)
            apply_adaptor(adaptor, store, args.dims, args.work / out, progress=progress)

        return run

    def on_ray(workers: int, out: str):
        options = RayOptions(workers=workers, batch_rows=args.block_rows, num_cpus=2)

        def run(progress) -> None:
            apply_adaptor_ray(adaptor, store, args.dims, args.work / out, ray_options=options,
                              progress=progress)  # fmt: skip

        return run

    results = [timed("local, 1 thread", local(1, "local1"), args.rows)]
    started = time.perf_counter()
    with ray_session(RayOptions(num_cpus=2)):
        ray_start = round(time.perf_counter() - started, 2)
        print(f"local Ray started in {ray_start}s", flush=True)
        results.append(timed("ray, 1 worker", on_ray(1, "ray1"), args.rows))
        results.append(timed("ray, 2 workers", on_ray(2, "ray2"), args.rows))
    results.append(timed("local, 2 threads", local(2, "local2"), args.rows))
    column = f"vector_{args.dims.split(',')[0]}"
    ids, expected = open_store(args.work / "local1").read_vectors("corpus", column)
    for out in ("ray1", "ray2", "local2"):
        got_ids, got = open_store(args.work / out).read_vectors("corpus", column)
        assert got_ids == ids and np.abs(got - expected).max() < 1e-6, out
    overhead = results[1]["seconds"] / results[0]["seconds"]
    summary = {
        "rows": args.rows,
        "dim": args.dim,
        "dims": args.dims,
        "block_rows": args.block_rows,
        "ray_start_seconds": ray_start,
        "runs": results,
        "overhead_1_worker_vs_local_1_thread": round(overhead, 3),
        "speedup_2_workers_vs_1": round(results[1]["seconds"] / results[2]["seconds"], 3),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
