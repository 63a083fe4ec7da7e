"""Throughput of `madapt import` against a bare pyarrow read + write of the same Parquet.

The input is generated in a temporary directory (``--dir``, default the system temp dir): N
unit float32 vectors of D dimensions with string ids, as a FixedSizeList column (the shape of
a public dataset of OpenAI-embedded documents). Both sides read it with
``pq.ParquetFile.iter_batches`` and write one Parquet file with ``pq.ParquetWriter`` (the
store's writer); madapt's side is the whole pipeline: id and vector checks (nulls, raggedness,
NaN/inf, zero), normalisation check, 8-byte id digests and the duplicate check, atomic
publish. Runs alternate, best of ``--repeats``; the figure is madapt / bare (goal <= 1.3).

    python bench/import_vectors.py --rows 1000000 --dim 1536 --repeats 2

The input is about rows x dim x 4 bytes (6.1 GB at the defaults), written once and deleted at
the end, with every output. ``--profile`` adds a cProfile of one import.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from madapt_cli.pipelines.import_vectors import ImportDeclaration, import_vectors
from madapt_cli.vector_sources import VectorFields

BATCH = 65_536


def generate(path: Path, rows: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    schema = pa.schema([("_id", pa.string()), ("emb", pa.list_(pa.float32(), dim))])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, BATCH):
            n = min(BATCH, rows - start)
            vectors = rng.standard_normal((n, dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            ids = pa.array([f"doc-{i}" for i in range(start, start + n)], pa.string())
            column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
            writer.write_batch(pa.record_batch([ids, column], schema=schema))


def bare(source: Path, target: Path) -> None:
    parquet = pq.ParquetFile(source)
    with pq.ParquetWriter(target, parquet.schema_arrow) as writer:
        for batch in parquet.iter_batches(batch_size=BATCH):
            writer.write_batch(batch)


def madapt(source: Path, out: Path) -> None:
    import_vectors(
        source,
        out,
        VectorFields("_id", "emb"),
        ImportDeclaration(provider="openai", model="text-embedding-3-large"),
        batch_rows=BATCH,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", default=None, help="Where to put the input (temporary).")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="madapt-bench-import-", dir=args.dir))
    try:
        source = scratch / "input.parquet"
        started = time.perf_counter()
        generate(source, args.rows, args.dim)
        size = source.stat().st_size
        print(
            f"input: {args.rows:,} x {args.dim} float32, {size / 1e9:.2f} GB, "
            f"generated in {time.perf_counter() - started:.0f}s"
        )
        times: dict[str, list[float]] = {"bare": [], "madapt": []}
        for repeat in range(args.repeats):
            for name in ("bare", "madapt"):
                target = scratch / f"{name}-{repeat}"
                began = time.perf_counter()
                if name == "bare":
                    bare(source, target)
                else:
                    madapt(source, target)
                times[name].append(time.perf_counter() - began)
                print(f"{name}: {times[name][-1]:.1f}s")
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink()
        best = {name: min(values) for name, values in times.items()}
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
            f"bare {best['bare']:.1f}s ({args.rows / best['bare']:,.0f} rows/s), madapt "
            f"{best['madapt']:.1f}s ({args.rows / best['madapt']:,.0f} rows/s); "
            f"ratio madapt/bare {best['madapt'] / best['bare']:.2f} (goal <= 1.3)"
        )
        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
            madapt(source, scratch / "profiled")
            profile.disable()
            pstats.Stats(profile).sort_stats("cumulative").print_stats(25)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
