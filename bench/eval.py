"""Speed of `madapt eval` against the time to merely read the vectors from the store.

Writes a synthetic store (unit vectors; query i is a noisy copy of document i, its one
relevant document), an adaptor (a residual MLP with random weights: the speed of a trained one),
then times, in the same run:

* ``read``: ``Store.read_vectors`` of the corpus and queries tables, the faster of two reads
  (the files were just written, so they are in the page cache: the read is Parquet decoding,
  the cheapest it can be, which makes the comparison as hard as it gets for the evaluation);
* ``eval``: :func:`madapt_cli.pipelines.evaluate.run_evaluation` with truncate, pca and the
  adaptor at each size (it reads the store again itself; its own timings break the total down).

Target configuration (GPU): ``--docs 1000000 --queries 10000 --dim 768``. Goal: eval at most
1.5x the read.

    python bench/eval.py --docs 100000 --queries 1000 --dim 768 --dims 64,128,256,512
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.methods.matryoshka import ResidualMLP
from madapt_cli.pipelines.evaluate import EvalOptions, run_evaluation
from madapt_cli.store.base import embedding_schema, new_table_metadata, open_store, vectors_to_arrow

MODEL = "bench/synthetic"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_store(root: Path, docs: int, queries: int, dim: int, batch: int = 65_536) -> Path:
    rng = np.random.default_rng(0)
    store = open_store(root / "store", create=True)
    query_vectors = _unit(rng.standard_normal((queries, dim), dtype=np.float32))
    meta = {"provider": "local", "model": MODEL, "dimension": dim, "normalized": True}

    def batches():
        for start in range(0, docs, batch):
            rows = min(batch, docs - start)
            vectors = _unit(rng.standard_normal((rows, dim), dtype=np.float32))
            planted = slice(start, min(start + rows, queries))
            if planted.start < planted.stop:  # document i is near query i
                near = query_vectors[planted] + 0.05 * rng.standard_normal(
                    (planted.stop - planted.start, dim), dtype=np.float32
                )
                vectors[: planted.stop - planted.start] = _unit(near)
            ids = pa.array([f"d{i}" for i in range(start, start + rows)])
            yield pa.record_batch(
                [ids, vectors_to_arrow(vectors), pa.nulls(rows, pa.string())], schema=schema
            )

    schema = embedding_schema(dim, metadata=new_table_metadata(**meta, role="document"))
    store.write_table("corpus", schema, batches())
    query_schema = embedding_schema(dim, metadata=new_table_metadata(**meta, role="query"))
    store.append(
        "queries",
        pa.Table.from_arrays(
            [
                pa.array([f"q{i}" for i in range(queries)]),
                vectors_to_arrow(query_vectors),
                pa.nulls(queries, pa.string()),
            ],
            schema=query_schema,
        ),
    )
    qrels = root / "qrels.tsv"
    qrels.write_text("".join(f"q{i}\td{i}\t1\n" for i in range(queries)))
    return root / "store"


def write_adaptor(root: Path, dim: int) -> Path:
    torch.manual_seed(0)
    module = ResidualMLP(dim, 2 * dim)
    torch.nn.init.normal_(module.g[-1].weight, std=0.01)  # not the identity
    config = {
        "name": "adaptor",
        "method": "matryoshka",
        "dimension": dim,
        "architecture": {
            "type": "residual_mlp",
            "hidden": 2 * dim,
            "depth": 2,
            "activation": "gelu",
        },
        "base_provider": "local",
        "base_model": MODEL,
    }
    return Adaptor(module, config).save(root / "adaptor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--dims", default="64,128,256,512")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    root = Path(args.workdir or tempfile.mkdtemp(prefix="madapt-bench-eval-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        store_path = write_store(root, args.docs, args.queries, args.dim)
        adaptor = write_adaptor(root, args.dim)
        write_seconds = time.perf_counter() - started

        store = open_store(store_path)
        read_times = []
        for _ in range(2):  # the faster of two reads: the bar for the evaluation is the highest
            started = time.perf_counter()
            corpus_ids, corpus = store.read_vectors("corpus")
            query_ids, queries = store.read_vectors("queries")
            read_times.append(time.perf_counter() - started)
            assert len(corpus_ids) == args.docs and len(query_ids) == args.queries
            del corpus, queries
        read_seconds = min(read_times)

        started = time.perf_counter()
        options = EvalOptions(dims=args.dims, adaptors=[adaptor], device=args.device)
        report = run_evaluation(store_path, root / "qrels.tsv", options)
        eval_seconds = time.perf_counter() - started
        figures = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} torch threads, "
            + (torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"),
            "device": report.settings["device"],
            "docs": args.docs,
            "queries": args.queries,
            "dim": args.dim,
            "dims": report.dims,
            "methods": [m["name"] for m in report.methods],
            "searches": len(report.results),
            "write_store_s": round(write_seconds, 2),
            "read_s": round(read_seconds, 2),
            "read_runs_s": [round(t, 2) for t in read_times],
            "eval_s": round(eval_seconds, 2),
            "eval_over_read": round(eval_seconds / read_seconds, 2),
            "eval_breakdown_s": report.seconds,
            "ndcg@10_at_sizes": {
                f"{r.method}@{r.dim}": round(r.metrics["ndcg@10"], 4) for r in report.results
            },
        }
        print(json.dumps(figures, indent=2))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
