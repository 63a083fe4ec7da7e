#!/usr/bin/env bash
# An example shell pipeline: embed, check, and feed the JSON summaries to other tools.
# Every step prints JSON on stdout (--json) and progress/logs on stderr, and exits non-zero on
# failure, so `set -e` stops the pipeline at the first problem. Rerunning resumes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
store=${1:-stores/scifact}

# 1. Embed the bundled SciFact example (corpus + queries) with the offline MiniLM model.
madapt embed "$here/scifact" --out "$store" --json > embed-summary.json
python3 -c 'import json,sys; s=json.load(open("embed-summary.json")); print(f"embedded {s[\"rows_embedded\"]}, reused {s[\"rows_reused\"]}", file=sys.stderr)'

# 2. What is in the store?
madapt info "$store" --json | python3 -c 'import json,sys; [print(t["name"], t["rows"]) for t in json.load(sys.stdin)["tables"]]'
