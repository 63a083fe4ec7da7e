"""The embedding store on both backends: round trips, metadata, atomicity, compaction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from madapt_cli.errors import StoreError
from madapt_cli.store.base import (
    Store,
    arrow_to_vectors,
    embedding_schema,
    new_table_metadata,
    open_store,
    vectors_to_arrow,
)

BACKENDS = ["parquet", "lance"]


def rows(
    ids: list[str],
    vectors: np.ndarray,
    model: str = "m",
    dtype: str = "float32",
    text: bool = False,
) -> pa.Table:
    metadata = new_table_metadata(
        provider="local",
        model=model,
        dimension=vectors.shape[1],
        normalized=True,
        role="document",
        dtype=dtype,
    )
    schema = embedding_schema(vectors.shape[1], dtype, with_text=text, metadata=metadata)
    columns = [pa.array(ids), vectors_to_arrow(vectors, dtype), pa.array([f"sha-{i}" for i in ids])]
    if text:
        columns.append(pa.array([f"text {i}" for i in ids]))
    return pa.Table.from_arrays(columns, schema=schema)


def random_vectors(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return open_store(tmp_path / "store", request.param, create=True)


def test_round_trip_and_metadata(store: Store):
    vectors = random_vectors(10)
    store.append("corpus", rows([f"d{i}" for i in range(10)], vectors, text=True))
    ids, read = store.read_vectors("corpus")
    assert ids == [f"d{i}" for i in range(10)]
    np.testing.assert_array_equal(read, vectors)
    meta = store.metadata("corpus")
    assert meta["model"] == "m" and meta["dimension"] == 8 and meta["normalized"] is True
    assert "created_at" in meta and "madapt_version" in meta
    assert store.read_keys("corpus")["d3"] == "sha-d3"
    reopened = open_store(store.path)  # the format comes from the marker
    assert reopened.format == store.format
    assert reopened.tables() == ["corpus"]
    described = reopened.describe()["tables"][0]
    assert described["rows"] == 10 and described["vector_columns"] == {"vector": 8}


def test_float16_storage(store: Store):
    vectors = random_vectors(5)
    store.append("corpus", rows(list("abcde"), vectors, dtype="float16"))
    assert store.schema("corpus").field("vector").type.value_type == pa.float16()
    _, read = store.read_vectors("corpus")
    assert read.dtype == np.float32
    np.testing.assert_allclose(read, vectors, atol=2e-3)
    _, raw = store.read_vectors("corpus", dtype=None)
    assert raw.dtype == np.float16


def test_later_rows_supersede_earlier_ones(store: Store):
    store.append("corpus", rows(["a", "b", "c"], random_vectors(3, seed=1)))
    newer = random_vectors(1, seed=2)
    store.append("corpus", rows(["b"], newer))
    ids, vectors = store.read_vectors("corpus")
    assert sorted(ids) == ["a", "b", "c"] and store.num_rows("corpus") == 3
    np.testing.assert_array_equal(vectors[ids.index("b")], newer[0])
    assert store.retain("corpus", {"a", "b"}) == 1  # drops 'c'
    ids, vectors = store.read_vectors("corpus")
    assert sorted(ids) == ["a", "b"]
    np.testing.assert_array_equal(vectors[ids.index("b")], newer[0])


def test_appending_another_model_or_dimension_is_an_error(store: Store):
    store.append("corpus", rows(["a"], random_vectors(1)))
    with pytest.raises(StoreError, match="model='m', not 'other'"):
        store.append("corpus", rows(["b"], random_vectors(1), model="other"))
    with pytest.raises(StoreError, match="dimension=8, not 4"):
        store.append("corpus", rows(["b"], random_vectors(1, d=4)))
    assert store.num_rows("corpus") == 1


def test_iter_batches_streams_in_bounded_chunks(store: Store):
    store.append("corpus", rows([str(i) for i in range(1000)], random_vectors(1000)))
    sizes = [b.num_rows for b in store.iter_batches("corpus", ["id"], batch_rows=128)]
    assert sum(sizes) == 1000 and max(sizes) <= 128


def test_write_table_replaces_atomically(store: Store):
    store.append("corpus", rows(["a", "b"], random_vectors(2)))
    schema = rows(["x"], random_vectors(1)).schema

    def failing():
        yield rows(["x"], random_vectors(1)).to_batches()[0]
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        store.write_table("corpus", schema, failing())
    assert sorted(store.read_vectors("corpus")[0]) == ["a", "b"]  # untouched
    written = store.write_table("corpus", schema, rows(["x", "y"], random_vectors(2)).to_batches())
    assert written == 2 and sorted(store.read_vectors("corpus")[0]) == ["x", "y"]


def test_parquet_crash_leftovers_are_ignored(tmp_path: Path):
    store = open_store(tmp_path / "s", "parquet", create=True)
    store.append("corpus", rows(["a"], random_vectors(1)))
    (store.path / "corpus" / ".tmp-deadbeef.parquet").write_bytes(b"half a file")
    assert store.read_vectors("corpus")[0] == ["a"]


def test_parquet_single_chunk_read_is_zero_copy(tmp_path: Path):
    vectors = random_vectors(100)
    column = vectors_to_arrow(vectors)
    view = arrow_to_vectors(column)
    assert view.ctypes.data == column.values.buffers()[1].address  # same memory


def test_opening_with_the_wrong_format_or_a_non_store(tmp_path: Path):
    open_store(tmp_path / "s", "parquet", create=True)
    with pytest.raises(StoreError, match="is a parquet store, not lance"):
        open_store(tmp_path / "s", "lance")
    with pytest.raises(StoreError, match="not a madapt store"):
        open_store(tmp_path / "nothing")
    store = open_store(tmp_path / "s")
    with pytest.raises(StoreError, match="has no table 'queries'"):
        store.read_vectors("queries")


def test_replace_directory_swaps_in_whole_and_leaves_nothing_behind(tmp_path):
    from madapt_cli.util.files import replace_directory

    target = tmp_path / "out" / "adaptor"
    first = tmp_path / "staging-1"
    first.mkdir()
    (first / "a.txt").write_text("old")
    replace_directory(first, target)  # creates the missing parent too
    assert (target / "a.txt").read_text() == "old" and not first.exists()

    second = tmp_path / "staging-2"
    second.mkdir()
    (second / "b.txt").write_text("new")
    replace_directory(second, target)
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # no file of the old one
    assert [p.name for p in target.parent.iterdir()] == ["adaptor"]  # the old one is gone


def test_a_crash_leftover_staging_directory_is_not_a_table(tmp_path):
    store = open_store(tmp_path / "store", "parquet", create=True)
    store.append("corpus", rows(["a", "b"], random_vectors(2)))
    leftover = tmp_path / "store" / ".corpus.old-0123abcd"  # a swap killed before its rmtree
    leftover.mkdir()
    for part in (tmp_path / "store" / "corpus").iterdir():
        (leftover / part.name).write_bytes(part.read_bytes())
    reopened = open_store(tmp_path / "store")
    assert reopened.tables() == ["corpus"]
    assert reopened.read_vectors("corpus")[0] == ["a", "b"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, 0.0])
def test_reading_a_non_finite_or_zero_vector_names_the_table_and_id(store: Store, bad):
    from madapt_cli.errors import InputError

    if store.format == "lance" and bad != 0.0:
        pytest.skip("LanceDB itself refuses to write NaN")
    vectors = random_vectors(5)
    vectors[3] = bad if bad == 0.0 else vectors[3]
    vectors[3, 2] = bad
    store.append("corpus", rows([f"d{i}" for i in range(5)], vectors))
    with pytest.raises(InputError, match=r"table 'corpus' of .*id 'd3'"):
        store.read_vectors("corpus")
    with pytest.raises(InputError, match=r"table 'corpus' of .*id 'd3'"):
        list(store.iter_vectors("corpus", batch_rows=2))
    if bad == 0.0:  # a zero vector is allowed where the caller says so
        assert len(store.read_vectors("corpus", allow_zero=True)[0]) == 5


def test_iter_vectors_yields_checked_float32_batches(store: Store):
    vectors = random_vectors(7)
    store.append("corpus", rows([f"d{i}" for i in range(7)], vectors, dtype="float16"))
    batches = list(store.iter_vectors("corpus", batch_rows=3))
    assert all(len(ids) <= 3 and v.dtype == np.float32 for ids, v in batches)
    ids = [i for batch_ids, _ in batches for i in batch_ids]
    assert ids == [f"d{i}" for i in range(7)]
    joined = np.concatenate([v for _, v in batches])
    np.testing.assert_allclose(joined, vectors.astype(np.float16).astype(np.float32))
