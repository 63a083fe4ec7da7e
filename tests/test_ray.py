"""`--engine ray` on a local 2-CPU Ray (one per module): the same rows as the local engine,
exactly once even when an actor is killed, bad input refused before dispatch, and clear
errors for a missing Ray or a --ray-address where nothing answers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO
from test_apply import make_adaptor, make_store
from typer.testing import CliRunner

from madapt_cli.cli import app
from madapt_cli.pipelines import ray_apply, ray_embed
from madapt_cli.pipelines.apply import apply_adaptor
from madapt_cli.pipelines.embed import run_embed
from madapt_cli.pipelines.embed_plan import VectorOptions
from madapt_cli.pipelines.import_vectors import import_vectors
from madapt_cli.pipelines.ray_apply import apply_adaptor_ray
from madapt_cli.pipelines.ray_embed import ProviderSpec, run_embed_ray
from madapt_cli.pipelines.ray_engine import RayOptions
from madapt_cli.pipelines.ray_import import import_vectors_ray
from madapt_cli.providers.base import build_provider
from madapt_cli.store.base import open_store
from madapt_cli.vector_sources import VectorFields

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module: 2 CPUs, no dashboard (the engine joins it)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _descends_from_us(pid: int) -> bool:
    """Whether ``pid`` is a descendant of this test process (the local Ray it started)."""
    ours = os.getpid()
    while pid > 1:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        pid = int(next(line for line in status.splitlines() if line.startswith("PPid:")).split()[1])
        if pid == ours:
            return True
    return False


def _actor_pids(name: str) -> list[int]:
    """The processes of this test's Ray whose title names ``name`` (Ray retitles workers
    ``ray::MapWorker(MapBatches(Name))``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"MapBatches({name})" in title and _descends_from_us(int(entry.name)):
            found.append(int(entry.name))
    return found


def test_apply_on_ray_writes_what_the_local_engine_writes(tmp_path):
    written = make_store(tmp_path / "in", {"corpus": 1203, "queries": 57}, parts=3)
    make_adaptor(tmp_path / "ad")
    apply_adaptor(tmp_path / "ad", tmp_path / "in", "4,8", tmp_path / "local")
    summary = apply_adaptor_ray(
        tmp_path / "ad",
        tmp_path / "in",
        "4,8",
        tmp_path / "ray",
        ray_options=RayOptions(workers=2),
        chunk_rows=100,
    )
    assert summary.tables == {"corpus": 1203, "queries": 57}
    local, on_ray = open_store(tmp_path / "local"), open_store(tmp_path / "ray")
    assert on_ray.tables() == ["corpus", "queries"]
    for table, (ids, _) in written.items():
        assert on_ray.schema(table) == local.schema(table)  # the metadata included
        for column in ("vector_4", "vector_8"):
            local_ids, expected = local.read_vectors(table, column)
            ray_ids, got = on_ray.read_vectors(table, column)
            assert ray_ids == local_ids == ids
            np.testing.assert_allclose(got, expected, atol=1e-6)


def test_a_killed_actor_loses_and_duplicates_no_row(tmp_path, monkeypatch):
    written = make_store(tmp_path / "in", {"corpus": 6000}, dimension=16, parts=2)
    make_adaptor(tmp_path / "ad")
    apply_adaptor(tmp_path / "ad", tmp_path / "in", "8", tmp_path / "local")
    # every 20-row block its own output, so the driver has some blocks of a fragment (a row
    # group of 3,000 rows) when its actor is killed: the retried fragment must not repeat them
    monkeypatch.setattr(ray.data.DataContext.get_current(), "target_max_block_size", 1024)
    killed: list[int] = []

    def kill_the_actors(event) -> None:
        if killed or event.finished:
            return
        pids = _actor_pids("ApplyWorker")
        assert pids, "no actor process found"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        killed.extend(pids)

    apply_adaptor_ray(
        tmp_path / "ad",
        tmp_path / "in",
        "8",
        tmp_path / "ray",
        ray_options=RayOptions(workers=2),
        chunk_rows=20,  # 300 blocks: the pool still has work when the first comes back
        progress=kill_the_actors,
    )
    assert killed
    ids, vectors = open_store(tmp_path / "ray").read_vectors("corpus", "vector_8")
    assert ids == written["corpus"][0]  # every row, once, in order
    _, expected = open_store(tmp_path / "local").read_vectors("corpus", "vector_8")
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


