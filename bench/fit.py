"""Speed of the Matryoshka-Adaptor fit on synthetic clustered unit vectors, optionally side by
side with another commit's code.

Times the objectives `madapt fit` trains by default, with the same package functions:
``distill`` (unsupervised listwise distillation over unlabelled queries, train_distill),
``distill-corpus`` (the same with corpus rows as anchors: no queries), ``supervised`` (stage 2,
L_rank plus the regularisers, on synthetic judged queries), ``paper`` (the paper's
unsupervised L_topk + L_pair + L_rec) and ``smec`` (supervised SMEC, `madapt fit --mode
supervised`'s default method, on the same judged queries). Reports the exact top-k mining
time and seconds per epoch (an epoch includes its validation: the label-free proxy, or the
held-out queries).

    python bench/fit.py --n 20000 --dim 768 --epochs 2 --threads 1 --against main
    python bench/fit.py --n 1000000 --dim 768 --epochs 10 --device cuda --objective paper

``--against REF`` checks REF out in a temporary git worktree and runs this same script there
in a subprocess (its ``madapt_cli`` on the path), alternating with the current tree, each run
with the same threads; it reports both and the ratio of their seconds per epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

OBJECTIVES = ("distill", "distill-corpus", "supervised", "paper", "smec")
ROOT = Path(__file__).resolve().parent.parent


def clustered_unit_vectors(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Gaussian clusters around random centres with a decaying spectrum, unit-normalised."""
    rng = np.random.default_rng(seed)
    spectrum = np.linspace(2.0, 0.2, dim).astype(np.float32)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32) * spectrum
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # in blocks, to bound temporary memory
        stop = min(n, start + 100_000)
        labels = rng.integers(0, clusters, stop - start)
        block = centres[labels] + 0.5 * rng.standard_normal((stop - start, dim), np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def synthetic_queries(corpus: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Queries near random corpus rows (noise of the clusters' own scale) and their rows."""
    rng = np.random.default_rng(seed + 1)
    rows = rng.choice(len(corpus), size=min(count, len(corpus)), replace=False)
    noise = 0.05 * rng.standard_normal((len(rows), corpus.shape[1]), np.float32)
    queries = corpus[rows] + noise
    return queries / np.linalg.norm(queries, axis=1, keepdims=True), rows


def run_objective(args: argparse.Namespace, objective: str) -> dict:
    """One timed fit of ``objective`` with the ``madapt_cli`` on the path."""
    try:
        from madapt_cli.methods.matryoshka import (
            train_distill,
            train_supervised,
            train_unsupervised,
        )
        from madapt_cli.training.config import TrainConfig
    except ImportError:  # an --against commit from before the package layout (2026-11-23)
        from madapt_cli.training import TrainConfig, train_supervised, train_unsupervised

        train_distill = None

    torch.set_num_threads(args.threads)
    corpus = clustered_unit_vectors(args.n, args.dim, args.clusters, args.seed)
    queries, source_rows = synthetic_queries(corpus, args.queries, args.seed)
    config = TrainConfig(device=args.device, seed=args.seed)
    for epochs in ("epochs", "distill_epochs", "supervised_epochs"):
        if hasattr(config, epochs):
            setattr(config, epochs, args.epochs)
    ignored = []
    for assignment in args.set:
        key, value = assignment.split("=", 1)
        if hasattr(config, key):
            setattr(config, key, json.loads(value))
        else:  # a setting this commit does not have (e.g. an older --against commit)
            ignored.append(key)
    marks: list[float] = []
    stages: list[tuple[str | None, int | None]] = []  # (stage, epoch) of each mark

    def on_epoch(record: dict) -> None:
        if config.device != "cpu" and torch.cuda.is_available():
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
        stages.append((record.get("stage"), record.get("epoch")))

    started = time.perf_counter()
    if objective in ("distill", "distill-corpus"):
        if train_distill is None:
            raise SystemExit(f"this commit has no {objective} objective")
        anchors = queries if objective == "distill" else None
        result = train_distill(corpus, anchors, config, on_epoch=on_epoch)
    elif objective in ("supervised", "smec"):
        corpus_ids = [f"d{i}" for i in range(len(corpus))]
        query_ids = [f"q{i}" for i in range(len(queries))]
        qrels = {q: {corpus_ids[r]: 1} for q, r in zip(query_ids, source_rows, strict=True)}
        if objective == "smec":
            try:
                from madapt_cli.methods.smec import SMECOptions, train_smec
            except ImportError:  # before the package layout
                from madapt_cli.smec import SMECOptions, train_smec

            result = train_smec(
                corpus, config, SMECOptions(), corpus_ids=corpus_ids, queries=queries,
                query_ids=query_ids, qrels=qrels, on_epoch=on_epoch,
            )  # fmt: skip
        else:
            result = train_supervised(
                corpus, corpus_ids, queries, query_ids, qrels, config, two_stage=False,
                on_epoch=on_epoch,
            )  # fmt: skip
    else:
        result = train_unsupervised(corpus, config, on_epoch=on_epoch)
    total = time.perf_counter() - started
    if len({stage for stage, _ in stages}) > 1:  # sequential stages (SMEC's, until 2026-11-24)
        per_epoch = _epochs_of_every_stage(marks, stages, args.epochs)
    else:  # epoch 0 (the start's validation) marks where training begins when there is one
        first = marks[0] if len(marks) > args.epochs else started + result.topk_mining_seconds
        per_epoch = np.diff([first, *marks[-args.epochs :]]).tolist()
    return {
        "objective": objective,
        "topk_mining_seconds": round(result.topk_mining_seconds, 2),
        "seconds_per_epoch": [round(s, 2) for s in per_epoch],
        # after --warm-up epochs: the first epoch of a fit without an epoch-0 validation
        # mark also carries the fit's one-time set-up (rotation, teacher scores)
        "mean_seconds_per_epoch": round(float(np.mean(per_epoch[args.warm_up :])), 3),
        "warm_up_epochs": args.warm_up,
        "total_seconds": round(total, 2),
        "ignored_settings": ignored,
    }


def _epochs_of_every_stage(
    marks: list[float], stages: list[tuple[str | None, int | None]], epochs: int
) -> list[float]:
    """Seconds of epoch e summed over the stages (each from its previous mark in the same
    stage: its epoch 0, the start's validation), for e = 1..epochs; a stage's set-up between
    stages is not counted."""
    per_epoch = [0.0] * epochs
    for i in range(1, len(marks)):
        (stage, epoch), (previous_stage, _) = stages[i], stages[i - 1]
        if stage == previous_stage and epoch is not None and 1 <= epoch <= epochs:
            per_epoch[epoch - 1] += marks[i] - marks[i - 1]
    return per_epoch


def _worker_command(args: argparse.Namespace, objective: str) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--objective", objective]
    for name in ("n", "dim", "epochs", "clusters", "device", "threads", "seed", "queries"):
        command += [f"--{name}", str(getattr(args, name))]
    command += ["--warm-up", str(args.warm_up)]
    for assignment in args.set:
        command += ["--set", assignment]
    return command


def _run_in(tree: Path, args: argparse.Namespace, objective: str) -> dict:
    """This script's worker with ``tree``'s madapt_cli first on the path."""
    threads = str(args.threads)
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": threads}
    env["MKL_NUM_THREADS"] = threads
    done = subprocess.run(
        _worker_command(args, objective), env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"the run in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _git(*arguments: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *arguments], capture_output=True, text=True, check=True
    ).stdout.strip()


def side_by_side(args: argparse.Namespace, objectives: list[str]) -> dict:
    """Each objective ``args.repeats`` times in this tree and in ``args.against``,
    alternating; the ratio of the mean seconds per epoch (against / this)."""
    commit = _git("rev-parse", "--verify", f"{args.against}^{{commit}}")
    # a SIGTERM unwinds like Ctrl-C, so the temporary worktree is always removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="madapt-fit-bench-") as scratch:
        other = Path(scratch) / "tree"
        _git("worktree", "add", "--detach", str(other), commit)
        try:
            rows = []
            for objective in objectives:
                runs: dict[str, list[dict]] = {"this": [], "against": []}
                for _ in range(args.repeats):
                    runs["this"].append(_run_in(ROOT, args, objective))
                    runs["against"].append(_run_in(other, args, objective))
                rows.append({"objective": objective, **_compare(runs)})
                summary = {k: v for k, v in rows[-1].items() if k != "runs"}
                print(json.dumps(summary), file=sys.stderr, flush=True)
        finally:
            _git("worktree", "remove", "--force", str(other))
    return {"against": args.against, "against_commit": commit, "results": rows}


def _compare(runs: dict[str, list[dict]]) -> dict:
    def mean(side: str, key: str) -> float:
        return float(np.mean([run[key] for run in runs[side]]))

    this, against = (
        mean("this", "mean_seconds_per_epoch"),
        mean("against", "mean_seconds_per_epoch"),
    )
    return {
        "this_seconds_per_epoch": round(this, 2),
        "against_seconds_per_epoch": round(against, 2),
        "speedup": round(against / this, 2),
        "this_mining_seconds": round(mean("this", "topk_mining_seconds"), 2),
        "against_mining_seconds": round(mean("against", "topk_mining_seconds"), 2),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--queries", type=int, default=5_000, help="synthetic queries")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--objective",
        default="distill,distill-corpus,supervised",
        help=f"comma-separated, among {', '.join(OBJECTIVES)}",
    )
    parser.add_argument(
        "--set", action="append", default=[], help="TrainConfig override, e.g. --set lr=1e-3"
    )
    parser.add_argument(
        "--warm-up",
        type=int,
        default=0,
        help="epochs left out of the mean (1: the steady epoch, without the fit's set-up)",
    )
    parser.add_argument("--against", help="a git ref to time side by side with this tree")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each, alternating")
    parser.add_argument("--json", help="also write the report to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 0 <= args.warm_up < args.epochs:
        parser.error("--warm-up must be at least 0 and below --epochs")
    objectives = [o for o in args.objective.split(",") if o]
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        raise SystemExit(f"unknown objective {unknown[0]!r}: use {', '.join(OBJECTIVES)}")
    if args.worker:
        print(json.dumps(run_objective(args, objectives[0])))
        return
    report = {
        "n": args.n,
        "dim": args.dim,
        "epochs": args.epochs,
        "threads": args.threads,
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "settings": args.set,
    }
    if args.against:
        report.update(side_by_side(args, objectives))
    else:
        report["results"] = [_run_in(ROOT, args, objective) for objective in objectives]
    report["load_average_at_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
