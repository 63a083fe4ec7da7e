"""`madapt apply` / apply_adaptor: streaming, exactness, metadata, atomic output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import residual_adaptor

from madapt_cli import Adaptor
from madapt_cli.errors import InputError, MadaptError
from madapt_cli.pipelines import apply as applying_module
from madapt_cli.pipelines.apply import apply_adaptor
from madapt_cli.store.base import embedding_schema, new_table_metadata, open_store, vectors_to_arrow

MODEL = "all-MiniLM-L6-v2"


def make_store(
    path: Path,
    tables: dict[str, int],
    dimension: int = 16,
    seed: int = 0,
    model: str = MODEL,
    parts: int = 1,
    format: str = "parquet",
) -> dict:
    """A store with the given tables (name -> rows) of random unit vectors, appended in
    ``parts`` files. Returns name -> (ids, vectors)."""
    rng = np.random.default_rng(seed)
    store = open_store(path, format=format, create=True)
    written = {}
    for name, rows in tables.items():
        vectors = rng.normal(size=(rows, dimension)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [f"{name}-{i}" for i in range(rows)]
        metadata = new_table_metadata(
            provider="local",
            model=model,
            dimension=dimension,
            normalized=True,
            role=name,
            dtype="float32",
        )
        schema = embedding_schema(dimension, "float32", False, metadata)
        for chunk in np.array_split(np.arange(rows), parts):
            columns = [
                pa.array([ids[i] for i in chunk], pa.string()),
                vectors_to_arrow(vectors[chunk]),
                pa.array([f"sha-{i}" for i in chunk], pa.string()),
            ]
            store.append(name, pa.Table.from_arrays(columns, schema=schema))
        written[name] = (ids, vectors)
    return written


def make_adaptor(path: Path, dimension: int = 16) -> Adaptor:
    torch.manual_seed(0)
    adaptor = residual_adaptor(dimension, MODEL, training_data_sha256="f00d")
    with torch.no_grad():
        adaptor.module.g[-1].weight.normal_(0, 0.3)
    adaptor.save(path)
    return Adaptor.load(path)


def read_all(path: Path, table: str, column: str) -> tuple[list[str], np.ndarray]:
    return open_store(path).read_vectors(table, column)


def test_apply_streams_tables_larger_than_the_chunk(tmp_path):
    written = make_store(tmp_path / "in", {"corpus": 103, "queries": 20}, parts=2)
    adaptor = make_adaptor(tmp_path / "ad")
    summary = apply_adaptor(
        tmp_path / "ad", tmp_path / "in", "4,8", tmp_path / "out", chunk_rows=10
    )
    assert summary.tables == {"corpus": 103, "queries": 20}
    out = open_store(tmp_path / "out")
    assert out.tables() == ["corpus", "queries"]
    for table, (ids, vectors) in written.items():
        for dim in (4, 8):
            got_ids, got = read_all(tmp_path / "out", table, f"vector_{dim}")
            assert got_ids == ids
            np.testing.assert_allclose(got, adaptor.transform(vectors, dim=dim), atol=1e-6)
    meta = out.metadata("corpus")
    assert meta["adaptor"]["name"] == "ad" and meta["adaptor"]["training_data_sha256"] == "f00d"
    assert meta["adaptor"]["fingerprint"] == adaptor.fingerprint
    assert meta["dims"] == [4, 8] and meta["model"] == MODEL
    assert "text_sha256" in out.schema("corpus").names
    # a tiny chunk gives the same output as one chunk (up to float32 BLAS blocking)
    apply_adaptor(tmp_path / "ad", tmp_path / "in", "4,8", tmp_path / "out1", chunk_rows=1_000)
    for table in written:
        a = read_all(tmp_path / "out", table, "vector_8")
        b = read_all(tmp_path / "out1", table, "vector_8")
        assert a[0] == b[0]
        np.testing.assert_allclose(a[1], b[1], rtol=0, atol=1e-6)


def test_apply_writes_lance_too(tmp_path):
    written = make_store(tmp_path / "in", {"corpus": 30})
    adaptor = make_adaptor(tmp_path / "ad")
    apply_adaptor(
        tmp_path / "ad", tmp_path / "in", [8], tmp_path / "out", format="lance", chunk_rows=7
    )
    store = open_store(tmp_path / "out")
    assert store.format == "lance"
    ids, vectors = store.read_vectors("corpus", "vector_8")
    order = np.argsort(ids)
    expected = dict(
        zip(written["corpus"][0], adaptor.transform(written["corpus"][1], dim=8), strict=True)
    )
    np.testing.assert_allclose(
        vectors[order], np.stack([expected[ids[i]] for i in order]), atol=1e-6
    )


def test_a_failed_apply_leaves_no_output(tmp_path, monkeypatch):
    make_store(tmp_path / "in", {"corpus": 50, "queries": 10})
    make_adaptor(tmp_path / "ad")
    calls = {"n": 0}
    real = applying_module.transform_sizes

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(applying_module, "transform_sizes", failing)
    with pytest.raises(RuntimeError):
        apply_adaptor(tmp_path / "ad", tmp_path / "in", "8", tmp_path / "out", chunk_rows=10)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_apply_rejects_mismatches_before_writing(tmp_path):
    make_store(tmp_path / "other", {"corpus": 5}, model="text-embedding-3-small")
    make_store(tmp_path / "wide", {"corpus": 5}, dimension=32)
    make_adaptor(tmp_path / "ad")
    with pytest.raises(MadaptError, match="text-embedding-3-small"):
        apply_adaptor(tmp_path / "ad", tmp_path / "other", "8", tmp_path / "out")
    with pytest.raises(MadaptError, match="32-d"):
        apply_adaptor(tmp_path / "ad", tmp_path / "wide", "8", tmp_path / "out")
    with pytest.raises(InputError, match=r"size 17 is above the vectors' dimension 16"):
        apply_adaptor(tmp_path / "ad", tmp_path / "other", "8,17", tmp_path / "out")
    make_store(tmp_path / "in", {"corpus": 5})
    make_store(tmp_path / "exists", {"corpus": 3})  # a store madapt wrote: needs --overwrite
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        apply_adaptor(tmp_path / "ad", tmp_path / "in", "8", tmp_path / "exists")
    assert not (tmp_path / "out").exists()


def test_apply_reports_rows_of_each_table(tmp_path):
    make_store(tmp_path / "in", {"corpus": 25, "queries": 4})
    make_adaptor(tmp_path / "ad")
    events = []
    apply_adaptor(
        tmp_path / "ad",
        tmp_path / "in",
        "8",
        tmp_path / "out",
        chunk_rows=10,
        progress=events.append,
    )
    corpus = [(e.done, e.total, e.finished) for e in events if e.task == "apply corpus"]
    assert corpus == [(10, 25, False), (20, 25, False), (25, 25, False), (25, 25, True)]
    assert [(e.done, e.finished) for e in events if e.task == "apply queries"][-1] == (4, True)