def test_embed_on_ray_matches_local_and_resumes(tmp_path, small_scifact):
    docs = small_scifact(120)
    values = {"batch_size": 32}
    run_embed(docs, tmp_path / "local", build_provider("local", None, values))
    spec = ProviderSpec("local", None, values)
    options = RayOptions(workers=2, batch_rows=25)
    first = run_embed_ray(
        docs,
        tmp_path / "ray",
        build_provider("local", None, values),
        limit=50,  # a run that stopped after 50 rows
        spec=spec,
        ray_options=options,
    )
    assert first.rows_embedded == 50
    rest = run_embed_ray(
        docs,
        tmp_path / "ray",
        build_provider("local", None, values),
        spec=spec,
        ray_options=options,
    )
    assert (rest.rows_embedded, rest.rows_reused) == (70, 50)  # only what was missing
    local, on_ray = open_store(tmp_path / "local"), open_store(tmp_path / "ray")
    assert on_ray.read_keys("corpus") == local.read_keys("corpus")  # same ids, same keys
    local_ids, expected = local.read_vectors("corpus")
    ray_ids, got = on_ray.read_vectors("corpus")
    order = {row_id: i for i, row_id in enumerate(ray_ids)}
    np.testing.assert_allclose(got[[order[i] for i in local_ids]], expected, atol=1e-6)
    identity = ("provider", "model", "dimension", "normalized", "dtype", "role")
    assert {k: on_ray.metadata("corpus")[k] for k in identity} == {
        k: local.metadata("corpus")[k] for k in identity
    }


