"""Kill `madapt embed` with SIGKILL mid-run, rerun it, and compare with a clean run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from madapt_cli.store.base import open_store

BATCH = ["--batch-size", "4"]  # requests of 32 texts: the first one lands within seconds


def madapt(*args: str) -> list[str]:
    return [sys.executable, "-m", "madapt_cli", *args]


def stored_rows(out: Path) -> int:
    table = out / "corpus"
    return len(list(table.glob("part-*.parquet"))) if table.is_dir() else 0


def test_sigkill_then_resume_equals_a_clean_run(tmp_path: Path, small_scifact):
    source = small_scifact(96)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    clean = tmp_path / "clean"
    subprocess.run(
        madapt("embed", str(source), "--out", str(clean), *BATCH, "--quiet"),
        check=True,
        env=env,
        capture_output=True,
    )

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        madapt("embed", str(source), "--out", str(killed), *BATCH),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while stored_rows(killed) < 1 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    parts_at_kill = stored_rows(killed)
    assert 1 <= parts_at_kill < 3, "the kill should land mid-run"
    rows_at_kill = open_store(killed).num_rows("corpus")

    resumed = subprocess.run(
        madapt("embed", str(source), "--out", str(killed), *BATCH, "--json"),
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    summary = json.loads(resumed.stdout)
    assert summary["rows_reused"] == rows_at_kill  # nothing stored was embedded again
    assert summary["rows_embedded"] == 96 - rows_at_kill

    clean_ids, clean_vectors = open_store(clean).read_vectors("corpus")
    ids, vectors = open_store(killed).read_vectors("corpus")
    assert len(ids) == len(set(ids)) == 96  # none lost, none duplicated
    assert sorted(ids) == sorted(clean_ids)
    order = [ids.index(i) for i in clean_ids]
    np.testing.assert_allclose(vectors[order], clean_vectors, atol=1e-6)
