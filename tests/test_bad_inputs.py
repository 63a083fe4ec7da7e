"""Issue #11, "Done when" (second bullet): one table of bad inputs across all commands.

Every case builds its bad input under ``tmp_path``, runs ``madapt ARGS`` in-process and
asserts: exit code 2 (or 4 for the environment), exactly one line on stderr that starts with
``error:`` and names the file, line, id or option at fault, no traceback, and nothing left
behind: the named outputs do not exist and every file under ``tmp_path`` (the working
directory of the run) is byte-identical to what was there before.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from madapt_cli.cli import app
from madapt_cli.store.base import embedding_schema, new_table_metadata, open_store, vectors_to_arrow

DIM = 16
MODEL = "all-MiniLM-L6-v2"
DOCS, QUERIES = 40, 6


def write_store(
    path: Path,
    *,
    model: str = MODEL,
    bad: tuple[str, int, float] | None = None,
) -> Path:
    """A store of tiny random unit vectors: tables corpus (d0..) and queries (q0..).
    ``bad``: (table, row, value) written over that whole row (nan, inf or 0)."""
    rng = np.random.default_rng(0)
    store = open_store(path, create=True)
    for name, rows, prefix in (("corpus", DOCS, "d"), ("queries", QUERIES, "q")):
        vectors = rng.normal(size=(rows, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        if bad is not None and bad[0] == name:
            vectors[bad[1]] = bad[2]
        metadata = new_table_metadata(
            provider="local",
            model=model,
            dimension=DIM,
            normalized=True,
            role=name,
            dtype="float32",
        )
        schema = embedding_schema(DIM, "float32", False, metadata)
        columns = [
            pa.array([f"{prefix}{i}" for i in range(rows)], pa.string()),
            vectors_to_arrow(vectors),
            pa.array(["0" * 64] * rows, pa.string()),
        ]
        store.append(name, pa.Table.from_arrays(columns, schema=schema))
    return path


QRELS = "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(QUERIES))


@pytest.fixture(scope="module")
def pca_adaptor(tmp_path_factory) -> Path:
    """A PCA adaptor fitted (fast) on the standard store, copied by the cases that need it."""
    root = tmp_path_factory.mktemp("base")
    store = write_store(root / "store")
    result = CliRunner().invoke(
        app, ["fit", str(store), "--method", "pca", "--out", str(root / "ad")]
    )
    assert result.exit_code == 0, result.output
    return root / "ad"


class Ctx:
    """What a case builds its bad input with; every path lies under the case's tmp_path."""

    def __init__(self, root: Path, adaptor: Path) -> None:
        self.root = root
        self._adaptor = adaptor

    def p(self, name: str) -> str:
        return str(self.root / name)

    def store(self, name: str = "store", **kwargs) -> str:
        return str(write_store(self.root / name, **kwargs))

    def adaptor(self, name: str = "ad") -> str:
        shutil.copytree(self._adaptor, self.root / name)
        return self.p(name)

    def file(self, name: str, content: str | bytes) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)
        return str(path)

    def jsonl(self, name: str, *lines: str) -> str:
        return self.file(name, "".join(line + "\n" for line in lines))

    def qrels(self, text: str = QRELS, name: str = "qrels.tsv") -> str:
        return self.file(name, text)

    def user_folder(self, name: str = "mine") -> str:
        """A folder of the user's, not written by madapt: --overwrite must not touch it."""
        self.file(f"{name}/notes.txt", "my notes\n")
        return self.p(name)

    def truncate_part(self, store: str, table: str = "corpus") -> None:
        (part,) = sorted((Path(store) / table).glob("*.parquet"))
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])

    def edit_config(self, adaptor: str, edit: Callable[[dict], object]) -> None:
        path = Path(adaptor) / "config.json"
        config = json.loads(path.read_text())
        edited = edit(config)
        path.write_text(json.dumps(config if edited is None else edited))


def nan_weights(adaptor: str) -> None:
    from safetensors.numpy import load_file, save_file

    path = Path(adaptor) / "adaptor.safetensors"
    tensors = load_file(path)
    name = next(k for k, v in tensors.items() if np.issubdtype(v.dtype, np.floating) and v.size)
    tensors[name] = np.full_like(tensors[name], np.nan)
    save_file(tensors, path)


# --- the cases ------------------------------------------------------------------------------------
# Each builder returns the argv; embed fails on its source or options before any model loads.

