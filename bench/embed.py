"""Throughput of `madapt embed` per backend and precision against a bare torch encode.

Every option embeds the same SciFact documents with the same model and batch size, in one
process and one run. Rounds alternate the order (bare encode included), so that machine noise
hits each alike; each figure is the ratio of an option's best wall time to the bare torch
encode's best (goal for the CPU default: >= 1.5), and the same ratio of process CPU time
(every thread of this process: a steadier view on a shared machine, but it counts the
threads' spinning too). Every vector's cosine to the bare fp32 encode's is checked
(floor 0.999). madapt's side is the whole pipeline: validation, content keys, request
planning, length ordering, normalisation and atomic Parquet writes. Exports are made (and
cached) and every model is warmed before timing. Options this machine cannot run (a package
missing, bf16 on a CPU without it) are listed as skipped.

    python bench/embed.py --docs 2000 --batch-size 64 --repeats 2

``--ndcg DATA`` (a BEIR folder with corpus, queries and qrels/test.tsv) then embeds the
whole dataset with each option and prints its test nDCG@10 at 64/128/256/full dimensions
beside the bare torch fp32 vectors', and every vector's minimum cosine to them.
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
from typing import Any

import numpy as np
import torch

from madapt_cli.data import TextSource, read_qrels
from madapt_cli.errors import ProviderError
from madapt_cli.pipelines.embed import EmbedJob, embed_source
from madapt_cli.providers.local import LocalProvider
from madapt_cli.retrieval.evaluate import ndcg_at_10
from madapt_cli.store.base import open_store

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "scifact" / "corpus.jsonl.gz"
OPTIONS = "torch:fp32,torch:bf16,onnx:fp32,openvino:fp32,openvino:bf16"


def build(option: str, args: argparse.Namespace) -> LocalProvider:
    backend, precision = option.split(":")
    provider = LocalProvider(
        "all-MiniLM-L6-v2",
        batch_size=args.batch_size,
        device=args.device,
        backend=backend,
        precision=precision,
    )
    provider.dimension  # noqa: B018 - loads (and exports) the model now, or refuses
    return provider


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed(work: Any) -> tuple[Any, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def speed(args: argparse.Namespace, providers: dict[str, LocalProvider], scratch: Path) -> dict:
    source_path = scratch / "docs.jsonl"
    with gzip.open(EXAMPLE, "rt", encoding="utf-8") as handle, source_path.open("w") as out:
        for _, line in zip(range(args.docs), handle, strict=False):
            out.write(line)
    source = TextSource(source_path, id_field="_id")
    items = list(source)
    texts = [i.joined for i in items]
    model = LocalProvider("all-MiniLM-L6-v2", batch_size=args.batch_size, device=args.device)
    bare = model._load()
    bare.encode(texts[:64], batch_size=args.batch_size)  # warm
    for warm in providers.values():
        warm.embed_batch(items[:64], "document")

    def encode() -> np.ndarray:
        return bare.encode(
            texts, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False
        )

    def embed(option: str, run: int) -> np.ndarray:
        path = scratch / f"store-{option.replace(':', '-')}-{run}"
        store = open_store(path, create=True)
        summary = embed_source(EmbedJob("corpus", "document", source), providers[option], store)
        assert summary.embedded == len(items)
        ids, vectors = open_store(path).read_vectors("corpus")
        order = {i: n for n, i in enumerate(ids)}
        return vectors[[order[i.id] for i in items]]

    names = ["bare", *providers]
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    vectors: dict[str, np.ndarray] = {}
    loads = [round(os.getloadavg()[0], 1)]
    for run in range(args.repeats):
        for name in names[run % len(names) :] + names[: run % len(names)]:
            work = encode if name == "bare" else (lambda n=name, r=run: embed(n, r))
            vectors[name], seconds, busy = timed(work)
            wall[name].append(seconds)
            cpu[name].append(busy)
            print(f"  round {run + 1}: {name} {seconds:.1f} s", flush=True)
        loads.append(round(os.getloadavg()[0], 1))
    reference = vectors["bare"]
    result: dict[str, Any] = {
        "docs": len(items),
        "load_average_1m_per_round": loads,
        "bare_torch_encode": {
            "docs_per_s": round(len(items) / min(wall["bare"]), 2),
            "wall_s": [round(t, 1) for t in wall["bare"]],
            "cpu_s": [round(t, 1) for t in cpu["bare"]],
        },
    }
    for name in providers:
        cosines = (unit(vectors[name]) * reference).sum(axis=1)
        result[name] = {
            "docs_per_s": round(len(items) / min(wall[name]), 2),
            "ratio_to_bare_wall": round(min(wall["bare"]) / min(wall[name]), 3),
            "ratio_to_bare_cpu": round(min(cpu["bare"]) / min(cpu[name]), 3),
            "min_cosine_to_bare": round(float(cosines.min()), 6),
            "wall_s": [round(t, 1) for t in wall[name]],
            "cpu_s": [round(t, 1) for t in cpu[name]],
        }
    return result


def embed_beir(provider: LocalProvider, data: Path, out: Path) -> Any:
    store = open_store(out, create=True)
    for table, role, name in (("corpus", "document", "corpus"), ("queries", "query", "queries")):
        found = [data / f"{name}.jsonl", data / f"{name}.jsonl.gz"]
        source = TextSource(next(p for p in found if p.is_file()), id_field="_id")
        embed_source(EmbedJob(table, role, source), provider, store)
    return open_store(out)


def quality(args: argparse.Namespace, providers: dict[str, LocalProvider], scratch: Path) -> dict:
    qrels = read_qrels(args.ndcg / "qrels" / "test.tsv")
    reference_provider = LocalProvider(
        "all-MiniLM-L6-v2", batch_size=args.batch_size, device=args.device
    )
    stores = {"torch:fp32 (reference)": embed_beir(reference_provider, args.ndcg, scratch / "r")}
    for name, provider in providers.items():
        if name != "torch:fp32":
            stores[name] = embed_beir(provider, args.ndcg, scratch / name.replace(":", "-"))
    reference = None
    result: dict[str, Any] = {}
    for name, store in stores.items():
        tables = {t: store.read_vectors(t) for t in ("corpus", "queries")}
        (cid, cv), (qid, qv) = tables["corpus"], tables["queries"]
        row = {
            f"ndcg@10_{d or 'full'}": round(ndcg_at_10(qv, qid, cv, cid, qrels, dim=d), 4)
            for d in (64, 128, 256, None)
        }
        if reference is None:
            reference = {t: dict(zip(i, v, strict=True)) for t, (i, v) in tables.items()}
        else:
            row["min_cosine_to_reference"] = round(
                min(
                    float(np.dot(reference[t][k], v))
                    for t, (ids, vs) in tables.items()
                    for k, v in zip(ids, vs, strict=True)
                ),
                6,
            )
        result[name] = row
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--options", default=OPTIONS, help="comma-separated backend:precision")
    parser.add_argument("--ndcg", type=Path, default=None, help="a BEIR folder (see above)")
    args = parser.parse_args()

    providers: dict[str, LocalProvider] = {}
    skipped: dict[str, str] = {}
    for option in args.options.split(","):
        try:
            providers[option] = build(option, args)
        except ProviderError as error:
            skipped[option] = str(error)
    header = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} "
        f"torch threads, Python {platform.python_version()}",
        "device": args.device,
        "batch_size": args.batch_size,
        "skipped": skipped,
    }
    with tempfile.TemporaryDirectory() as scratch:
        result = {**header, **speed(args, providers, Path(scratch))}
        print(json.dumps(result, indent=2), flush=True)
        if args.ndcg is not None:
            print(json.dumps({"ndcg": quality(args, providers, Path(scratch))}, indent=2))


if __name__ == "__main__":
    main()
