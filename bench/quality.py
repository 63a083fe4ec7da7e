"""Retrieval quality of truncation, PCA and Matryoshka adaptors on a BEIR dataset.

Reads pre-computed embeddings from an npz (arrays doc_ids, doc_vectors, query_ids,
query_vectors) and the BEIR qrels, trains with the same package functions as `madapt fit`
(train_unsupervised / train_supervised / fit_pca) and prints nDCG@10 on the test qrels, with
queries and corpus both adapted, truncated and re-normalised.

    python bench/quality.py --npz /work/cache/scifact_minilm.npz \
        --beir /work/shared/datasets/scifact --methods truncate,pca,unsupervised,supervised

Methods: truncate, pca, rotation (the untrained start, `--epochs 0`), unsupervised
(`--objective paper`), distill (`--objective distill`: the unlabelled queries of
``--query-ids``, default the train qrels' queries, judgements ignored), distill-corpus
(corpus rows as anchors, no queries), supervised, smec (``train_smec`` on the train qrels
with the `madapt fit --method smec` defaults; ``--smec-set sequential=false`` overrides an
``SMECOptions`` field). For distill and distill-corpus the test
nDCG@10 of every epoch is recorded beside the label-free proxy (never used to choose), so
``--json`` holds what the proxy/test correlation needs. Distill methods are scored as
`madapt fit` writes them (the untrained start's prefix from ``start_from_dim`` up) and, as
``METHOD:f``, with f at every size.

``--extra-anchors NPZ`` (``title_vectors``, e.g. the documents' titles embedded as
queries): more unlabelled anchors beside the queries, with their own L_distill term
(``--set distill_extra_weight=0.3``, ``--set 'distill_extra_dims=[32,64]'``).

``--labelled-validation 0.3`` (for choosing defaults without test): 30% of the train qrels'
queries (one fixed split, the same for every seed and setting) are held out from the anchors
(and from the supervised methods' training qrels) and their nDCG@10 is printed and stored
(``labelled_validation``) beside the test one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from madapt_cli.data import read_qrels
from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.methods.matryoshka import (
    new_adaptor_module,
    start_from_dim,
    train_distill,
    train_supervised,
    train_unsupervised,
)
from madapt_cli.methods.pca import fit_pca
from madapt_cli.methods.smec import SMECOptions, train_smec
from madapt_cli.retrieval.evaluate import ndcg_at_10
from madapt_cli.training.anchors import read_query_ids
from madapt_cli.training.config import TrainConfig


def evaluate(adaptor: Adaptor | None, data: dict, qrels: dict, dims: list[int]) -> dict[str, float]:
    results = {}
    for dim in dims:
        if adaptor is None:
            corpus, queries = data["doc_vectors"], data["query_vectors"]
        else:
            corpus = adaptor.transform(data["doc_vectors"], dim=dim)
            queries = adaptor.transform(data["query_vectors"], dim=dim)
        results[str(dim)] = ndcg_at_10(
            queries, data["query_ids"], corpus, data["doc_ids"], qrels, dim
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", required=True)
    parser.add_argument("--beir", required=True, help="BEIR folder with qrels/train.tsv, test.tsv")
    parser.add_argument("--methods", default="truncate,pca,unsupervised,supervised")
    parser.add_argument("--dims", default="32,64,128,256,384")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--supervised-epochs", type=int, default=None)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="TrainConfig override, e.g. --set lr=5e-4 (repeatable)",
    )
    parser.add_argument(
        "--smec-set",
        action="append",
        default=[],
        help="SMECOptions override for the smec method, e.g. --smec-set ads=false",
    )
    parser.add_argument(
        "--query-ids",
        help="distill: the unlabelled queries to learn from (qrels TSV or one id a line; "
        "default the train qrels' queries)",
    )
    parser.add_argument(
        "--labelled-validation",
        type=float,
        default=0.0,
        help="distill: hold out this fraction of the train qrels' queries (a fixed split, the "
        "same for every seed and setting) as labelled validation: never anchors, never test; "
        "their nDCG@10 is reported beside the test one (what chooses defaults)",
    )
    parser.add_argument(
        "--extra-anchors",
        help="distill: an npz whose 'title_vectors' (or 'vectors') are more unlabelled anchors "
        "(e.g. the documents' titles) with their own L_distill term (TrainConfig "
        "distill_extra_weight, distill_extra_dims); never held out, never test queries",
    )
    parser.add_argument(
        "--extra-fraction",
        type=float,
        default=1.0,
        help="distill: use this fraction of --extra-anchors, drawn with --seed",
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    raw = np.load(args.npz)
    data = {
        "doc_ids": [str(x) for x in raw["doc_ids"]],
        "doc_vectors": raw["doc_vectors"].astype(np.float32),
        "query_ids": [str(x) for x in raw["query_ids"]],
        "query_vectors": raw["query_vectors"].astype(np.float32),
    }
    beir = Path(args.beir)
    test_qrels = read_qrels(beir / "qrels" / "test.tsv")
    train_qrels = read_qrels(beir / "qrels" / "train.tsv")
    dims = [int(d) for d in args.dims.split(",")]
    config = TrainConfig(seed=args.seed, device="cpu")
    if args.epochs is not None:
        config.epochs = args.epochs
    if args.supervised_epochs is not None:
        config.supervised_epochs = args.supervised_epochs
    for assignment in args.set:
        key, value = assignment.split("=", 1)
        setattr(config, key, json.loads(value))
    # validation for the unsupervised fit: train queries (never the test ones)
    train_ids = [q for q in data["query_ids"] if q in train_qrels]
    row = {q: i for i, q in enumerate(data["query_ids"])}
    unsupervised_validation = {
        "corpus_ids": data["doc_ids"],
        "query_ids": train_ids,
        "queries": data["query_vectors"][[row[q] for q in train_ids]],
        "qrels": {q: train_qrels[q] for q in train_ids},
    }

    def report(record: dict) -> None:
        scores = record.get("ndcg@10") or record.get("monitor ndcg@10") or {}
        proxy = record.get("overlap@10") or {}
        kl = record.get("held-out kl") or {}
        loss = record["loss"]
        print(
            f"  {record['stage']:>12} epoch {record['epoch']:3d} "
            f"loss {'-' if loss is None else f'{loss:.4f}'} val "
            + " ".join(f"{d}:{v:.4f}" for d, v in scores.items())
            + (" overlap " + " ".join(f"{d}:{v:.3f}" for d, v in proxy.items()) if proxy else "")
            + (" kl " + " ".join(f"{d}:{v:.3f}" for d, v in kl.items()) if kl else ""),
            flush=True,
        )

    anchor_ids = read_query_ids(args.query_ids) if args.query_ids else train_ids
    anchor_ids = [q for q in data["query_ids"] if q in set(anchor_ids)]
    validation_ids: list[str] = []
    if args.labelled_validation > 0:
        split = np.random.default_rng(12345).permutation(len(train_ids))
        held = round(len(train_ids) * args.labelled_validation)
        validation_ids = sorted(train_ids[i] for i in split[:held])
        anchor_ids = [q for q in anchor_ids if q not in set(validation_ids)]
    leaked = set(anchor_ids) & set(test_qrels)
    if leaked:
        raise SystemExit(f"{len(leaked)} of the --query-ids are test queries")
    test_ids = [q for q in data["query_ids"] if q in test_qrels]
    test_monitor = {
        "corpus_ids": data["doc_ids"],
        "query_ids": test_ids,
        "queries": data["query_vectors"][[row[q] for q in test_ids]],
        "qrels": {q: test_qrels[q] for q in test_ids},
    }
    curves: dict[str, list] = {}
    table: dict[str, dict[str, float]] = {}
    validation_table: dict[str, dict[str, float]] = {}
    validation_qrels = {q: train_qrels[q] for q in validation_ids}
    # the supervised methods never see the validation queries' labels (before 2026-11-30
    # they trained on them, so their labelled_validation was training data)
    fit_qrels = {q: judged for q, judged in train_qrels.items() if q not in validation_qrels}
    timings: dict[str, float] = {}
    for method in args.methods.split(","):
        started = time.perf_counter()
        if method == "truncate":
            adaptor = None
        elif method == "pca":
            module = fit_pca([data["doc_vectors"]], data["doc_vectors"].shape[1])
            adaptor = Adaptor(module, {"method": "pca", "dimension": module.mean.shape[0]})
        elif method == "rotation":
            vectors = torch.nn.functional.normalize(torch.from_numpy(data["doc_vectors"]), dim=-1)
            adaptor = _wrap(new_adaptor_module(vectors, config).eval(), data)
        elif method in ("distill", "distill-corpus"):
            anchors = None
            if method == "distill":
                anchors = data["query_vectors"][[row[q] for q in anchor_ids]]
                print(f"  {len(anchors)} unlabelled queries as anchors", flush=True)
            result = train_distill(
                data["doc_vectors"],
                anchors,
                config,
                None,
                report,
                monitor_data=test_monitor,
                extra_anchors=_extra_anchors(args.extra_anchors, args.extra_fraction, args.seed),
            )
            curves[method] = result.history
            # as `madapt fit` records it: the start's prefix from start_from_dim up
            start_from = start_from_dim(config, data["doc_vectors"].shape[1])
            adaptor = _wrap(result.module, data, start_from)
            if start_from is not None:  # and f at every size, for the record
                everywhere = _wrap(result.module, data)
                table[f"{method}:f"] = evaluate(everywhere, data, test_qrels, dims)
                if validation_ids:
                    validation_table[f"{method}:f"] = evaluate(
                        everywhere, data, validation_qrels, dims
                    )
        elif method == "unsupervised":
            result = train_unsupervised(
                data["doc_vectors"], config, unsupervised_validation, report
            )
            adaptor = _wrap(result.module, data)
        elif method == "supervised":
            result = train_supervised(
                data["doc_vectors"],
                data["doc_ids"],
                data["query_vectors"],
                data["query_ids"],
                fit_qrels,
                config,
                on_epoch=report,
            )
            adaptor = _wrap(result.module, data)
        elif method == "smec":
            options = SMECOptions()
            for assignment in args.smec_set:
                key, value = assignment.split("=", 1)
                setattr(options, key, json.loads(value))
            result = train_smec(
                data["doc_vectors"],
                config,
                options,
                corpus_ids=data["doc_ids"],
                queries=data["query_vectors"],
                query_ids=data["query_ids"],
                qrels=fit_qrels,
                on_epoch=report,
            )
            adaptor = Adaptor(
                result.module, {"method": "smec", "dimension": data["doc_vectors"].shape[1]}
            )
        else:
            raise SystemExit(f"unknown method {method}")
        timings[method] = time.perf_counter() - started
        table[method] = evaluate(adaptor, data, test_qrels, dims)
        if validation_ids:
            validation_table[method] = evaluate(adaptor, data, validation_qrels, dims)
            print(
                f"{method:>12} labelled validation ({len(validation_ids)} train queries): "
                + "  ".join(f"{d}:{v:.4f}" for d, v in validation_table[method].items()),
                flush=True,
            )
        print(
            f"{method:>12}: "
            + "  ".join(f"{d}:{v:.4f}" for d, v in table[method].items())
            + f"  ({timings[method]:.0f}s)",
            flush=True,
        )
    print(json.dumps({"npz": args.npz, "results": table, "seconds": timings}, indent=2))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "results": table,
                    "labelled_validation": validation_table,
                    "seconds": timings,
                    "config": vars(args),
                    "curves": curves,
                },
                indent=2,
            )
        )


def _extra_anchors(path: str | None, fraction: float, seed: int) -> np.ndarray | None:
    if not path:
        return None
    raw = np.load(path)
    vectors = raw["title_vectors" if "title_vectors" in raw else "vectors"].astype(np.float32)
    count = round(len(vectors) * fraction)
    chosen = np.sort(np.random.default_rng(seed).permutation(len(vectors))[:count])
    print(f"  {count} extra anchors from {path}", flush=True)
    return vectors[chosen]


def _wrap(module: torch.nn.Module, data: dict, start_from: int | None = None) -> Adaptor:
    config = {"method": "matryoshka", "dimension": data["doc_vectors"].shape[1]}
    if start_from is not None:
        config["start_from_dim"] = start_from
    return Adaptor(module, config)


if __name__ == "__main__":
    main()