GOOD = ('{"id": "a", "text": "alpha"}', '{"id": "b", "text": "beta"}')
NAN, INF = float("nan"), float("inf")
PART = r"/store/corpus/part-\d+\.parquet"
CLICK_USAGE = (
    "click's usage error: exit 2 but four stderr lines ('Usage: ...', \"Try 'madapt ... "
    "--help'\", '', 'Error: Invalid value for ...'), not one line starting 'error:'"
)


def case(case_id, build, pattern, *, absent=None, code=2):
    """One row: ``build(ctx) -> argv``; ``pattern`` must match the single stderr line;
    ``absent``: outputs (relative to tmp_path) that must not exist afterwards (default by
    command: embed/apply 'out', fit 'ad'); an output that existed before is checked for
    being unchanged instead, with everything else under tmp_path."""
    if absent is None:
        command = case_id.split("-")[0]
        absent = {"embed": ("out",), "apply": ("out",), "fit": ("ad",)}.get(command, ())
    return pytest.param(build, code, pattern, absent, id=case_id)


def embed_file(c: Ctx, *lines: str, name: str = "docs.jsonl", extra: tuple = ()) -> list:
    return ["embed", c.jsonl(name, *lines), "--out", c.p("out"), *extra]


def embed_good(c: Ctx, *extra: str) -> list:
    return embed_file(c, *GOOD, extra=extra)


def embed_non_utf8(c: Ctx) -> list:
    source = c.file("docs.jsonl", b'{"id": "a", "text": "x"}\n{"id": "b", "text": "\xff\xfe"}\n')
    return ["embed", source, "--out", c.p("out")]


def embed_corrupt_gzip(c: Ctx) -> list:
    raw = gzip.compress(("\n".join(GOOD * 50) + "\n").encode())
    source = c.file("docs.jsonl.gz", raw[:20] + b"\x00garbage" * 8 + raw[-30:])
    return ["embed", source, "--out", c.p("out")]


def embed_beir_without_corpus(c: Ctx) -> list:
    c.jsonl("beir/queries.jsonl", '{"_id": "q1", "text": "what"}')
    c.qrels(name="beir/qrels/test.tsv")
    return ["embed", c.p("beir"), "--out", c.p("out")]


def embed_to(c: Ctx, out: str, *extra: str) -> list:
    return ["embed", c.jsonl("docs.jsonl", *GOOD), "--out", out, *extra]


def fit(c: Ctx, *extra: str, store: str | None = None, out: str | None = None) -> list:
    return ["fit", store or c.store(), "--out", out or c.p("ad"), *extra]


def fit_pca_on(c: Ctx, table: str, row: int, value: float) -> list:
    return fit(c, "--method", "pca", store=c.store(bad=(table, row, value)))


def supervised(c: Ctx, qrels: str) -> list:
    return fit(c, "--mode", "supervised", "--qrels", qrels)


def evaluate(c: Ctx, *extra: str, store: str | None = None, qrels: str | None = None) -> list:
    return ["eval", store or c.store(), "--qrels", qrels or c.qrels(), *extra]


def eval_qrels(c: Ctx, text: str | bytes, name: str = "qrels.tsv") -> list:
    return evaluate(c, qrels=c.qrels(text, name))


def eval_adaptor(c: Ctx, adaptor: str, store: str | None = None) -> list:
    return evaluate(c, "--dims", "8", "--adaptor", adaptor, store=store)


def apply(c: Ctx, *extra: str, store=None, adaptor=None, out=None, dims="8") -> list:
    adaptor = adaptor or c.adaptor()
    store = store or c.store()
    return ["apply", adaptor, store, "--dims", dims, "--out", out or c.p("out"), *extra]


def truncated(c: Ctx) -> str:
    store = c.store()
    c.truncate_part(store)
    return store


def info_of(build_store: Callable[[Ctx], str]) -> Callable[[Ctx], list]:
    return lambda c: ["info", build_store(c)]


def bad_marker(c: Ctx) -> str:
    c.file("store/madapt-store.json", "{")
    return c.p("store")


def edited(c: Ctx, edit: Callable[[dict], object]) -> str:
    adaptor = c.adaptor()
    c.edit_config(adaptor, edit)
    return adaptor


def raw_config(c: Ctx, text: str) -> str:
    adaptor = c.adaptor()
    c.file("ad/config.json", text)
    return adaptor


def nan_adaptor(c: Ctx) -> str:
    adaptor = c.adaptor()
    nan_weights(adaptor)
    return adaptor


def with_qrels_line(line: str) -> str:
    """The standard qrels (header + 6 lines) and ``line`` as line 8."""
    return QRELS + line + "\n"


def set_key(key: str, value) -> Callable[[dict], None]:
    return lambda config: config.__setitem__(key, value)


