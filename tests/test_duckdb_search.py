"""The README's DuckDB search over an applied Parquet store returns the same top-10 as an
exact search in numpy (DuckDB reads a FixedSizeList column as FLOAT[], hence the casts)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from madapt_cli.cli import app
from madapt_cli.store.base import embedding_schema, new_table_metadata, open_store, vectors_to_arrow

duckdb = pytest.importorskip("duckdb")


def test_duckdb_cosine_search_of_an_applied_column_matches_an_exact_search(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 32)).astype(np.float32)
    metadata = new_table_metadata(
        provider="local", model="m", dimension=32, normalized=True, dtype="float32"
    )
    ids = [f"d{i}" for i in range(300)]
    rows = pa.Table.from_arrays(
        [pa.array(ids), vectors_to_arrow(vectors), pa.array(["k"] * 300)],
        schema=embedding_schema(32, metadata=metadata),
    )
    open_store(tmp_path / "store", create=True).append("corpus", rows)
    runner = CliRunner()
    for args in (
        ["fit", tmp_path / "store", "--method", "pca", "--out", tmp_path / "ad"],
        ["apply", tmp_path / "ad", tmp_path / "store", "--dims", "16", "--out", tmp_path / "app"],
    ):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    stored_ids, stored = open_store(tmp_path / "app").read_vectors("corpus", "vector_16")
    query = stored[7] + 0.1 * stored[8]
    query = (query / np.linalg.norm(query)).tolist()

    found = duckdb.execute(
        "SELECT id FROM read_parquet(?) "
        "ORDER BY array_cosine_similarity(vector_16::FLOAT[16], ?::FLOAT[16]) DESC LIMIT 10",
        [str(tmp_path / "app" / "corpus" / "*.parquet"), query],
    ).fetchall()
    exact = np.argsort(-(stored @ np.asarray(query, np.float32)), kind="stable")[:10]
    assert [row[0] for row in found] == [stored_ids[i] for i in exact]