def _no_dispatch(*_args, **_kwargs):
    raise AssertionError("work was dispatched to Ray")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("duplicate-id", "duplicate id"),
        ("bad-dims", "--dims"),
        ("bad-workers", "--workers 0"),
    ],
)
def test_bad_input_fails_before_dispatch(tmp_path, monkeypatch, case, message):
    monkeypatch.setattr(ray_embed, "run_waves", _no_dispatch)
    monkeypatch.setattr(ray_apply, "run_fragments", _no_dispatch)
    if case == "duplicate-id":
        docs = tmp_path / "docs.jsonl"
        docs.write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
        args = ["embed", str(docs), "--out", str(tmp_path / "out"), "--engine", "ray"]
    else:
        make_store(tmp_path / "in", {"corpus": 10})
        make_adaptor(tmp_path / "ad")
        args = ["apply", str(tmp_path / "ad"), str(tmp_path / "in"), "--out", str(tmp_path / "out")]
        args += ["--engine", "ray", "--dims", "99" if case == "bad-dims" else "4"]
        args += ["--workers", "0" if case == "bad-workers" else "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert not (tmp_path / "out").exists()


def _madapt(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "madapt_cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def _apply_args(tmp_path: Path) -> list[str]:
    paths = [str(tmp_path / name) for name in ("ad", "in", "out")]
    return ["apply", paths[0], paths[1], "--dims", "4", "--out", paths[2], "--engine", "ray"]


def test_a_ray_address_where_nothing_answers_is_a_clear_error(tmp_path):
    make_store(tmp_path / "in", {"corpus": 10})
    make_adaptor(tmp_path / "ad")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    result = _madapt([*_apply_args(tmp_path), "--ray-address", f"127.0.0.1:{port}"])
    assert time.monotonic() - started < 60
    assert result.returncode == 4, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --ray-address 127.0.0.1:") and "ray start --head" in last
    assert not (tmp_path / "out").exists()


def test_without_ray_the_error_says_how_to_install_it(tmp_path):
    blocker = tmp_path / "blocker" / "ray"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no ray here')\n")
    make_store(tmp_path / "in", {"corpus": 10})
    make_adaptor(tmp_path / "ad")
    result = _madapt(
        _apply_args(tmp_path),
        env={"PYTHONPATH": f"{tmp_path / 'blocker'}{os.pathsep}{REPO}"},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == 'error: --engine ray needs Ray: pip install "madapt[ray]"'


@pytest.mark.parametrize("format", ["parquet", "lance"])
def test_workers_read_superseded_rows_and_lance_tables_as_the_store_does(tmp_path, format):
    """A later append supersedes some ids (Parquet: a mask per row group; Lance: a new
    version): the workers read exactly the live rows, in the store's order."""
    make_store(tmp_path / "in", {"corpus": 700}, parts=3, format=format)
    make_store(tmp_path / "newer", {"corpus": 90}, seed=1)
    store, newer = open_store(tmp_path / "in"), open_store(tmp_path / "newer")
    rows = pa.concat_tables(
        [
            pa.Table.from_batches([b]).replace_schema_metadata(store.schema("corpus").metadata)
            for b in newer.iter_batches("corpus")
        ]
    )
    store.append("corpus", rows.slice(20, 50))  # ids corpus-20..69 superseded
    make_adaptor(tmp_path / "ad")
    apply_adaptor(tmp_path / "ad", tmp_path / "in", "8", tmp_path / "local", chunk_rows=64)
    apply_adaptor_ray(tmp_path / "ad", tmp_path / "in", "8", tmp_path / "ray",
                      ray_options=RayOptions(workers=2), chunk_rows=64)  # fmt: skip
    local_ids, expected = open_store(tmp_path / "local").read_vectors("corpus", "vector_8")
    ray_ids, got = open_store(tmp_path / "ray").read_vectors("corpus", "vector_8")
    assert ray_ids == local_ids and len(ray_ids) == len(set(ray_ids)) == 700
    np.testing.assert_allclose(got, expected, atol=1e-6)


def _vector_source(tmp_path: Path, kind: str, vectors: np.ndarray, ids: list[str]) -> str:
    """The same rows as a Parquet folder (2 files, several row groups), a LanceDB table,
    JSONL or .npy."""
    if kind == "parquet":
        folder = tmp_path / "src"
        folder.mkdir()
        flat = pa.array(vectors.reshape(-1))
        table = pa.table({"id": ids, "vector": pa.FixedSizeListArray.from_arrays(flat, 16)})
        pq.write_table(table.slice(0, 250), folder / "a.parquet", row_group_size=60)
        pq.write_table(table.slice(250), folder / "b.parquet", row_group_size=60)
        return str(folder)
    if kind == "lance":
        import lancedb

        flat = pa.array(vectors.reshape(-1))
        table = pa.table({"id": ids, "vector": pa.FixedSizeListArray.from_arrays(flat, 16)})
        db = lancedb.connect(str(tmp_path / "db"))
        db.create_table("src", table.slice(0, 250)).add(table.slice(250))  # 2 fragments
        return f"{tmp_path / 'db'}::src"
    if kind == "jsonl":
        path = tmp_path / "src.jsonl"
        lines = (
            json.dumps({"id": i, "vector": v.tolist()}) for i, v in zip(ids, vectors, strict=True)
        )
        path.write_text("\n".join(lines) + "\n")
        return str(path)
    np.save(tmp_path / "src.npy", vectors)
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    return str(tmp_path / "src.npy")


@pytest.mark.parametrize("kind", ["parquet", "lance", "jsonl"])
def test_import_on_ray_matches_local_and_merges_on_rerun(tmp_path, kind):
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(400, 16)).astype(np.float32)  # not unit: rescaled
    ids = [f"v{i}" for i in range(400)]
    source = _vector_source(tmp_path, kind, vectors, ids)
    fields = VectorFields()
    local_run = import_vectors(source, tmp_path / "local", fields, batch_rows=70)
    options = RayOptions(workers=2)
    on_ray = import_vectors_ray(source, tmp_path / "ray", fields, ray_options=options,
                                batch_rows=70)  # fmt: skip
    assert (on_ray.rows, on_ray.rescaled) == (local_run.rows, local_run.rescaled) == (400, 400)
    local, ray_store = open_store(tmp_path / "local"), open_store(tmp_path / "ray")
    local_ids, expected = local.read_vectors("corpus")
    ray_ids, got = ray_store.read_vectors("corpus")
    assert ray_ids == local_ids == ids
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert ray_store.schema("corpus").remove_metadata() == local.schema("corpus").remove_metadata()
    # a rerun into the same store (a killed run is simply rerun) merges by id: nothing doubled
    again = import_vectors_ray(source, tmp_path / "ray", fields, ray_options=options,
                               batch_rows=70)  # fmt: skip
    assert (again.rows, again.superseded, again.kept) == (400, 400, 0)
    assert open_store(tmp_path / "ray").read_ids("corpus") == ids


def test_import_on_ray_refuses_a_bad_row_with_one_line_and_writes_nothing(tmp_path):
    vectors = np.random.default_rng(4).normal(size=(300, 16)).astype(np.float32)
    vectors[217, 3] = np.nan  # in a row group a worker reads
    source = _vector_source(tmp_path, "parquet", vectors, [f"v{i}" for i in range(300)])
    args = ["import", source, "--out", str(tmp_path / "out"), "--engine", "ray", "--workers", "2"]
    result = CliRunner().invoke(app, [*args, "-q"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "v217" in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--vector-field", "emb"], "no column 'emb'"),
        (["--workers", "0"], "--workers 0"),
        (["--dimensions", "8"], "16 dimensions, not 8"),
    ],
)
def test_import_bad_input_fails_before_dispatch(tmp_path, monkeypatch, option, message):
    from madapt_cli.pipelines import ray_import

    monkeypatch.setattr(ray_import, "run_fragments", _no_dispatch)
    monkeypatch.setattr(ray_import, "run_waves", _no_dispatch)
    source = _vector_source(tmp_path, "parquet", np.ones((5, 16), np.float32), list("abcde"))
    result = CliRunner().invoke(
        app, ["import", source, "--out", str(tmp_path / "out"), "--engine", "ray", *option]
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_embed_on_ray_with_an_adaptor_writes_the_local_columns(tmp_path, small_scifact):
    from conftest import residual_adaptor

    docs = small_scifact(40)
    values = {"batch_size": 16}
    provider = build_provider("local", None, values)
    torch.manual_seed(0)
    adaptor = residual_adaptor(384, provider.model)
    with torch.no_grad():
        for parameter in adaptor.module.parameters():
            parameter.normal_(0, 0.02)
    vectors = VectorOptions(adaptor=adaptor, dims=(32, 64), raw=False)
    run_embed(docs, tmp_path / "local", provider, vectors=vectors)
    run_embed_ray(docs, tmp_path / "ray", build_provider("local", None, values),
                  vectors=vectors, spec=ProviderSpec("local", None, values),
                  ray_options=RayOptions(workers=1, batch_rows=16))  # fmt: skip
    local, on_ray = open_store(tmp_path / "local"), open_store(tmp_path / "ray")
    assert on_ray.schema("corpus").names == local.schema("corpus").names
    assert on_ray.read_keys("corpus") == local.read_keys("corpus")
    for column in ("vector_32", "vector_64"):
        local_ids, expected = local.read_vectors("corpus", column)
        ray_ids, got = on_ray.read_vectors("corpus", column)
        order = {row_id: i for i, row_id in enumerate(ray_ids)}
        np.testing.assert_allclose(got[[order[i] for i in local_ids]], expected, atol=1e-6)