def import_parquet(c: Ctx, ids: list, vectors, *extra: str, column=None) -> list:
    """``madapt import`` of a Parquet file of ``ids`` and ``vectors`` (column ``emb``) into
    ``out``, or into the existing store ``store`` with ``--out store`` in ``extra``."""
    import pyarrow.parquet as pq

    array = np.asarray(vectors, dtype=np.float32)
    if column is None:
        column = pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), array.shape[1])
    path = c.root / "vectors.parquet"
    pq.write_table(pa.table({"_id": ids, "emb": column}), path)
    out = [] if "--out" in extra else ["--out", c.p("out")]
    return ["import", str(path), "--id-field", "_id", "--vector-field", "emb", *out, *extra]


def import_rows(value: float | None = None, row: int = 2, dim: int = 4) -> np.ndarray:
    vectors = np.eye(6, dim, dtype=np.float32) + 0.5
    if value is not None:
        vectors[row] = value
    return vectors


IMPORT_IDS = ["a", "b", "c", "d", "e", "f"]


CASES = [
    # embed ---------------------------------------------------------------------------------------
    case(
        "embed-malformed-json",
        lambda c: embed_file(c, GOOD[0], '{"id": "b", "text": '),
        r"/docs\.jsonl:2: malformed JSON",
    ),
    case("embed-not-an-object", lambda c: embed_file(c, GOOD[0], "[1, 2]"), r"/docs\.jsonl:2:"),
    case(
        "embed-missing-id",
        lambda c: embed_file(c, GOOD[0], '{"text": "no id"}'),
        r"/docs\.jsonl:2:.*\bid\b",
    ),
    case(
        "embed-duplicate-ids",
        lambda c: embed_file(c, *GOOD, GOOD[0]),
        r"/docs\.jsonl:3:.*'a'",
    ),
    case(
        "embed-empty-text",
        lambda c: embed_file(c, GOOD[0], '{"id": "b", "text": " "}'),
        r"/docs\.jsonl:2:.*'b'",
    ),
    case(
        "embed-missing-text",
        lambda c: embed_file(c, GOOD[0], '{"id": "b"}'),
        r"/docs\.jsonl:2:.*'b'",
    ),
    case("embed-non-utf8", embed_non_utf8, r"/docs\.jsonl:2:"),
    case("embed-empty-file", lambda c: embed_file(c), r"/docs\.jsonl\b"),
    case("embed-corrupt-gzip", embed_corrupt_gzip, r"/docs\.jsonl\.gz\b"),
    case(
        "embed-unknown-file-type", lambda c: embed_file(c, *GOOD, name="docs.txt"), r"/docs\.txt\b"
    ),
    case(
        "embed-source-missing",
        lambda c: ["embed", c.p("nope.jsonl"), "--out", c.p("out")],
        r"/nope\.jsonl\b",
    ),
    case("embed-beir-without-corpus", embed_beir_without_corpus, r"/beir\b.*corpus"),
    case(
        "embed-unknown-format", lambda c: embed_good(c, "--format", "feather"), r"--format.*feather"
    ),
    case(
        "embed-unknown-provider", lambda c: embed_good(c, "--provider", "nope"), r"provider 'nope'"
    ),
    case("embed-unknown-dtype", lambda c: embed_good(c, "--dtype", "int8"), r"--dtype.*'int8'"),
    case("embed-bad-table-name", lambda c: embed_good(c, "--table", "../x"), r"'\.\./x'"),
    case("embed-unknown-role", lambda c: embed_good(c, "--role", "boss"), r"--role.*'boss'"),
    case("embed-unknown-input-format", lambda c: embed_good(c, "--input-format", "xml"), r"'xml'"),
    case("embed-api-option-for-local", lambda c: embed_good(c, "--rpm", "10"), r"--rpm"),
    case(
        "embed-batch-size-0",
        lambda c: embed_good(c, "--batch-size", "0"),
        r"--batch-size",
    ),
    case("embed-out-is-file", lambda c: embed_to(c, c.file("out", "x")), r"/out is a file"),
    case("embed-out-user-folder", lambda c: embed_to(c, c.user_folder()), r"--out .*/mine\b"),
    case(
        "embed-out-store-of-other-format",
        lambda c: embed_to(c, c.store("out"), "--format", "lance"),
        r"/out is a parquet store",
    ),
    # info ----------------------------------------------------------------------------------------
    case("info-store-missing", lambda c: ["info", c.p("nope")], r"/nope\b"),
    case("info-not-a-store", info_of(lambda c: c.user_folder()), r"/mine\b"),
    case("info-store-is-file", info_of(lambda c: c.file("store", "x")), r"/store is a file"),
    case("info-truncated-part", info_of(truncated), PART),
    case("info-bad-marker", info_of(bad_marker), r"/store/madapt-store\.json\b"),
    # fit -----------------------------------------------------------------------------------------
    case("fit-store-missing", lambda c: fit(c, store=c.p("nope")), r"/nope\b"),
    case("fit-not-a-store", lambda c: fit(c, store=c.user_folder()), r"/mine\b"),
    case("fit-truncated-part", lambda c: fit(c, "--method", "pca", store=truncated(c)), PART),
    case("fit-nan-vector", lambda c: fit_pca_on(c, "corpus", 7, NAN), r"'corpus' of .*'d7'"),
    case("fit-inf-vector", lambda c: fit_pca_on(c, "corpus", 7, INF), r"'corpus' of .*'d7'"),
    case("fit-zero-vector", lambda c: fit_pca_on(c, "corpus", 7, 0.0), r"'corpus' of .*'d7'"),
    case("fit-out-is-file", lambda c: fit(c, out=c.file("ad", "x")), r"--out .*/ad is a file"),
    case(
        "fit-out-inside-store",
        lambda c: fit(c, out=c.store() + "/ad"),
        r"--out .*/store/ad\b",
        absent=("store/ad",),
    ),
    case(
        "fit-out-user-folder-overwrite",
        lambda c: fit(c, "--overwrite", out=c.user_folder()),
        r"--out .*/mine\b",
    ),
    case(
        "fit-out-existing-adaptor",
        lambda c: fit(c, "--method", "pca", out=c.adaptor()),
        r"--out .*/ad\b.*--overwrite",
    ),
    case("fit-lr-nan", lambda c: fit(c, "--lr", "nan"), r"--lr\b.*nan"),
    case("fit-lr-negative", lambda c: fit(c, "--lr", "-0.1"), r"--lr\b.*-0\.1"),
    case("fit-epochs-negative", lambda c: fit(c, "--epochs", "-1"), r"--epochs\b"),
    case(
        "fit-epochs-not-a-number",
        lambda c: fit(c, "--epochs", "ten"),
        r"--epochs\b",
    ),
    case("fit-train-dims-0", lambda c: fit(c, "--train-dims", "0"), r"--train-dims 0\b"),
    case(
        "fit-train-dims-too-big", lambda c: fit(c, "--train-dims", "8,9999"), r"--train-dims 9999"
    ),
    case("fit-train-dims-junk", lambda c: fit(c, "--train-dims", "8,x"), r"--train-dims '8,x'"),
    case("fit-unknown-method", lambda c: fit(c, "--method", "magic"), r"--method 'magic'"),
    case("fit-unknown-mode", lambda c: fit(c, "--mode", "semi"), r"--mode 'semi'"),
    case("fit-device-cuda7", lambda c: fit(c, "--device", "cuda:7"), r"--device 'cuda:7'"),
    case("fit-supervised-without-qrels", lambda c: fit(c, "--mode", "supervised"), r"--qrels"),
    case(
        "fit-qrels-inf",
        lambda c: supervised(c, c.qrels(with_qrels_line("q0\td1\tinf"))),
        r"/qrels\.tsv:8:.*'inf'",
    ),
    case("fit-qrels-missing", lambda c: supervised(c, c.p("nope.tsv")), r"/nope\.tsv\b"),
    case(
        "fit-resume-not-an-adaptor",
        lambda c: fit(c, "--method", "smec", "--resume", c.user_folder()),
        r"/mine\b",
    ),
    # eval ----------------------------------------------------------------------------------------
    case("eval-store-missing", lambda c: evaluate(c, store=c.p("nope")), r"/nope\b"),
    case("eval-truncated-part", lambda c: evaluate(c, store=truncated(c)), PART),
    case(
        "eval-nan-vector",
        lambda c: evaluate(c, store=c.store(bad=("corpus", 3, NAN))),
        r"'corpus' of .*/store: id 'd3'",
    ),
    case(
        "eval-inf-query",
        lambda c: evaluate(c, store=c.store(bad=("queries", 2, INF))),
        r"'queries' of .*/store: id 'q2'",
    ),
    case(
        "eval-zero-vector",
        lambda c: evaluate(c, store=c.store(bad=("corpus", 4, 0.0))),
        r"'corpus' of .*/store: id 'd4'",
    ),
    case(
        "eval-qrels-inf", lambda c: eval_qrels(c, with_qrels_line("q0\td1\tinf")), r"/qrels\.tsv:8:"
    ),
    case(
        "eval-qrels-1e30",
        lambda c: eval_qrels(c, with_qrels_line("q0\td1\t1e30")),
        r"/qrels\.tsv:8:",
    ),
    case(
        "eval-qrels-fraction",
        lambda c: eval_qrels(c, with_qrels_line("q0\td1\t1.5")),
        r"/qrels\.tsv:8:.*'1\.5'",
    ),
    case(
        "eval-qrels-word-score",
        lambda c: eval_qrels(c, with_qrels_line("q0\td1\thigh")),
        r"/qrels\.tsv:8:.*'high'",
    ),
    case(
        "eval-qrels-too-few-columns",
        lambda c: eval_qrels(c, with_qrels_line("q0\td1")),
        r"/qrels\.tsv:8:",
    ),
    case("eval-qrels-empty", lambda c: eval_qrels(c, ""), r"/qrels\.tsv\b"),
    case(
        "eval-qrels-non-utf8",
        lambda c: eval_qrels(c, QRELS.encode() + b"q\xff\td1\t1\n"),
        r"/qrels\.tsv:8:",
    ),
    case(
        "eval-qrels-corrupt-gzip",
        lambda c: eval_qrels(c, b"\x1f\x8b\x08\x00garbage" * 4, "qrels.tsv.gz"),
        r"/qrels\.tsv\.gz\b",
    ),
    case("eval-qrels-missing", lambda c: evaluate(c, qrels=c.p("nope.tsv")), r"/nope\.tsv\b"),
    case("eval-dims-too-big", lambda c: evaluate(c, "--dims", "9999"), r"--dims\b.*9999"),
    case("eval-dims-zero", lambda c: evaluate(c, "--dims", "0"), r"--dims\b.*\b0\b"),
    case("eval-metrics-unknown", lambda c: evaluate(c, "--metrics", "foo@10"), r"'foo@10'"),
    case("eval-metrics-bad-k", lambda c: evaluate(c, "--metrics", "ndcg@x"), r"'ndcg@x'"),
    case(
        "eval-baseline-unknown", lambda c: evaluate(c, "--baseline", "magic"), r"--baseline 'magic'"
    ),
    case("eval-device-cuda7", lambda c: evaluate(c, "--device", "cuda:7"), r"'cuda:7'"),
    case(
        "eval-missing-table", lambda c: evaluate(c, "--queries-table", "asks"), r"/store\b.*'asks'"
    ),
    case("eval-adaptor-missing", lambda c: eval_adaptor(c, c.p("nope")), r"/nope\b"),
    case(
        "eval-adaptor-config-list",
        lambda c: eval_adaptor(c, edited(c, lambda _: [1, 2])),
        r"/ad/config\.json\b",
    ),
    case(
        "eval-adaptor-nan-weights",
        lambda c: eval_adaptor(c, nan_adaptor(c)),
        r"/ad/adaptor\.safetensors\b",
    ),
    case(
        "eval-adaptor-other-model",
        lambda c: eval_adaptor(c, c.adaptor(), store=c.store(model="other/model")),
        r"'ad'.*'other/model'",
    ),
    case(
        "eval-report-user-folder-overwrite",
        lambda c: evaluate(c, "--dims", "8", "--report", c.user_folder(), "--overwrite"),
        r"--report .*/mine\b",
    ),
    # apply ---------------------------------------------------------------------------------------
    case("apply-store-missing", lambda c: apply(c, store=c.p("nope")), r"/nope\b"),
    case("apply-not-a-store", lambda c: apply(c, store=c.user_folder()), r"/mine\b"),
    case("apply-truncated-part", lambda c: apply(c, store=truncated(c)), PART),
    case(
        "apply-nan-vector",
        lambda c: apply(c, store=c.store(bad=("corpus", 5, NAN))),
        r"'corpus' of .*/store: id 'd5'",
    ),
    case(
        "apply-inf-vector",
        lambda c: apply(c, store=c.store(bad=("queries", 1, INF))),
        r"'queries' of .*/store: id 'q1'",
    ),
    case(
        "apply-zero-vector",
        lambda c: apply(c, store=c.store(bad=("corpus", 5, 0.0))),
        r"'corpus' of .*/store: id 'd5'",
    ),
    case(
        "apply-out-is-file", lambda c: apply(c, out=c.file("out", "x")), r"--out .*/out is a file"
    ),
    case(
        "apply-out-inside-store",
        lambda c: apply(c, out=c.store() + "/corpus2"),
        r"--out .*/store/corpus2\b",
        absent=("store/corpus2",),
    ),
    case(
        "apply-out-user-folder-overwrite",
        lambda c: apply(c, "--overwrite", out=c.user_folder()),
        r"--out .*/mine\b",
    ),
    case(
        "apply-out-existing-store",
        lambda c: apply(c, out=c.store("out")),
        r"--out .*/out\b.*--overwrite",
    ),
    case("apply-dims-too-big", lambda c: apply(c, dims="9999"), r"--dims\b.*9999"),
    case("apply-dims-junk", lambda c: apply(c, dims="8,,x"), r"--dims\b.*'x'"),
    case("apply-unknown-format", lambda c: apply(c, "--format", "feather"), r"--format 'feather'"),
    case("apply-unknown-table", lambda c: apply(c, "--table", "nope"), r"/store\b.*'nope'"),
    case("apply-bad-table-name", lambda c: apply(c, "--table", "../x"), r"'\.\./x'"),
    case(
        "apply-chunk-rows-0",
        lambda c: apply(c, "--chunk-rows", "0"),
        r"--chunk-rows 0",
    ),
    case("apply-adaptor-missing", lambda c: apply(c, adaptor=c.p("nope")), r"/nope\b"),
    case(
        "apply-adaptor-config-list",
        lambda c: apply(c, adaptor=edited(c, lambda _: [1, 2])),
        r"/ad/config\.json\b",
    ),
    case(
        "apply-adaptor-config-invalid-json",
        lambda c: apply(c, adaptor=raw_config(c, "{")),
        r"/ad/config\.json\b",
    ),
    case(
        "apply-adaptor-negative-dimension",
        lambda c: apply(c, adaptor=edited(c, set_key("dimension", -16))),
        r"/ad/config\.json\b.*'dimension'",
    ),
    case(
        "apply-adaptor-dimension-edited",
        lambda c: apply(c, adaptor=edited(c, set_key("dimension", 32))),
        r"/ad/.*dimension 32",
    ),
    case(
        "apply-adaptor-nan-weights",
        lambda c: apply(c, adaptor=nan_adaptor(c)),
        r"/ad/adaptor\.safetensors\b",
    ),
    case(
        "apply-adaptor-other-model",
        lambda c: apply(c, store=c.store(model="other/model")),
        r"'ad'.*'other/model'",
    ),
    # quickstart ----------------------------------------------------------------------------------
    case(
        "quickstart-data-missing",
        lambda c: ["quickstart", "--data", c.p("nope"), "--out", c.p("qs")],
        r"/nope\b",
        absent=("qs",),
    ),
    case(
        "quickstart-unknown-backend",
        lambda c: ["quickstart", "--backend", "tensorrt", "--out", c.p("qs")],
        r"--backend.*'tensorrt'",
        absent=("qs",),
    ),
    case("quickstart-out-is-file", lambda c: ["quickstart", "--out", c.file("qs", "x")], r"/qs\b"),
    # import --------------------------------------------------------------------------------------
    case(
        "import-nan-vector",
        lambda c: import_parquet(c, IMPORT_IDS, import_rows(NAN)),
        r"vectors\.parquet: row 3 \(id 'c'\) has a non-finite value",
        absent=("out",),
    ),
    case(
        "import-inf-vector-into-existing-store",
        lambda c: import_parquet(
            c, IMPORT_IDS, import_rows(INF), "--out", c.store(), "--table", "mine"
        ),
        r"vectors\.parquet: row 3 \(id 'c'\) has a non-finite value",
    ),
    case(
        "import-zero-vector",
        lambda c: import_parquet(c, IMPORT_IDS, import_rows(0.0, row=4)),
        r"row 5 \(id 'e'\) is an all-zero vector",
        absent=("out",),
    ),
    case(
        "import-ragged-vectors",
        lambda c: import_parquet(
            c,
            IMPORT_IDS[:3],
            None,
            column=pa.array([[1.0, 2.0], [1.0, 2.0], [1.0]], pa.list_(pa.float32())),
        ),
        r"row 3 \(id 'c'\) has 1 values, not 2 .*\(ragged vectors\)",
        absent=("out",),
    ),
    case(
        "import-duplicate-id",
        lambda c: import_parquet(c, ["a", "b", "c", "d", "b", "f"], import_rows()),
        r"vectors\.parquet: row 5: duplicate id 'b' \(first at .*row 2\)",
        absent=("out",),
    ),
    case(
        "import-missing-id",
        lambda c: import_parquet(c, ["a", "b", None, "d", "e", "f"], import_rows()),
        r"vectors\.parquet: row 3 has no id",
        absent=("out",),
    ),
    case(
        "import-wrong-vector-field",
        lambda c: [*import_parquet(c, IMPORT_IDS, import_rows()), "--vector-field", "embedding"],
        r"vectors\.parquet: no column 'embedding' \(--vector-field\)",
        absent=("out",),
    ),
    case(
        "import-unreadable-file",
        lambda c: ["import", c.file("v.parquet", b"PAR1 torn"), "--out", c.p("out")],
        r"/v\.parquet: not a readable Parquet file",
        absent=("out",),
    ),
    case(
        "import-bad-db-table",
        lambda c: ["import", f"{c.p('nodb')}::corpus", "--out", c.p("out")],
        r"/nodb::corpus: no LanceDB database",
        absent=("out",),
    ),
    case(
        "import-other-model-into-existing-table",
        lambda c: import_parquet(
            c,
            IMPORT_IDS,
            import_rows(),
            "--out",
            c.store(),
            "--table",
            "corpus",
            "--provider",
            "openai",
            "--model",
            "text-embedding-3-small",
        ),
        r"table 'corpus' holds vectors with provider='local', not 'openai'",
    ),
]


