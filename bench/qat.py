"""Quantisation-aware training (`madapt fit --quantization-aware`) against plain training.

For each seed, method (supervised: train qrels; distill: the default unsupervised objective
with the train qrels' queries as unlabelled anchors) and QAT setting (none, binary; an int8
term was measured too, then removed for showing no gain), fits an adaptor with the same
package functions as `madapt fit` and scores the SciFact test queries at every (precision,
size, scoring) cell, as `madapt apply --precision` stores them:

* binary: the sign bits of each unit prefix (``quantize.pack_binary``), symmetric (both sides
  coded: cosine of the +-1 vectors, i.e. Hamming order) or asymmetric (float query against the
  +-1 document codes);
* int2: the corpus' per-coordinate Lloyd-Max levels (``int2.fit_int2_calibration``), decoded
  and re-normalised, symmetric or asymmetric;
* int8: the corpus calibration of the adapted prefix (``quantize.fit_int8_calibration``, its
  default method), symmetric (dequantised query and document codes) or asymmetric (float
  query against dequantised documents);
* float32 at the same sizes, for reference.

    OMP_NUM_THREADS=1 python bench/qat.py --npz /work/scratch/q/scifact_minilm.npz \
        --beir /work/shared/datasets/scifact --seeds 0,1 --json qat.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from madapt_cli.data import read_qrels
from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.methods.matryoshka import train_distill, train_supervised
from madapt_cli.retrieval import int2, quantize
from madapt_cli.retrieval.evaluate import ndcg_at_10
from madapt_cli.training import quantization
from madapt_cli.training.config import TrainConfig

#: (precision, size) cells scored, each symmetric and asymmetric
CELLS = [
    ("binary", 64),
    ("binary", 128),
    ("binary", 256),
    ("int2", 128),
    ("int8", 32),
    ("int8", 64),
]


def coded(precision: str, corpus: np.ndarray, queries: np.ndarray) -> tuple:
    """(documents as the database scores them, coded queries) of unit prefixes."""
    if precision == "binary":
        dim = corpus.shape[1]
        unpack = quantize.unpack_binary
        return (
            unpack(quantize.pack_binary(corpus), dim),
            unpack(quantize.pack_binary(queries), dim),
        )
    if precision == "int2":
        fitted = int2.fit_int2_calibration(corpus)
        return (
            int2.dequantize_int2(int2.quantize_int2(corpus, fitted), fitted),
            int2.dequantize_int2(int2.quantize_int2(queries, fitted), fitted),
        )
    calibration = quantize.fit_int8_calibration(corpus)
    return (
        quantize.dequantize_int8(quantize.quantize_int8(corpus, calibration), calibration),
        quantize.dequantize_int8(quantize.quantize_int8(queries, calibration), calibration),
    )


def score(adaptor: Adaptor, data: dict, qrels: dict) -> dict[str, float]:
    """nDCG@10 per cell: "binary@128 sym", "int8@64 asym", "float32@128"..."""
    results: dict[str, float] = {}
    ids = (data["query_ids"], data["doc_ids"])
    for dim in sorted({d for _, d in CELLS}):
        corpus = adaptor.transform(data["doc_vectors"], dim=dim)
        queries = adaptor.transform(data["query_vectors"], dim=dim)
        results[f"float32@{dim}"] = ndcg_at_10(queries, ids[0], corpus, ids[1], qrels)
        for precision, size in CELLS:
            if size != dim:
                continue
            documents, coded_queries = coded(precision, corpus, queries)
            sym = ndcg_at_10(coded_queries, ids[0], documents, ids[1], qrels)
            asym = ndcg_at_10(queries, ids[0], documents, ids[1], qrels)
            results[f"{precision}@{dim} sym"] = sym
            results[f"{precision}@{dim} asym"] = asym
    return results


def fit(method: str, qat: str | None, seed: int, data: dict, train_qrels: dict) -> Adaptor:
    config = TrainConfig(seed=seed, device="cpu", quantization_aware=qat)
    if method == "supervised":
        result = train_supervised(
            data["doc_vectors"],
            data["doc_ids"],
            data["query_vectors"],
            data["query_ids"],
            train_qrels,
            config,
        )
    else:
        config.train_dims = None
        anchors = data["query_vectors"][[data["row"][q] for q in data["anchor_ids"]]]
        result = train_distill(data["doc_vectors"], anchors, config)
    dimension = data["doc_vectors"].shape[1]
    return Adaptor(result.module, {"method": "matryoshka", "dimension": dimension})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", required=True)
    parser.add_argument("--beir", required=True)
    parser.add_argument("--methods", default="supervised,distill")
    parser.add_argument("--qat", default="none,binary", help="none, binary, int2")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--weight", type=float, help="w (default: the precision's setting)")
    parser.add_argument("--scoring", help="S, e.g. asymmetric (default: the precision's)")
    parser.add_argument("--qat-dims", help="M_q, e.g. 128,256 (default: the precision's)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for precision, settings in list(quantization.SETTINGS.items()):
        changes: dict = {}
        if args.weight is not None:
            changes["weight"] = args.weight
        if args.scoring:
            changes["scoring"] = tuple(args.scoring.split(","))
        if args.qat_dims:
            changes["dims"] = tuple(int(d) for d in args.qat_dims.split(","))
        quantization.SETTINGS[precision] = dataclasses.replace(settings, **changes)
    raw = np.load(args.npz)
    train_qrels = read_qrels(Path(args.beir) / "qrels" / "train.tsv")
    test_qrels = read_qrels(Path(args.beir) / "qrels" / "test.tsv")
    query_ids = [str(x) for x in raw["query_ids"]]
    data = {
        "doc_ids": [str(x) for x in raw["doc_ids"]],
        "doc_vectors": raw["doc_vectors"].astype(np.float32),
        "query_ids": query_ids,
        "query_vectors": raw["query_vectors"].astype(np.float32),
        "row": {q: i for i, q in enumerate(query_ids)},
        "anchor_ids": [q for q in query_ids if q in train_qrels],
    }
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for method in args.methods.split(","):
            for qat in args.qat.split(","):
                started = time.perf_counter()
                adaptor = fit(method, None if qat == "none" else qat, seed, data, train_qrels)
                seconds = time.perf_counter() - started
                cells = score(adaptor, data, test_qrels)
                runs.append(
                    {"seed": seed, "method": method, "qat": qat, "seconds": seconds, **cells}
                )
                print(
                    f"seed {seed} {method:>10} qat {qat:>6} ({seconds:.0f}s): "
                    + "  ".join(f"{k} {v:.4f}" for k, v in cells.items()),
                    flush=True,
                )
    print(json.dumps(runs, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"config": vars(args), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
