"""`madapt export`: how long exporting takes, and the exported sentence-transformers model's
encode throughput next to madapt's own (`Encoder`, what `madapt encode` runs), on the same
texts in one run.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python bench/export.py \
        --store /work/scratch/store --docs /work/shared/datasets/scifact/corpus.jsonl --n 1000

Fits a PCA adaptor on ``--store`` (or takes ``--adaptor``), exports it both ways (timed), then
encodes the first ``--n`` documents (title + text, as `madapt embed` joins them) with the
document role at ``--dim``: each side warmed up on 32 texts first, then ``--repeats`` timed
passes, alternating, best pass reported. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def read_docs(path: Path, n: int) -> list[str]:
    texts = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            title = row.get("title") or None
            texts.append(row["text"] if title is None else f"{title} {row['text']}")
            if len(texts) == n:
                break
    return texts


def timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    value = call()
    return time.perf_counter() - started, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="a madapt store to fit a PCA adaptor on")
    parser.add_argument("--adaptor", type=Path, help="an adaptor (instead of --store)")
    parser.add_argument("--docs", type=Path, required=True, help="BEIR corpus.jsonl")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="madapt-bench-export-"))
    os.environ.setdefault("HF_MODULES_CACHE", str(work / "hf-modules"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    madapt = [sys.executable, "-m", "madapt_cli"]
    adaptor = args.adaptor
    if adaptor is None:
        adaptor = work / "adaptor"
        fit = [*madapt, "fit", str(args.store), "--method", "pca", "--out", str(adaptor)]
        subprocess.run(fit, check=True, capture_output=True)
    result: dict[str, object] = {"adaptor": str(adaptor), "dim": args.dim, "n": args.n}
    for to, out in (("sentence-transformers", work / "st"), ("onnx", work / "a.onnx")):
        command = [*madapt, "export", str(adaptor), "--to", to, "--out", str(out)]
        command += ["--dim", str(args.dim)]
        seconds, _ = timed(lambda c=command: subprocess.run(c, check=True))
        result[f"export_{to}_cli_s"] = round(seconds, 2)

    from sentence_transformers import SentenceTransformer

    from madapt_cli.pipelines.encode import Encoder
    from madapt_cli.pipelines.export import export_sentence_transformers

    seconds, _ = timed(
        lambda: export_sentence_transformers(adaptor, work / "st", dim=args.dim, overwrite=True)
    )
    result["export_sentence_transformers_in_process_s"] = round(seconds, 2)

    texts = read_docs(args.docs, args.n)

    def ready_madapt():  # the Encoder loads its model on first use: time that too
        encoder = Encoder.from_adaptor(adaptor, device="cpu", batch_size=args.batch_size)
        encoder.encode(texts[:1], role="document", dim=args.dim)
        return encoder

    def ready_st():
        model = SentenceTransformer(str(work / "st"), device="cpu", trust_remote_code=True)
        model.encode_document(texts[:1])
        return model

    load_madapt, encoder = timed(ready_madapt)
    load_st, model = timed(ready_st)
    sides = {
        "madapt_encode": lambda t: encoder.encode(t, role="document", dim=args.dim),
        "exported_st": lambda t: model.encode_document(t, batch_size=args.batch_size),
    }
    for side in sides.values():
        side(texts[:32])  # warm-up
    best: dict[str, float] = {}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, side in sides.items():
            seconds, vectors[name] = timed(lambda s=side: s(texts))
            best[name] = min(best.get(name, float("inf")), seconds)
    difference = float(np.abs(vectors["madapt_encode"] - vectors["exported_st"]).max())
    result.update(
        threads=args.threads,
        batch_size=args.batch_size,
        load_and_first_text_madapt_s=round(load_madapt, 2),
        load_and_first_text_exported_st_s=round(load_st, 2),
        madapt_encode_texts_per_s=round(args.n / best["madapt_encode"], 1),
        exported_st_texts_per_s=round(args.n / best["exported_st"], 1),
        ratio_exported_over_madapt=round(best["madapt_encode"] / best["exported_st"], 3),
        max_abs_difference=difference,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