# issue #13: encode, embed --adaptor and applied stores -------------------------------------------
def applied_store(c: Ctx) -> str:
    """The standard store through the PCA adaptor at size 8 (`madapt apply`)."""
    args = ["apply", c.adaptor("ad0"), c.store("raw"), "--dims", "8", "--out", c.p("store")]
    assert CliRunner().invoke(app, args).exit_code == 0
    return c.p("store")


def encode(c: Ctx, *extra: str) -> list:
    return ["encode", "--adaptor", c.adaptor(), *extra]


CASES += [
    case("encode-unknown-adaptor", lambda c: ["encode", "--adaptor", c.p("nope"), "x"], r"/nope\b"),
    case("encode-dim-above-adaptor", lambda c: encode(c, "--dim", "17", "x"), r"dimension 17"),
    case("encode-empty-stdin", lambda c: encode(c), r"no texts to encode.*stdin"),
    case(
        "encode-malformed-jsonl",
        lambda c: encode(c, "--input", c.jsonl("q.jsonl", '{"text": "a"}', '{"text": ')),
        r"/q\.jsonl line 2: invalid JSON",
    ),
    case(
        "encode-jsonl-without-text",
        lambda c: encode(c, "--input", c.jsonl("q.jsonl", '{"id": "a", "body": "x"}')),
        r"line 1: no text in field 'text'",
    ),
    case("encode-bad-role", lambda c: encode(c, "--role", "both", "x"), r"--role"),
    case("encode-out-suffix", lambda c: encode(c, "--out", c.p("v.txt"), "x"), r"/v\.txt\b"),
    case(
        "encode-other-model",
        lambda c: encode(c, "--model", "all-mpnet-base-v2", "x"),
        r"not 'sentence-transformers/all-mpnet-base-v2'",
    ),
    case("embed-dims-without-adaptor", lambda c: embed_good(c, "--dims", "8"), r"--dims needs"),
    case(
        "embed-adaptor-without-dims",
        lambda c: embed_good(c, "--adaptor", c.adaptor()),
        r"--adaptor needs --dims",
    ),
    case(
        "embed-adaptor-dims-too-large",
        lambda c: embed_good(c, "--adaptor", c.adaptor(), "--dims", "64"),
        r"64",
    ),
    case(
        "embed-adaptor-other-prompt",
        lambda c: embed_good(c, "--adaptor", c.adaptor(), "--dims", "8", "--query-prompt", "q: "),
        r"query vectors made with",
    ),
    case(
        "eval-vector-column-missing",
        lambda c: evaluate(c, "--vector-column", "vector_64", store=applied_store(c)),
        r"--vector-column vector_64: table 'corpus'.*vector_8",
    ),
    case(
        "eval-applied-store-with-adaptor",
        lambda c: evaluate(c, "--adaptor", c.adaptor(), store=applied_store(c)),
        r"--adaptor: not with stored columns",
    ),
    case(
        "fit-applied-store",
        lambda c: fit(c, store=applied_store(c)),
        r"/store holds adapted vectors \(vector_8\)",
    ),
    case(
        "apply-applied-store",
        lambda c: apply(c, store=applied_store(c)),
        r"holds adapted vectors .*`madapt apply`",
    ),
    case("apply-bad-dtype", lambda c: apply(c, "--dtype", "int8"), r"--dtype"),
]


