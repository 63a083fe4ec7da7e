"""An applied Lance store's binary column, searched by LanceDB with ``distance_type="hamming"``
(a flat, exact scan: no index), gives madapt's own exact Hamming top-10
(``quantize.hamming_topk``), distances included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_apply import make_adaptor, make_store

from madapt_cli.pipelines.apply import apply_adaptor
from madapt_cli.retrieval import quantize
from madapt_cli.store.base import arrow_to_vectors, open_store

lancedb = pytest.importorskip("lancedb")


def codes_of(store_path: Path, table: str, column: str) -> tuple[list[str], np.ndarray]:
    store = open_store(store_path)
    ids, parts = [], []
    for batch in store.iter_batches(table, columns=["id", column]):
        ids += batch.column(0).to_pylist()
        parts.append(arrow_to_vectors(batch.column(1), None))
    return ids, np.concatenate(parts)


def test_lancedb_hamming_top10_is_madapts(tmp_path: Path) -> None:
    make_store(tmp_path / "in", {"corpus": 400, "queries": 25}, dimension=64, format="lance")
    make_adaptor(tmp_path / "ad", dimension=64)
    apply_adaptor(
        tmp_path / "ad", tmp_path / "in", "64", tmp_path / "out", precision="binary,float32"
    )
    doc_ids, documents = codes_of(tmp_path / "out", "corpus", "vector_64_binary")
    _, queries = codes_of(tmp_path / "out", "queries", "vector_64_binary")
    assert documents.dtype == np.uint8 and documents.shape == (400, 8)
    distances, indices = quantize.hamming_topk(queries, documents, 10)
    table = lancedb.connect(str(tmp_path / "out")).open_table("corpus")
    compared = 0
    for query, expected_distance, expected_index in zip(queries, distances, indices, strict=True):
        found = (
            table.search(query, vector_column_name="vector_64_binary")
            .distance_type("hamming")
            .limit(10)
            .to_arrow()
        )
        got_distance = np.array(found["_distance"].to_pylist())
        np.testing.assert_array_equal(got_distance, expected_distance)
        got_ids = found["id"].to_pylist()
        expected_ids = [doc_ids[i] for i in expected_index]
        # equal distances may come in another order, and the last distance's ties may be
        # other rows with that same distance: everything closer is exactly madapt's
        last = expected_distance[-1]
        closer = expected_distance < last
        assert set(np.array(got_ids)[closer]) == set(np.array(expected_ids)[closer])
        row = {doc_id: i for i, doc_id in enumerate(doc_ids)}
        for doc_id, distance in zip(got_ids, got_distance, strict=True):
            actual = np.unpackbits(documents[row[doc_id]] ^ query).sum()
            assert actual == distance  # LanceDB's distance is the true Hamming distance
        compared += int(closer.sum())
    assert compared > 100  # most of the top-10 is decided without a tie at its edge
