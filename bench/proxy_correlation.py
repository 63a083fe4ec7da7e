"""Spearman rank correlation between the label-free proxies and test nDCG@10 across the
checkpoints (epochs) of `bench/quality.py --json` runs of distill / distill-corpus.

    python bench/proxy_correlation.py sf_*.json

Per size m: the checkpoints of every run given (all settings pooled) as points (proxy at m,
test nDCG@10 at m); proxies: held-out L_distill (negated: lower is better) and overlap@10.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def spearman(x: list[float], y: list[float]) -> float:
    def ranks(values: list[float]) -> np.ndarray:
        array = np.asarray(values, float)
        order = array.argsort()
        rank = np.empty(len(array))
        rank[order] = np.arange(len(array))
        for value in np.unique(array):  # ties share their mean rank
            tied = array == value
            rank[tied] = rank[tied].mean()
        return rank

    a, b = ranks(x), ranks(y)
    return float(np.corrcoef(a, b)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--each", action="store_true", help="one table per run, not pooled")
    args = parser.parse_args()
    if args.each:
        for path in args.runs:
            print(f"\n{path}")
            table([path])
    else:
        table(args.runs)


def table(runs: list[str]) -> None:
    points: dict[str, dict[str, list[float]]] = {}
    for path in runs:
        for records in json.load(open(path))["curves"].values():  # noqa: SIM115 - a script
            for record in records:
                test = record.get("monitor ndcg@10") or {}
                for size, value in test.items():
                    if size not in record.get("held-out kl", {}):
                        continue
                    entry = points.setdefault(size, {"test": [], "kl": [], "overlap": []})
                    entry["test"].append(value)
                    entry["kl"].append(-record["held-out kl"][size])
                    entry["overlap"].append(record["overlap@10"][size])
    selection_test, selection_score, selection_overlap = [], [], []
    for path in runs:
        for records in json.load(open(path))["curves"].values():  # noqa: SIM115 - a script
            for record in records:
                test = record.get("monitor ndcg@10") or {}
                sizes = [s for s in record.get("held-out kl", {}) if s in test]
                chosen = [s for s in sizes if int(s) < max(int(x) for x in sizes)]
                if chosen:
                    selection_test.append(float(np.mean([test[s] for s in chosen])))
                    selection_score.append(
                        -float(np.mean([record["held-out kl"][s] for s in chosen]))
                    )
                    selection_overlap.append(
                        float(np.mean([record["overlap@10"][s] for s in chosen]))
                    )
    print("| size | checkpoints | Spearman(-held-out KL, test) | Spearman(overlap@10, test) |")
    print("|---:|---:|---:|---:|")
    for size in sorted(points, key=int):
        entry = points[size]
        print(
            f"| {size} | {len(entry['test'])} | {spearman(entry['kl'], entry['test']):.2f} | "
            f"{spearman(entry['overlap'], entry['test']):.2f} |"
        )
    if len(selection_score) > 2:
        print(
            f"| mean below full size (the choice) | {len(selection_score)} | "
            f"{spearman(selection_score, selection_test):.2f} | "
            f"{spearman(selection_overlap, selection_test):.2f} |"
        )


if __name__ == "__main__":
    main()
