#!/usr/bin/env bash
# An example shell pipeline: embed, fit, evaluate (with a quality gate) and apply, feeding the
# JSON summaries to other tools.
# Every step prints JSON on stdout (--json) and progress/logs on stderr, and exits non-zero on
# failure, so `set -e` stops the pipeline at the first problem. Rerunning resumes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
store=${1:-stores/scifact}

# 1. Embed the bundled SciFact example (corpus + queries) with the offline MiniLM model.
madapt embed "$here/scifact" --out "$store" --json > embed-summary.json
python3 -c 'import json,sys; s=json.load(open("embed-summary.json")); print("embedded %d, reused %d" % (s["rows_embedded"], s["rows_reused"]), file=sys.stderr)'

# 2. What is in the store?
madapt info "$store" --json | python3 -c 'import json,sys; [print(t["name"], t["rows"]) for t in json.load(sys.stdin)["tables"]]'

# 3. Train a supervised adaptor on the train judgements (a rerun replaces it).
madapt fit "$store" --mode supervised --qrels "$here/scifact/qrels/train.tsv" \
    --out adaptors/scifact-sup --json > fit-summary.json

# 4. nDCG@10 at 64 and 128 dimensions, one "method dim ndcg" line each.
madapt eval "$store" --qrels "$here/scifact/qrels/test.tsv" --dims 64,128 \
    --adaptor adaptors/scifact-sup --metrics ndcg@10 --json \
  | python3 -c 'import json,sys; [print(r["method"], r["dim"], round(r["metrics"]["ndcg@10"], 4)) for r in json.load(sys.stdin)["results"]]'

# 5. A quality gate for CI: the adaptor at 64 dimensions, and the best cell within 16 bytes
#    per vector (any method and size, stored as float32, float16, int8 or binary codes).
#    Prints the table, then exits 5 when a requirement fails (`set -e` stops the pipeline
#    there); with --json, "requirements" holds each verdict and "failed" the failed ones.
madapt eval "$store" --qrels "$here/scifact/qrels/test.tsv" --dims 64,128 \
    --adaptor adaptors/scifact-sup --metrics ndcg@10 --precision float16,int8,binary \
    --require "scifact-sup@64:ndcg@10>=0.66" --require "*@16B:ndcg@10>=0.60"

# 6. Vectors for a vector database: 128 adapted dimensions per row.
madapt apply adaptors/scifact-sup "$store" --dims 128 --out "$store-128" --overwrite --json \
    > apply-summary.json
