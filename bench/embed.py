"""Throughput of `madapt embed` (each ``--backends``) against a bare `SentenceTransformer.encode`.

All embed the same SciFact documents with the same model and batch size, in one process and
one run, alternating so that machine noise hits each alike; each figure is the ratio of the
best throughput of a madapt run to that of the bare torch encode (goals: torch >= 0.95, the
CPU default >= 1.5), and every vector's cosine to the bare encode's (goal >= 0.999). madapt's
side is the whole pipeline: validation, content keys, request planning, length ordering,
normalisation and atomic Parquet writes. The ONNX export is made (and cached) before timing.

    python bench/embed.py --docs 2000 --batch-size 64 --repeats 2 --backends torch,onnx
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from madapt_cli.data import TextSource
from madapt_cli.pipelines.embed import EmbedJob, embed_source
from madapt_cli.providers.local import LocalProvider
from madapt_cli.store.base import open_store

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "scifact" / "corpus.jsonl.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--backends", default="torch,onnx", help="comma-separated: torch,onnx,openvino"
    )
    args = parser.parse_args()
    backends = args.backends.split(",")

    with tempfile.TemporaryDirectory() as scratch:
        source_path = Path(scratch) / "docs.jsonl"
        with gzip.open(EXAMPLE, "rt", encoding="utf-8") as handle, source_path.open("w") as out:
            for _, line in zip(range(args.docs), handle, strict=False):
                out.write(line)
        source = TextSource(source_path, id_field="_id")
        items = list(source)
        texts = [i.joined for i in items]

        providers = {
            b: LocalProvider(
                "all-MiniLM-L6-v2", batch_size=args.batch_size, device=args.device, backend=b
            )
            for b in backends
        }
        model = LocalProvider(
            "all-MiniLM-L6-v2", batch_size=args.batch_size, device=args.device
        )._load()
        model.encode(texts[:64], batch_size=args.batch_size)  # warm
        for warm in providers.values():  # load, export and warm before timing
            warm.embed_batch(items[:64], "document")

        times: dict[str, list[float]] = {"bare": [], **{b: [] for b in backends}}
        cosines: dict[str, float] = {}
        reference = None
        for repeat in range(args.repeats):
            started = time.perf_counter()
            reference = model.encode(
                texts,
                batch_size=args.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            times["bare"].append(time.perf_counter() - started)
            for backend, chosen in providers.items():
                path = Path(scratch) / f"store-{backend}-{repeat}"
                store = open_store(path, create=True)
                started = time.perf_counter()
                summary = embed_source(EmbedJob("corpus", "document", source), chosen, store)
                times[backend].append(time.perf_counter() - started)
                assert summary.embedded == len(items)
                ids, vectors = open_store(path).read_vectors("corpus")
                order = {i: n for n, i in enumerate(ids)}
                aligned = vectors[[order[i.id] for i in items]]
                cosines[backend] = float((aligned * reference).sum(axis=1).min())

    bare = len(items) / min(times["bare"])
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} "
        f"torch threads, load {os.getloadavg()[0]:.1f}",
        "device": args.device,
        "docs": len(items),
        "batch_size": args.batch_size,
        "bare_encode_docs_per_s": round(bare, 2),
        "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
    }
    for backend in backends:
        ours = len(items) / min(times[backend])
        result[backend] = {
            "docs_per_s": round(ours, 2),
            "ratio_to_bare": round(ours / bare, 3),
            "min_cosine_to_bare": round(cosines[backend], 6),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
