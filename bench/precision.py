"""int8 calibration and scoring choices, measured: which per-dimension ranges, and which
symmetric int8 score, keep the most nDCG@10.

For the original vectors (truncate) and each ``--adaptor``, at each size of ``--dims``: the
stored vectors (prefix, re-normalised) are encoded to int8 with ranges fitted on the corpus by
each method of ``--calibrations`` (``minmax``, ``percentile:P``), and scored

* ``sym``: query encoded with the same ranges, dot product of the decoded vectors (what
  `madapt eval --scoring symmetric` reports);
* ``asym``: the float32 query against the decoded documents (``--scoring asymmetric``);
* ``raw``: the dot product of the raw int8 codes (an engine that multiplies codes as they
  are, ignoring the per-dimension offsets and steps).

Prints one JSON document: nDCG@10 per (method, size, calibration, scoring), and the float32
figure of each (method, size) for reference.

    OMP_NUM_THREADS=1 python bench/precision.py /work/scratch/store \\
        --qrels /work/shared/datasets/scifact/qrels/test.tsv --adaptor sup --adaptor unsup
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

import numpy as np

from madapt_cli.data import read_qrels
from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.retrieval.metrics import Judgments, as_metrics, score_indices, trec_tie_order
from madapt_cli.retrieval.precision import encode_corpus, precision_topk
from madapt_cli.retrieval.quantize import fit_int8_calibration, quantize_int8
from madapt_cli.retrieval.search import search_topk
from madapt_cli.store.base import open_store
from madapt_cli.util.vectors import normalize_rows

METRIC = as_metrics("ndcg@10")


def _ndcg(scores: np.ndarray, indices: np.ndarray, judgments: Judgments, ids: list[str]) -> float:
    ranked = trec_tie_order(scores, indices, ids)
    return round(float(score_indices(ranked, judgments, METRIC)["ndcg@10"].mean()), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("store")
    parser.add_argument("--qrels", required=True)
    parser.add_argument("--adaptor", action="append", default=[])
    parser.add_argument("--dims", default="64,128,256")
    parser.add_argument(
        "--calibrations",
        default="minmax,percentile:0.01,percentile:0.1,percentile:0.5,percentile:1",
    )
    args = parser.parse_args()

    store = open_store(args.store)
    qrels = read_qrels(args.qrels)
    corpus_ids, corpus = store.read_vectors("corpus")
    all_query_ids, all_queries = store.read_vectors("queries")
    rows = [i for i, q in enumerate(all_query_ids) if q in qrels]
    query_ids = [all_query_ids[i] for i in rows]
    queries = all_queries[rows]
    judgments = Judgments.build(query_ids, corpus_ids, qrels, 10)
    methods = {"truncate": (queries, corpus)}
    for path in args.adaptor:
        adaptor = Adaptor.load(path)
        methods[adaptor.name] = (adaptor.transform(queries), adaptor.transform(corpus))
    sizes = [int(d) for d in args.dims.split(",")]
    results = []
    for name, (mapped_queries, mapped_corpus) in methods.items():
        for dim in [*sizes, *([corpus.shape[1]] if name == "truncate" else [])]:
            q = normalize_rows(mapped_queries[:, :dim])
            c = normalize_rows(mapped_corpus[:, :dim])
            entry = {
                "method": name,
                "dim": dim,
                "float32": _ndcg(*search_topk(q, c, 10), judgments, corpus_ids),
            }
            for method in args.calibrations.split(","):
                calibration = fit_int8_calibration(c, method)
                encoded = encode_corpus(c, "int8", calibration)
                raw = search_topk(
                    quantize_int8(q, calibration).astype(np.float32),
                    encoded.codes.astype(np.float32),
                    10,
                )
                entry[method] = {
                    scoring[:4]: _ndcg(
                        *precision_topk(q, encoded, 10, scoring), judgments, corpus_ids
                    )
                    for scoring in ("symmetric", "asymmetric")
                } | {"raw": _ndcg(*raw, judgments, corpus_ids)}
            results.append(entry)
            print(json.dumps(entry), flush=True)
    print(
        json.dumps(
            {
                "bench": "precision",
                "date": datetime.now(UTC).date().isoformat(),
                "store": args.store,
                "qrels": args.qrels,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
