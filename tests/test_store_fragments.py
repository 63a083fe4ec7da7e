"""Store.fragments: a table cut into pieces that other processes read by themselves, which
together give exactly the rows of iter_batches, in its order (what Ray's workers rely on)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from madapt_cli.store.base import embedding_schema, new_table_metadata, open_store, vectors_to_arrow
from madapt_cli.store.fragments import Fragment, read_fragment

DIM = 4


def _rows(ids: list[int], seed: int) -> pa.Table:
    vectors = np.random.default_rng(seed).normal(size=(len(ids), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    metadata = new_table_metadata(
        provider="local", model="m", dimension=DIM, normalized=True, role="corpus", dtype="float32"
    )
    schema = embedding_schema(DIM, "float32", False, metadata)
    columns = [
        pa.array([f"d{i}" for i in ids], pa.string()),
        vectors_to_arrow(vectors),
        pa.array(["0" * 64] * len(ids), pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


@pytest.mark.parametrize("store_format", ["parquet", "lance"])
def test_fragments_read_back_exactly_the_live_rows_in_order(tmp_path, store_format):
    store = open_store(tmp_path / "s", store_format, create=True)
    store.append("corpus", _rows(list(range(100)), 0))
    store.append("corpus", _rows(list(range(50, 150)), 1))  # supersedes d50..d99
    store.append("corpus", _rows(list(range(10)), 2))  # supersedes d0..d9
    expected = pa.Table.from_batches(list(store.iter_batches("corpus", ["id", "vector"])))

    fragments = store.fragments("corpus", block_rows=16)
    # what travels to a worker is plain data
    fragments = [Fragment.from_item(dict(f.to_item())) for f in fragments]
    batches = [b for f in fragments for b in read_fragment(f, ["id", "vector"], 7)]
    got = pa.Table.from_batches(batches)

    assert got.column("id").to_pylist() == expected.column("id").to_pylist()
    assert len(set(got.column("id").to_pylist())) == 150
    assert got.column("vector").equals(expected.column("vector"))
    if store_format == "parquet":  # d0..d9 of the first file are masked out, not re-read
        assert fragments[0].live is not None
