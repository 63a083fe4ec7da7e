"""`madapt import` (issue #13, section 1): vectors you already have -> a store."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import madapt_cli.pipelines.import_vectors as pipeline
from madapt_cli.cli import app
from madapt_cli.data import TextItem
from madapt_cli.pipelines.import_vectors import import_vectors
from madapt_cli.providers.base import build_provider
from madapt_cli.store.base import open_store
from madapt_cli.vector_sources import VectorFields

DIM = 12
N = 30


def unit(rows: int = N, dim: int = DIM, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def ids(rows: int = N) -> list[str]:
    return [f"d{i}" for i in range(rows)]


def fsl(vectors: np.ndarray, value_type=pa.float32()) -> pa.Array:
    flat = pa.array(vectors.reshape(-1).astype(value_type.to_pandas_dtype()))
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


def write_parquet(path: Path, vectors: np.ndarray, *, column=None, id_values=None, **extra) -> str:
    table = pa.table(
        {
            "_id": id_values if id_values is not None else ids(len(vectors)),
            "emb": column if column is not None else fsl(vectors),
            **extra,
        }
    )
    pq.write_table(table, path)
    return str(path)


def run(*args: str):
    return CliRunner().invoke(app, ["import", *map(str, args)])


def stored(out: Path, table: str = "corpus") -> tuple[list[str], np.ndarray, dict]:
    store = open_store(out)
    got_ids, vectors = store.read_vectors(table)
    return got_ids, vectors, store.metadata(table)


# --- every source kind round-trips ---------------------------------------------------------
def test_parquet_round_trip_with_metadata(tmp_path):
    vectors = unit()
    source = write_parquet(tmp_path / "v.parquet", vectors)
    result = run(source, "--out", tmp_path / "s", "--id-field", "_id", "--vector-field", "emb",
                 "--provider", "local", "--model", "all-MiniLM-L6-v2", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows"] == N and summary["dimension"] == DIM and not summary["content_keys"]
    got_ids, got, metadata = stored(tmp_path / "s")
    assert got_ids == ids() and np.array_equal(got, vectors)
    assert (
        metadata["provider"] == "local"
        and metadata["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    )
    assert metadata["dimension"] == DIM and metadata["normalized"] is True
    assert metadata["role"] == "document" and metadata["dtype"] == "float32"
    keys = open_store(tmp_path / "s").read_keys("corpus")
    assert set(keys.values()) == {None}


@pytest.mark.parametrize(
    "value_type", [pa.float16(), pa.float32(), pa.float64()], ids=["f16", "f32", "f64"]
)
@pytest.mark.parametrize("list_kind", ["fixed", "list", "large_list"])
def test_list_kinds_and_float_widths(tmp_path, value_type, list_kind):
    vectors = unit()
    typed = vectors.astype(value_type.to_pandas_dtype())
    if list_kind == "fixed":
        column = fsl(vectors, value_type)
    else:
        maker = pa.list_ if list_kind == "list" else pa.large_list
        column = pa.array(list(typed), maker(value_type))
    source = write_parquet(tmp_path / "v.parquet", vectors, column=column)
    result = run(source, "--out", tmp_path / "s", "--id-field", "_id", "--vector-field", "emb")
    assert result.exit_code == 0, result.output
    got_ids, got, _ = stored(tmp_path / "s")
    assert got_ids == ids()
    expected = typed.astype(np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, atol=1e-3 if value_type == pa.float16() else 1e-6)


def test_parquet_folder_jsonl_npy_and_lance_round_trip(tmp_path):
    vectors = unit()
    folder = tmp_path / "parts"
    folder.mkdir()
    write_parquet(folder / "a.parquet", vectors[:10], id_values=ids()[:10])
    write_parquet(folder / "b.parquet", vectors[10:], id_values=ids()[10:])
    jsonl = tmp_path / "v.jsonl"
    jsonl.write_text(
        "".join(
            json.dumps({"id": i, "vec": v.tolist()}) + "\n"
            for i, v in zip(ids(), vectors, strict=False)
        )
    )
    npy = tmp_path / "v.npy"
    np.save(npy, vectors)
    (tmp_path / "ids.txt").write_text("\n".join(ids()) + "\n")
    runs = {
        "folder": [folder, "--id-field", "_id", "--vector-field", "emb"],
        "jsonl": [jsonl, "--vector-field", "vec"],
        "npy": [npy, "--ids", tmp_path / "ids.txt"],
    }
    for name, args in runs.items():
        result = run(*args, "--out", tmp_path / name, "--format", "lance")
        assert result.exit_code == 0, (name, result.output)
        got_ids, got, _ = stored(tmp_path / name)
        assert got_ids == ids() and np.allclose(got, vectors, atol=1e-6), name
    # a LanceDB table as SOURCE: path/to/db::table
    result = run(f"{tmp_path / 'npy'}::corpus", "--out", tmp_path / "from-lance")
    assert result.exit_code == 0, result.output
    got_ids, got, _ = stored(tmp_path / "from-lance")
    assert sorted(got_ids) == sorted(ids())
    order = np.argsort(got_ids)
    assert np.array_equal(got[order], vectors[np.argsort(ids())])


def test_public_dataset_shape_with_flags_alone(tmp_path):
    """The shape of a public dataset of OpenAI-embedded documents (text-embedding-3-large
    asked for 1536 dimensions): the size asked of the API is inferred from the vectors."""
    dim = 1536
    vectors = unit(8, dim)
    source = write_parquet(
        tmp_path / "dbpedia.parquet",
        vectors,
        column=fsl(vectors).cast(pa.list_(pa.float64())),  # as datasets often store them
        id_values=[f"<dbpedia:Doc_{i}>" for i in range(8)],
        title=[f"Doc {i}" for i in range(8)],
        text=[f"text of doc {i}" for i in range(8)],
    )
    pq.write_table(
        pq.read_table(source).rename_columns(
            ["_id", "text-embedding-3-large-1536-embedding", "title", "text"]
        ),
        source,
    )
    result = run(
        source, "--out", tmp_path / "s", "--id-field", "_id",
        "--vector-field", "text-embedding-3-large-1536-embedding", "--text-field", "text",
        "--title-field", "title", "--provider", "openai", "--model", "text-embedding-3-large",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    got_ids, got, metadata = stored(tmp_path / "s")
    assert got_ids[0] == "<dbpedia:Doc_0>" and np.allclose(got, vectors, atol=1e-6)
    assert metadata["model"] == "text-embedding-3-large" and metadata["dimension"] == dim
    assert metadata["dimensions"] == dim  # what `madapt embed --dimensions 1536` records
    # the content key is the one `madapt embed --provider openai --dimensions 1536` computes
    provider = build_provider("openai", "text-embedding-3-large", {"dimensions": dim})
    expected = provider.content_key(
        TextItem("<dbpedia:Doc_0>", "text of doc 0", "Doc 0"), "document"
    )
    assert open_store(tmp_path / "s").read_keys("corpus")["<dbpedia:Doc_0>"] == expected


def test_normalises_unless_told_not_to(tmp_path):
    vectors = unit() * 3
    source = write_parquet(tmp_path / "v.parquet", vectors)
    args = ["--id-field", "_id", "--vector-field", "emb"]
    assert run(source, "--out", tmp_path / "a", *args).exit_code == 0
    _, got, metadata = stored(tmp_path / "a")
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5) and metadata["normalized"]
    assert run(source, "--out", tmp_path / "b", *args, "--no-normalize").exit_code == 0
    _, got, metadata = stored(tmp_path / "b")
    assert np.allclose(got, vectors) and metadata["normalized"] is False


# --- an existing table -----------------------------------------------------------------------
def test_reimport_is_idempotent_and_merges_by_id(tmp_path):
    vectors = unit()
    source = write_parquet(tmp_path / "v.parquet", vectors)
    args = ["--out", tmp_path / "s", "--id-field", "_id", "--vector-field", "emb"]
    assert run(source, *args).exit_code == 0
    assert run(source, *args).exit_code == 0
    got_ids, got, _ = stored(tmp_path / "s")
    assert got_ids == ids() and np.array_equal(got, vectors)
    # a second file: new ids are added, shared ids superseded, the rest kept
    more = unit(10, seed=1)
    other = write_parquet(tmp_path / "w.parquet", more, id_values=[f"d{i}" for i in range(25, 35)])
    result = run(other, *args, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["kept"], summary["superseded"]) == (10, 25, 5)
    got_ids, got, _ = stored(tmp_path / "s")
    table = dict(zip(got_ids, got, strict=False))
    assert len(table) == 35
    assert np.array_equal(table["d30"], more[5]) and np.array_equal(table["d3"], vectors[3])
    # --replace drops the old rows
    assert run(other, *args, "--replace").exit_code == 0
    assert sorted(stored(tmp_path / "s")[0]) == sorted(f"d{i}" for i in range(25, 35))


def test_another_model_is_refused_unless_replace(tmp_path):
    source = write_parquet(tmp_path / "v.parquet", unit())
    args = ["--out", tmp_path / "s", "--id-field", "_id", "--vector-field", "emb"]
    assert run(source, *args, "--provider", "openai", "--model", "text-embedding-3-small",
               "--dimensions", DIM).exit_code == 0  # fmt: skip
    before = sorted(p.name for p in (tmp_path / "s" / "corpus").iterdir())
    result = run(source, *args, "--provider", "local", "--model", "all-MiniLM-L6-v2")
    assert result.exit_code == 2 and "provider='openai'" in result.stderr
    assert sorted(p.name for p in (tmp_path / "s" / "corpus").iterdir()) == before
    result = run(source, *args, "--provider", "local", "--model", "x", "--replace")
    assert result.exit_code == 0, result.output
    assert stored(tmp_path / "s")[2]["model"] == "x"


# --- atomicity ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["parquet", "lance"])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_a_killed_import_leaves_no_table(tmp_path, monkeypatch, fmt, existing):
    vectors = unit(200)
    source = write_parquet(tmp_path / "v.parquet", vectors, id_values=ids(200))
    fields = VectorFields("_id", "emb")
    out = tmp_path / "s"
    if existing:
        import_vectors(source, out, fields, table="keep", store_format=fmt)
    original, calls = pipeline._Importer.batch, []

    def dies(self, chunk):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a kill in the middle of the stream
        return original(self, chunk)

    monkeypatch.setattr(pipeline._Importer, "batch", dies)
    with pytest.raises(KeyboardInterrupt):
        import_vectors(source, out, fields, store_format=fmt, batch_rows=50)
    assert len(calls) == 3
    if existing:
        assert open_store(out).tables() == ["keep"]
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == (
            ["keep", "madapt-store.json"]
            if fmt == "parquet"
            else ["keep.lance", "madapt-store.json"]
        )
    else:
        assert not out.exists()


def test_progress_events(tmp_path):
    source = write_parquet(tmp_path / "v.parquet", unit(100), id_values=ids(100))
    events = []
    import_vectors(source, tmp_path / "s", VectorFields("_id", "emb"), batch_rows=40,
                   progress=events.append)  # fmt: skip
    assert [e.done for e in events] == [80, 100, 100]
    assert events[-1].finished and {e.total for e in events} == {100}
    assert {e.task for e in events} == {"import corpus"}


# --- bad inputs: one line, exit 2, nothing written ---------------------------------------------
def bad_cases(tmp_path: Path) -> dict[str, tuple[list, str]]:
    vectors = unit()
    nan, zero = vectors.copy(), vectors.copy()
    nan[7, 3] = np.nan
    zero[4] = 0
    ragged = pa.array(
        [list(v) for v in vectors[:5]] + [list(vectors[5][:-1])], pa.list_(pa.float32())
    )
    cases = {
        "nan": (write_parquet(tmp_path / "nan.parquet", nan), r"row 8 \(id 'd7'\).*non-finite"),
        "zero": (write_parquet(tmp_path / "zero.parquet", zero), r"row 5 \(id 'd4'\).*all-zero"),
        "ragged": (
            write_parquet(
                tmp_path / "ragged.parquet", vectors[:6], column=ragged, id_values=ids(6)
            ),
            r"row 6 \(id 'd5'\) has 11 values, not 12",
        ),
        "duplicate": (
            write_parquet(tmp_path / "dup.parquet", vectors, id_values=[*ids(29), "d3"]),
            r"row 30: duplicate id 'd3' \(first at .*row 4\)",
        ),
        "missing-id": (
            write_parquet(
                tmp_path / "noid.parquet", vectors, id_values=[*ids(9), None, *ids(30)[10:]]
            ),
            r"noid\.parquet: row 10 has no id",
        ),
    }
    for name, (source, pattern) in cases.items():
        cases[name] = ([source, "--id-field", "_id", "--vector-field", "emb"], pattern)
    good = write_parquet(tmp_path / "good.parquet", vectors)
    cases["wrong-field"] = (
        [good, "--id-field", "_id", "--vector-field", "embedding"],
        r"good\.parquet: no column 'embedding' \(--vector-field\); columns: _id, emb",
    )
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    cases["unreadable"] = (
        [tmp_path / "junk.parquet", "--vector-field", "emb"],
        r"junk\.parquet: not a readable Parquet file",
    )
    cases["bad-db-table"] = ([f"{tmp_path / 'nodb'}::corpus"], r"nodb::corpus: no LanceDB database")
    return cases


def test_bad_inputs_are_one_line_exit_2_and_write_nothing(tmp_path):
    for name, (args, pattern) in bad_cases(tmp_path).items():
        for store_exists in (False, True):
            out = tmp_path / f"out-{name}"
            if store_exists:
                good = write_parquet(tmp_path / "seed.parquet", unit(3), id_values=["x", "y", "z"])
                assert (
                    run(good, "--out", out, "--id-field", "_id", "--vector-field", "emb").exit_code
                    == 0
                )
                before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
            result = run(*args, "--out", out)
            lines = result.stderr.strip().splitlines()
            assert result.exit_code == 2, (name, result.output)
            assert len(lines) == 1 and lines[0].startswith("error:"), (name, result.stderr)
            assert re.search(pattern, lines[0]), (name, pattern, lines[0])
            if store_exists:
                after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
                assert after == before, name
                shutil.rmtree(out)
            else:
                assert not out.exists(), name


# --- embed after import: content keys -------------------------------------------------------------
def _exported(store: Path, docs: Path, target: Path, rows: int) -> Path:
    """The vectors of ``store`` with the texts of ``docs`` as one Parquet file (what a user
    brings): id, title, text, vector."""
    got_ids, vectors = open_store(store).read_vectors("corpus")
    texts = {d["id"]: d for d in map(json.loads, docs.read_text().splitlines())}
    chosen = got_ids[:rows]
    pq.write_table(
        pa.table(
            {
                "id": chosen,
                "title": [texts[i]["title"] for i in chosen],
                "text": [texts[i]["text"] for i in chosen],
                "vector": fsl(vectors[:rows]),
            }
        ),
        target,
    )
    return target


def test_embed_after_import_reuses_exactly_the_keyed_rows(tmp_path, small_scifact):
    docs = small_scifact(25)
    first = small_scifact(20, name="first.jsonl")
    model = ["--provider", "local", "--model", "all-MiniLM-L6-v2"]
    result = CliRunner().invoke(app, ["embed", str(first), "--out", str(tmp_path / "ref"), "-q"])
    assert result.exit_code == 0, result.output
    mine = _exported(tmp_path / "ref", first, tmp_path / "mine.parquet", 20)

    # with a text field: the 20 imported rows are reused, the 5 new documents embedded
    result = run(mine, "--out", tmp_path / "keyed", "--text-field", "text", "--title-field",
                 "title", *model)  # fmt: skip
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        app, ["embed", str(docs), "--out", str(tmp_path / "keyed"), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["rows_reused"], summary["rows_embedded"]) == (20, 5)

    # without a text field: nothing is reused, everything is embedded again
    result = run(mine, "--out", tmp_path / "bare", *model)
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        app, ["embed", str(docs), "--out", str(tmp_path / "bare"), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["rows_reused"], summary["rows_embedded"]) == (0, 25)
    assert open_store(tmp_path / "bare").num_rows("corpus") == 25


def test_declaration_and_npy_mismatches_are_refused(tmp_path):
    vectors = unit()
    source = write_parquet(tmp_path / "v.parquet", vectors)
    fields = ["--id-field", "_id", "--vector-field", "emb"]
    npy = tmp_path / "v.npy"
    np.save(npy, vectors)
    (tmp_path / "ids.txt").write_text("\n".join(ids(N - 1)) + "\n")
    cases = {
        "dimensions": ([source, *fields, "--dimensions", "8"], r"have 12 dimensions, not 8"),
        "no-model": ([source, *fields, "--provider", "openai"], r"--provider openai needs --model"),
        "ada-002": (
            [source, *fields, "--provider", "openai", "--model", "text-embedding-ada-002"],
            r"12-dimensional vectors.*ada-002 does not accept --dimensions",
        ),
        "npy-ids": ([npy, "--ids", tmp_path / "ids.txt"], r"ids\.txt: 29 ids for the 30 rows"),
        "npy-no-ids": ([npy], r"v\.npy: a \.npy SOURCE needs --ids FILE"),
    }
    for name, (args, pattern) in cases.items():
        result = run(*args, "--out", tmp_path / "out")
        assert result.exit_code == 2, (name, result.output)
        assert re.search(pattern, result.stderr.strip()), (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (name, result.stderr)
        assert not (tmp_path / "out").exists(), name