# issue 18: stored precisions and quantisation-aware training ------------------------------------
CASES += [
    case(
        "apply-unknown-precision", lambda c: apply(c, "--precision", "int4"), r"--precision 'int4'"
    ),
    case(
        "apply-binary-size-not-multiple-of-8",
        lambda c: apply(c, "--precision", "binary", dims="12"),
        r"--precision binary .*size 12 is not a multiple of 8",
    ),
    case(
        "apply-bad-calibration-method",
        lambda c: apply(c, "--precision", "int8", "--calibration", "percentile:70"),
        r"--calibration: .*'percentile:70'",
    ),
    case(
        "apply-calibration-from-missing",
        lambda c: apply(c, "--precision", "int8", "--calibration-from", c.p("nope")),
        r"--calibration-from .*/nope\b",
    ),
    case(
        "apply-calibration-from-store-without-one",
        lambda c: apply(c, "--precision", "int8", "--calibration-from", c.store("raw")),
        r"/raw holds no int8 calibration",
    ),
    case(
        "apply-calibration-from-bad-json",
        lambda c: apply(c, "--precision", "int8", "--calibration-from", c.file("cal.json", "{")),
        r"/cal\.json: not a JSON calibration",
    ),
    case(
        "apply-calibration-from-bad-ranges",
        lambda c: apply(
            c,
            "--precision",
            "int8",
            "--calibration-from",
            c.file("cal.json", json.dumps({"sizes": {"8": {"method": "minmax", "lower": [1]}}})),
        ),
        r"/cal\.json: .*int8 calibration",
    ),
    case("encode-unknown-precision", lambda c: encode(c, "--precision", "int4", "x"), r"'int4'"),
    case(
        "encode-int8-without-calibration",
        lambda c: encode(c, "--dim", "8", "--precision", "int8", "x"),
        r"--precision int8 needs --calibration-from",
    ),
    case(
        "encode-binary-size-not-multiple-of-8",
        lambda c: encode(c, "--dim", "12", "--precision", "binary", "x"),
        r"size 12 is not a multiple of 8",
    ),
    case(
        "fit-quantization-aware-unknown",
        lambda c: fit(c, "--quantization-aware", "int4"),
        r"--quantization-aware must be binary or int2, not 'int4'",
    ),
    case(
        "fit-quantization-aware-pca",
        lambda c: fit(c, "--method", "pca", "--quantization-aware", "binary"),
        r"--quantization-aware needs --method matryoshka",
    ),
    case("fit-precision-unknown", lambda c: fit(c, "--precision", "fp16"), r"--precision\b.*fp16"),
    case(
        "fit-quantization-aware-paper",
        lambda c: fit(c, "--objective", "paper", "--quantization-aware", "binary"),
        r"--quantization-aware needs --objective distill",
    ),
]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` -> its bytes (None for a folder)."""
    return {
        str(path.relative_to(root)): None if path.is_dir() else path.read_bytes()
        for path in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize(("build", "code", "pattern", "absent"), CASES)
def test_bad_input_is_one_line_and_leaves_nothing(
    tmp_path, monkeypatch, pca_adaptor, build, code, pattern, absent
):
    args = [str(arg) for arg in build(Ctx(tmp_path, pca_adaptor))]
    # an output that is already there must come out unchanged (the snapshot), not vanish
    absent = [name for name in absent if not (tmp_path / name).exists()]
    monkeypatch.chdir(tmp_path)  # what a command writes to the working directory is caught too
    before = snapshot(tmp_path)

    started = time.perf_counter()
    result = CliRunner().invoke(app, args)
    seconds = time.perf_counter() - started

    detail = (args, result.exit_code, result.stderr, result.stdout, repr(result.exception))
    assert "Traceback" not in result.output, detail
    assert result.exception is None or isinstance(result.exception, SystemExit), detail
    assert result.exit_code == code, detail
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, detail
    assert lines[0].startswith("error:"), detail
    assert re.search(pattern, lines[0]), (pattern, detail)
    for name in absent:
        assert not (tmp_path / name).exists(), (name, detail)
    after = snapshot(tmp_path)
    assert after == before, (sorted(set(after) ^ set(before)), detail)
    assert seconds < 5, (seconds, detail)  # refused up front: no model load, no training


def test_the_table_is_wide():
    """At least 35 cases, over every command, with unique ids."""
    ids = [param.id for param in CASES]
    assert len(ids) == len(set(ids)) >= 35
    assert {i.split("-")[0] for i in ids} >= {"embed", "info", "fit", "eval", "apply"}
