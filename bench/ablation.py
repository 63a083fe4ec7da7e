"""SMEC ablation, supervised: which part of SMEC helps at which size.

Rows: truncation; the Matryoshka-Adaptor (``train_supervised``, unsupervised stage then
supervised stage); our SMEC trainer with every part off (all sizes at once, in-batch
neighbours, prefix pruning); that base plus each part alone (sequential stages, ADS, S-XBM);
full SMEC (all three parts: the `--method smec` default until 2026-11-30; the default is
now "+ S-XBM"); full SMEC without ADS and without S-XBM. Every trained row gets the same budget of
``--budget`` epochs over the training data (the Matryoshka-Adaptor splits it 1:3 between its
two stages, as `madapt fit`'s defaults of 10 + 30 do; sequential SMEC evenly between its
stages) and the same early stopping (patience 5 on held-out train queries), batch sizes, model
width and start (the corpus' principal rotation unless ``--no-rotation``). nDCG@10 on the test
qrels, queries and corpus adapted, truncated and re-normalised; ``val`` is nDCG@10 of the same
adaptors on the held-out train queries (the early-stopping set), which is what choices between
variants should be made on.

    nice python bench/ablation.py --npz /work/cache/scifact_minilm.npz \
        --beir /work/shared/datasets/scifact --budget 8 --threads 1 --json scifact.json
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

from madapt_cli.data import read_qrels
from madapt_cli.methods import smec_module
from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.methods.matryoshka import train_supervised
from madapt_cli.methods.smec import SMECOptions, train_smec
from madapt_cli.retrieval.evaluate import ndcg_at_10
from madapt_cli.training.config import TrainConfig
from madapt_cli.training.validation import split_training_queries

ROWS = {
    "smec base (all parts off)": {"sequential": False, "ads": False, "xbm": False},
    "+ sequential (SMRL)": {"sequential": True, "ads": False, "xbm": False},
    "+ ADS": {"sequential": False, "ads": True, "xbm": False},
    "+ S-XBM": {"sequential": False, "ads": False, "xbm": True},
    "full SMEC": {"sequential": True, "ads": True, "xbm": True},
    "full SMEC - ADS": {"sequential": True, "ads": False, "xbm": True},
    "full SMEC - S-XBM": {"sequential": True, "ads": True, "xbm": False},
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
    parser.add_argument("--device", default="auto", help="auto (the GPU if any), cpu or cuda")
    parser.add_argument(
        "--no-rotation", action="store_true", help="start every trained row from the identity"
    )
    parser.add_argument("--lr", type=float, default=None, help="SMEC rows' learning rate")
    parser.add_argument(
        "--ads-scale",
        type=float,
        default=None,
        help="override smec_module.ADS_SCALE (investigation)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the table here (rewritten after every row)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.ads_scale is not None:
        smec_module.ADS_SCALE = args.ads_scale  # read at call time by DimensionSelector

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
    base = TrainConfig(
        seed=args.seed,
        device=args.device,
        train_dims=[*dims, dimension],
        rotation=not args.no_rotation,
    )
    if args.batch_size is not None:
        base.batch_size = args.batch_size
    smec_lr = base.lr if args.lr is None else args.lr
    stages = len(dims)
    # the held-out train queries every trained row early-stops on (same seed, same split)
    _, held_out = split_training_queries(doc_ids, queries, query_ids, train_qrels, None, base)

    def evaluate(adaptor: Adaptor | None, qrels: dict, ids: list[str], vectors: np.ndarray):
        scores = {}
        for dim in dims:
            q = vectors if adaptor is None else adaptor.transform(vectors, dim=dim)
            d = docs if adaptor is None else adaptor.transform(docs, dim=dim)
            scores[str(dim)] = ndcg_at_10(q, ids, d, doc_ids, qrels, dim)
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
            stage1 = round(args.budget / 4)
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
            config = replace(base, supervised_epochs=per_stage, lr=smec_lr)
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
        table[name] = {
            "ndcg@10": evaluate(adaptor, test_qrels, query_ids, queries),
            "val": evaluate(adaptor, held_out["qrels"], held_out["query_ids"], held_out["queries"]),
            "seconds": round(seconds, 1),
        }
        print(
            f"{name:>28}: test "
            + "  ".join(f"{d}:{v:.4f}" for d, v in table[name]["ndcg@10"].items())
            + "  val "
            + "  ".join(f"{d}:{v:.4f}" for d, v in table[name]["val"].items())
            + f"  ({seconds:.0f}s)",
            flush=True,
        )
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        "npz": args.npz,
                        "budget": args.budget,
                        "dims": dims,
                        "rotation": base.rotation,
                        "smec_lr": smec_lr,
                        "ads_scale": smec_module.ADS_SCALE,
                        "device": args.device,
                        "rows": table,
                    },
                    indent=2,
                )
            )
    print(markdown(table, dims))
    print("\nval (held-out train queries):")
    print(markdown({k: {**v, "ndcg@10": v["val"]} for k, v in table.items()}, dims))


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
