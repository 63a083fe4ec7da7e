"""Search adapted vectors in LanceDB: embed a few SciFact documents, fit a PCA adaptor, apply
it into a LanceDB store, encode a query with the same adaptor and search vector_128 by cosine.

    python examples/search_lancedb.py --docs 300 --dim 128 --work /tmp/madapt-search \\
        "What lowers blood pressure?"

The same from the shell, once the store exists:

    madapt encode --adaptor WORK/adaptor --dim 128 "What lowers blood pressure?" > q.jsonl
    # then search WORK/applied/corpus.lance with LanceDB (or DuckDB over a Parquet store:
    # list_cosine_similarity(vector_128, ?::FLOAT[128]))
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def madapt(*args: object) -> None:
    subprocess.run([sys.executable, "-m", "madapt_cli", *map(str, args)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("query", nargs="?", default="What lowers blood pressure?")
    parser.add_argument("--docs", type=int, default=300, help="SciFact documents to index")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("madapt-search"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    docs = work / "docs.jsonl"
    with gzip.open(HERE / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as source:
        rows = [json.loads(line) for _, line in zip(range(args.docs), source, strict=False)]
    docs.write_text(
        "".join(
            json.dumps({"id": r["_id"], "text": r["title"] + " " + r["text"]}) + "\n" for r in rows
        )
    )
    titles = {r["_id"]: r["title"] for r in rows}

    # 1. embed (keeping the text), 2. fit a PCA adaptor, 3. apply it into a LanceDB store
    madapt(
        "embed", docs, "--out", work / "store", "--store-text", "--device", args.device, "--quiet"
    )
    madapt("fit", work / "store", "--method", "pca", "--out", work / "adaptor", "--overwrite")
    madapt(
        "apply", work / "adaptor", work / "store", "--dims", args.dim,
        "--format", "lance", "--out", work / "applied", "--overwrite",
    )  # fmt: skip

    # 4. encode the query exactly as the corpus was embedded, through the same adaptor
    from madapt_cli import Encoder

    with Encoder.from_adaptor(work / "adaptor", device=args.device) as encoder:
        query = encoder.encode([args.query], role="query", dim=args.dim)[0]

    # 5. cosine search of vector_<dim> in LanceDB
    import lancedb

    table = lancedb.connect(str(work / "applied")).open_table("corpus")
    hits = (
        table.search(query.tolist(), vector_column_name=f"vector_{args.dim}")
        .metric("cosine")
        .limit(args.top)
        .to_list()
    )
    print(f"top {args.top} of {args.docs} documents for {args.query!r} ({args.dim}-d):")
    for hit in hits:
        print(f"{1 - hit['_distance']:.4f}  {hit['id']}  {titles[hit['id']]}")


if __name__ == "__main__":
    main()
