"""The store under concurrent writers, killed writers, leftovers and damage from outside."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from madapt_cli.cli import app
from madapt_cli.errors import StoreError
from madapt_cli.store.base import embedding_schema, new_table_metadata, open_store, vectors_to_arrow

runner = CliRunner()


def rows(ids: list[str], seed: int = 0, d: int = 8) -> pa.Table:
    vectors = np.random.default_rng(seed).standard_normal((len(ids), d)).astype(np.float32)
    metadata = new_table_metadata(provider="local", model="m", dimension=d, normalized=True)
    schema = embedding_schema(d, metadata=metadata)
    columns = [pa.array(ids), vectors_to_arrow(vectors), pa.array([f"sha-{i}" for i in ids])]
    return pa.Table.from_arrays(columns, schema=schema)


def write_docs(path: Path, n: int, prefix: str = "doc") -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            handle.write(json.dumps({"id": f"{prefix}{i}", "text": f"short text {i}"}) + "\n")
    return path


def madapt(*args: str) -> list[str]:
    return [sys.executable, "-m", "madapt_cli", *args]


WRITER = """
import sys, time
from pathlib import Path
import numpy as np, pyarrow as pa
from madapt_cli.store.base import embedding_schema, open_store, vectors_to_arrow

path, worker, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
while not go.exists():
    time.sleep(0.005)
store = open_store(path)
schema = embedding_schema(8, metadata={"provider": "local", "model": "m", "dimension": 8})
for batch in range(40):
    ids = [f"{worker}-{batch}-{k}" for k in range(2)]
    if batch % 4 == 3:  # re-write two earlier rows: superseded rows for compaction to drop
        ids += [f"{worker}-{batch - 3}-0", f"{worker}-{batch - 2}-1"]
    vectors = np.random.default_rng(batch).standard_normal((len(ids), 8)).astype(np.float32)
    columns = [pa.array(ids), vectors_to_arrow(vectors), pa.array(["sha"] * len(ids))]
    store.append("corpus", pa.Table.from_arrays(columns, schema=schema))
    if batch % 8 == 7:
        store.retain("corpus")
"""


def test_concurrent_writer_processes_lose_no_row(tmp_path: Path):
    # Three processes append (and compact) one table at once: every row of every one stays.
    path = tmp_path / "store"
    open_store(path, "parquet", create=True)
    go = tmp_path / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), f"w{w}", str(go)],
            stderr=subprocess.PIPE,
        )
        for w in range(3)
    ]
    time.sleep(1.0)  # let them all import and wait at the start line
    go.touch()
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr.decode()
    store = open_store(path)
    ids = store.read_vectors("corpus")[0]
    expected = {f"w{w}-{b}-{k}" for w in range(3) for b in range(40) for k in range(2)}
    assert len(ids) == len(set(ids)) and set(ids) == expected


def test_two_concurrent_embed_runs_into_one_table_both_succeed_with_every_row(tmp_path: Path):
    # The report: two `madapt embed` runs of one source into one store at once.
    n = 60
    source = write_docs(tmp_path / "docs.jsonl", n)
    out = tmp_path / "store"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = madapt("embed", str(source), "--out", str(out), "--batch-size", "2", "--json")
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr.decode()
        assert json.loads(stdout)["tables"][0]["rows"] == n
    store = open_store(out)
    ids, vectors = store.read_vectors("corpus")
    assert sorted(ids) == sorted(f"doc{i}" for i in range(n))  # none lost, none twice
    assert store.num_rows("corpus") == n
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    again = runner.invoke(app, ["embed", str(source), "--out", str(out), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["rows_embedded"] == 0  # every row stored and current


def test_many_threads_appending_through_separate_store_objects_keep_every_row(tmp_path):
    # Separate Store objects lock like separate processes do (one flock each).
    import threading

    path = tmp_path / "store"
    open_store(path, "parquet", create=True)
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        store = open_store(path)
        try:
            for batch in range(15):
                store.append("corpus", rows([f"w{worker}-{batch}-{k}" for k in range(3)]))
                if batch % 5 == 4:
                    store.retain("corpus")
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert open_store(path).num_rows("corpus") == 4 * 15 * 3


def test_a_lock_held_by_a_killed_process_does_not_block_the_next_writer(tmp_path: Path):
    path = tmp_path / "store"
    open_store(path, "parquet", create=True).append("corpus", rows(["a"]))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from madapt_cli.store.base import open_store
                store = open_store({str(path)!r})
                with store.locked():
                    print("locked", flush=True)
                    time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        env={**os.environ},
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    open_store(path).append("corpus", rows(["b"], seed=1))
    assert time.monotonic() - started < 5
    assert sorted(open_store(path).read_vectors("corpus")[0]) == ["a", "b"]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_staging_leftovers_are_removed_by_the_next_write_and_never_a_table(tmp_path: Path):
    path = tmp_path / "store"
    store = open_store(path, "parquet", create=True)
    store.append("corpus", rows(["a"]))
    hex32, dead = "0123456789abcdef" * 2, dead_pid()
    file_leftover = path / "corpus" / f".tmp-{dead}-{hex32}.parquet"  # a killed append
    file_leftover.write_bytes(b"half a file")
    old_leftover = path / "corpus" / f".tmp-{hex32}.parquet"  # named by an older release
    old_leftover.write_bytes(b"half a file")
    live = path / "corpus" / f".tmp-{os.getpid()}-{hex32}.parquet"  # a live writer's: kept
    live.write_bytes(b"being written")
    dir_leftover = path / f".tmp-queries-{dead}-{hex32}"  # a killed write_table
    dir_leftover.mkdir()
    (dir_leftover / "base-00000001.parquet").write_bytes(b"\0" * 10)
    retired = path / f".corpus.old-{dead}-{hex32}"  # a swap killed before its rmtree
    retired.mkdir()
    assert open_store(path).tables() == ["corpus"]
    open_store(path).append("corpus", rows(["b"], seed=1))
    for leftover in (file_leftover, old_leftover, dir_leftover, retired):
        assert not leftover.exists(), leftover
    assert live.exists()
    assert sorted(open_store(path).read_vectors("corpus")[0]) == ["a", "b"]


def test_a_store_without_marker_holding_only_leftovers_is_not_a_store(tmp_path: Path):
    path = tmp_path / "notastore"
    (path / ".tmp-corpus-0123abcd").mkdir(parents=True)
    (path / ".tmp-corpus-0123abcd" / "base-00000001.parquet").write_bytes(b"x")
    with pytest.raises(StoreError, match="not a madapt store"):
        open_store(path)


def truncate_a_part(path: Path) -> Path:
    part = sorted((path / "corpus").glob("part-*.parquet"))[0]
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    return part


@pytest.mark.parametrize("command", ["info", "embed"])
def test_a_truncated_part_is_a_one_line_store_error_naming_the_file(tmp_path: Path, command):
    path = tmp_path / "store"
    store = open_store(path, "parquet", create=True)
    store.append("corpus", rows(["a", "b"]))
    store.append("corpus", rows(["c"], seed=1))
    part = truncate_a_part(path)
    with pytest.raises(StoreError, match="unreadable Parquet file"):
        open_store(path).read_vectors("corpus")
    if command == "info":
        result = runner.invoke(app, ["info", str(path)])
    else:
        source = write_docs(tmp_path / "docs.jsonl", 3)
        result = runner.invoke(app, ["embed", str(source), "--out", str(path), "--quiet"])
    assert result.exit_code == 2, result.output
    assert part.name in result.output and "Traceback" not in result.output
