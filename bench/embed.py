"""Throughput of `madapt embed` against a bare `SentenceTransformer.encode`.

Both embed the same SciFact documents with the same model and batch size, in one process and
one run, alternating so that machine noise hits both alike; the figure is the ratio of the
best throughput of each (goal: >= 0.95). madapt's side is the whole pipeline: validation,
content keys, request planning, normalisation and atomic Parquet writes.

    python bench/embed.py --docs 2000 --batch-size 64 --repeats 2
"""

from __future__ import annotations

import argparse
import gzip
import json
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
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        source_path = Path(scratch) / "docs.jsonl"
        with gzip.open(EXAMPLE, "rt", encoding="utf-8") as handle, source_path.open("w") as out:
            for _, line in zip(range(args.docs), handle, strict=False):
                out.write(line)
        source = TextSource(source_path, id_field="_id")
        items = list(source)
        texts = [i.joined for i in items]

        provider = LocalProvider("all-MiniLM-L6-v2", batch_size=args.batch_size, device=args.device)
        model = provider._load()  # warm: both sides share one loaded model
        model.encode(texts[:64], batch_size=args.batch_size)

        bare_times, madapt_times = [], []
        for repeat in range(args.repeats):
            started = time.perf_counter()
            model.encode(
                texts,
                batch_size=args.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            bare_times.append(time.perf_counter() - started)

            store = open_store(Path(scratch) / f"store-{repeat}", create=True)
            started = time.perf_counter()
            summary = embed_source(EmbedJob("corpus", "document", source), provider, store)
            madapt_times.append(time.perf_counter() - started)
            assert summary.embedded == len(items)

    bare = len(items) / min(bare_times)
    ours = len(items) / min(madapt_times)
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
                f"{platform.processor() or 'cpu'}",
                "device": args.device,
                "docs": len(items),
                "batch_size": args.batch_size,
                "bare_encode_docs_per_s": round(bare, 2),
                "madapt_embed_docs_per_s": round(ours, 2),
                "ratio": round(ours / bare, 3),
                "bare_seconds": [round(t, 2) for t in bare_times],
                "madapt_seconds": [round(t, 2) for t in madapt_times],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
