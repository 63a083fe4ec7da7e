"""SMEC ablation, supervised: which part of SMEC helps at which size.

Rows: truncation; the Matryoshka-Adaptor (``train_supervised``, unsupervised stage then
supervised stage); our SMEC trainer with every part off (all sizes at once, in-batch
neighbours, prefix pruning); that base plus each part alone (sequential stages, ADS, S-XBM);
full SMEC. Every trained row gets the same budget of ``--budget`` epochs over the training data
(the Matryoshka-Adaptor splits it 2:3 between its two stages, sequential SMEC evenly between its
stages) and the same early stopping (patience 5 on held-out train queries), batch sizes and model
width. nDCG@10 on the test qrels, queries and corpus adapted, truncated and re-normalised.

    nice python bench/ablation.py --npz /work/cache/scifact_minilm.npz \
        --beir /work/shared/datasets/scifact --budget 8 --batch-size 128 --json scifact.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from madapt_cli.adaptor import Adaptor
from madapt_cli.data import read_qrels
from madapt_cli.evaluation import ndcg_at_10
from madapt_cli.smec import SMECOptions, train_smec
from madapt_cli.training import TrainConfig, train_supervised

ROWS = {
    "smec base (all parts off)": {"sequential": False, "ads": False, "xbm": False},
    "+ sequential (SMRL)": {"sequential": True, "ads": False, "xbm": False},
    "+ ADS": {"sequential": False, "ads": True, "xbm": False},
    "+ S-XBM": {"sequential": False, "ads": False, "xbm": True},
    "full SMEC": {"sequential": True, "ads": True, "xbm": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", required=True, help="arrays doc_ids, doc_vectors, query_ids, ...")
    parser.add_argument("--beir", required=True, help="BEIR folder with qrels/train.tsv, test.tsv")
    parser.add_argument("--dims", default="32,64,128,256")
    parser.add_argument("--budget", type=int, default=20, help="epochs per trained row")
    parser.add_argument("--rows", default="all", help="comma-separated row names, or all")
    parser.add_argument("--batch-size", type=int, default=None, help="corpus rows per step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the table here (rewritten after every row)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    raw = np.load(args.npz)
    doc_ids = [str(x) for x in raw["doc_ids"]]
    docs = raw["doc_vectors"].astype(np.float32)
    query_ids = [str(x) for x in raw["query_ids"]]
    queries = raw["query_vectors"].astype(np.float32)
    beir = Path(args.beir)
    train_qrels = read_qrels(beir / "qrels" / "train.tsv")
    test_qrels = read_qrels(beir / "qrels" / "test.tsv")
    dims = [int(d) for d in args.dims.split(",")]
    dimension = docs.shape[1]
    base = TrainConfig(seed=args.seed, device="cpu", train_dims=[*dims, dimension])
    if args.batch_size is not None:
        base.batch_size = args.batch_size
    stages = len(dims)

    def evaluate(adaptor: Adaptor | None) -> dict[str, float]:
        scores = {}
        for dim in dims:
            q = queries if adaptor is None else adaptor.transform(queries, dim=dim)
            d = docs if adaptor is None else adaptor.transform(docs, dim=dim)
            scores[str(dim)] = ndcg_at_10(q, query_ids, d, doc_ids, test_qrels, dim)
        return scores

    def report(record: dict) -> None:
        scores = record.get("ndcg@10", {})
        print(
            f"    {record['stage']:>18} epoch {record['epoch']:2d} val "
            + " ".join(f"{d}:{v:.4f}" for d, v in scores.items()),
            flush=True,
        )

    wanted = None if args.rows == "all" else set(args.rows.split(","))
    table: dict[str, dict] = {}
    names = ["truncation", "Matryoshka-Adaptor", "full SMEC", *ROWS]
    for name in names:
        if name in table or (wanted is not None and name not in wanted):
            continue
        started = time.perf_counter()
        if name == "truncation":
            adaptor = None
        elif name == "Matryoshka-Adaptor":
            stage1 = round(args.budget * 2 / 5)
            config = replace(base, epochs=stage1, supervised_epochs=args.budget - stage1)
            result = train_supervised(
                docs,
                doc_ids,
                queries,
                query_ids,
                train_qrels,
                config,
                on_epoch=report,
                two_stage=stage1 > 0,
            )
            adaptor = Adaptor(result.module, {"method": "matryoshka", "dimension": dimension})
        else:
            parts = ROWS[name]
            per_stage = math.ceil(args.budget / stages) if parts["sequential"] else args.budget
            config = replace(base, supervised_epochs=per_stage)
            options = SMECOptions(to_dim=min(dims), **parts)
            result = train_smec(
                docs,
                config,
                options,
                corpus_ids=doc_ids,
                queries=queries,
                query_ids=query_ids,
                qrels=train_qrels,
                on_epoch=report,
            )
            adaptor = Adaptor(result.module, {"method": "smec", "dimension": dimension})
        seconds = time.perf_counter() - started
        table[name] = {"ndcg@10": evaluate(adaptor), "seconds": round(seconds, 1)}
        print(
            f"{name:>28}: "
            + "  ".join(f"{d}:{v:.4f}" for d, v in table[name]["ndcg@10"].items())
            + f"  ({seconds:.0f}s)",
            flush=True,
        )
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {"npz": args.npz, "budget": args.budget, "dims": dims, "rows": table}, indent=2
                )
            )
    print(markdown(table, dims))


def markdown(table: dict[str, dict], dims: list[int]) -> str:
    lines = [
        "| method | " + " | ".join(str(d) for d in dims) + " | train s |",
        "|---" * (len(dims) + 2) + "|",
    ]
    for name, row in table.items():
        cells = " | ".join(f"{row['ndcg@10'][str(d)]:.4f}" for d in dims)
        lines.append(f"| {name} | {cells} | {row['seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
