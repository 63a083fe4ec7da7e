"""Issue #11 (safety), numbers: NaN, infinite and all-zero vectors, diverging training,
out-of-range hyper-parameters, broken adaptor artifacts and unjudged queries, each refused
(or reported) with one line and exit 2 instead of a silent NaN, a wrong figure or a traceback."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from madapt_cli.cli import app
from madapt_cli.errors import InputError
from madapt_cli.methods.adaptor import CONFIG_FILE, WEIGHTS_FILE, Adaptor
from madapt_cli.methods.base import get_method
from madapt_cli.methods.matryoshka import train_unsupervised
from madapt_cli.methods.smec import SMECOptions, train_smec
from madapt_cli.store.base import embedding_schema, new_table_metadata, open_store, vectors_to_arrow
from madapt_cli.training.config import TrainConfig
from madapt_cli.training.loop import TrainingDiverged

DIM = 16
MODEL = "test/numbers-model"


def _write_table(store, name: str, ids: list[str], vectors: np.ndarray) -> None:
    metadata = new_table_metadata(
        provider="local",
        model=MODEL,
        dimension=vectors.shape[1],
        normalized=True,
        role=name,
        dtype="float32",
    )
    schema = embedding_schema(vectors.shape[1], "float32", False, metadata)
    columns = [
        pa.array(ids, pa.string()),
        vectors_to_arrow(vectors),
        pa.array(["0" * 64] * len(ids)),
    ]
    store.append(name, pa.Table.from_arrays(columns, schema=schema))


def make_store(
    root: Path,
    *,
    docs: int = 80,
    queries: int = 12,
    bad_docs: dict[int, float] | None = None,
    bad_queries: dict[int, float] | None = None,
) -> tuple[Path, Path]:
    """A store whose query i is a noisy copy of document i, and its qrels (query i judges
    document i with 1). ``bad_*``: row -> value written over the whole row (nan, inf, 0)."""
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((docs, DIM)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    query_vectors = corpus[:queries] + 0.1 * rng.standard_normal((queries, DIM)).astype(np.float32)
    query_vectors /= np.linalg.norm(query_vectors, axis=1, keepdims=True)
    for row, value in (bad_docs or {}).items():
        corpus[row] = value
    for row, value in (bad_queries or {}).items():
        query_vectors[row] = value
    store = open_store(root / "store", create=True)
    _write_table(store, "corpus", [f"d{i}" for i in range(docs)], corpus)
    _write_table(store, "queries", [f"q{i}" for i in range(queries)], query_vectors)
    qrels = root / "qrels.tsv"
    lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in range(queries)]
    qrels.write_text("\n".join(lines) + "\n")
    return root / "store", qrels


def madapt(*args: object):
    """`madapt ARGS` through typer's CliRunner (in-process: monkeypatches apply)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


FIT = ("--train-dims", "4,8,16", "--epochs", "2", "--batch-size", "32", "--topk", "3")


# --- bad vectors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "value", "problem"),
    [
        ("matryoshka", math.nan, "non-finite"),
        ("matryoshka", math.inf, "non-finite"),
        ("matryoshka", 0.0, "all-zero"),
        ("pca", math.nan, "non-finite"),
        ("smec", math.nan, "non-finite"),
    ],
)
def test_fit_refuses_a_store_with_bad_vectors(tmp_path, method, value, problem):
    store, _ = make_store(tmp_path, bad_docs={7: value, 30: value})
    result = madapt("fit", store, "--out", tmp_path / "ad", "--method", method, *FIT)
    line = one_line_error(result)
    assert "table 'corpus'" in line and "'d7'" in line and problem in line
    assert not (tmp_path / "ad").exists()


def test_fit_refuses_bad_query_vectors(tmp_path):
    store, qrels = make_store(tmp_path, bad_queries={3: math.nan})
    result = madapt("fit", store, "--out", tmp_path / "ad", "--qrels", qrels, *FIT)
    line = one_line_error(result)
    assert "table 'queries'" in line and "'q3'" in line
    assert not (tmp_path / "ad").exists()


@pytest.mark.parametrize("table", ["corpus", "queries"])
def test_eval_refuses_a_store_with_nan_rows(tmp_path, table):
    bad = {5: math.nan, 9: math.nan}
    store, qrels = make_store(
        tmp_path, **({"bad_docs": bad} if table == "corpus" else {"bad_queries": bad})
    )
    result = madapt("eval", store, "--qrels", qrels, "--dims", "8", "--device", "cpu")
    line = one_line_error(result)
    first = "'d5'" if table == "corpus" else "'q5'"
    assert f"table '{table}'" in line and first in line and "non-finite" in line


def test_eval_refuses_zero_corpus_vectors(tmp_path):
    store, qrels = make_store(tmp_path, bad_docs={40: 0.0})
    result = madapt("eval", store, "--qrels", qrels, "--dims", "8", "--device", "cpu")
    line = one_line_error(result)
    assert "table 'corpus'" in line and "'d40'" in line and "all-zero" in line


# --- training that diverges ---------------------------------------------------------------------
def _corpus(rows: int = 64) -> np.ndarray:
    vectors = np.random.default_rng(1).standard_normal((rows, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _nan_from_call(count: int, real):
    """A loss function that returns NaN from its ``count``-th call on."""
    calls = {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * math.nan if calls["n"] >= count else value

    return loss, calls


def test_a_nan_loss_stops_training_at_once(monkeypatch):
    from madapt_cli.training import objectives as training

    real = training.UnsupervisedObjective.__call__
    loss, calls = _nan_from_call(3, real)
    monkeypatch.setattr(training.UnsupervisedObjective, "__call__", loss)
    config = TrainConfig(train_dims=[4, 8, 16], epochs=5, batch_size=32, topk=3, device="cpu")
    with pytest.raises(TrainingDiverged, match=r"stage 'unsupervised', epoch 2, step 1 of 2"):
        train_unsupervised(_corpus(), config)
    assert calls["n"] == 3  # no step after the NaN one


def test_a_huge_learning_rate_stops_training():
    config = TrainConfig(
        train_dims=[4, 8, 16], epochs=3, batch_size=32, topk=3, device="cpu", lr=1e30
    )
    with pytest.raises(TrainingDiverged, match=r"diverged.*--lr"):
        train_unsupervised(_corpus(), config)


def test_fit_with_a_diverging_loss_exits_2_and_writes_nothing(tmp_path, monkeypatch):
    from madapt_cli.training import objectives as training

    loss, _ = _nan_from_call(2, training.UnsupervisedObjective.__call__)
    monkeypatch.setattr(training.UnsupervisedObjective, "__call__", loss)
    store, _ = make_store(tmp_path)
    result = madapt("fit", store, "--out", tmp_path / "ad", *FIT, "--objective", "paper")
    line = one_line_error(result)
    assert "training diverged" in line and "nothing was written" in line
    assert not (tmp_path / "ad").exists()


def test_smec_training_stops_on_a_nan_loss(monkeypatch):
    from madapt_cli import losses as smec

    loss, calls = _nan_from_call(2, smec.MemorySimilarityLoss.forward)
    monkeypatch.setattr(smec.MemorySimilarityLoss, "forward", loss)
    config = TrainConfig(train_dims=[4, 8], epochs=2, batch_size=32, topk=3, device="cpu")
    with pytest.raises(TrainingDiverged, match=r"stage 'smec 8', epoch 1, step 2"):
        train_smec(_corpus(), config, SMECOptions(to_dim=4, sequential=True))
    assert calls["n"] == 2


# --- hyper-parameters ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("--lr", "nan"), "--lr"),
        (("--lr", "-0.1"), "--lr"),
        (("--lr", "inf"), "--lr"),
        (("--lr", "0"), "--lr"),
        (("--tau", "nan"), "--tau"),
        (("--tau", "0"), "--tau"),
        (("--alpha", "nan"), "--alpha"),
        (("--beta", "-1"), "--beta"),
        (("--gamma", "inf"), "--gamma"),
        (("--depth", "0"), "--depth"),
        (("--hard-negatives", "-1"), "--hard-negatives"),
        (("--seed", "-1"), "--seed"),
        (("--method", "smec", "--to-dim", "0"), "--to-dim"),
        (("--method", "smec", "--lr", "nan"), "--lr"),
        (("--mode", "supervised", "--lr", "nan"), "--lr"),
    ],
)
def test_fit_names_the_bad_option(tmp_path, args, option):
    store, qrels = make_store(tmp_path)
    result = madapt("fit", store, "--out", tmp_path / "ad", "--qrels", qrels, *FIT, *args)
    line = one_line_error(result)
    assert option in line, line
    assert not (tmp_path / "ad").exists()


def test_lr_message_reads_well():
    with pytest.raises(InputError, match=r"^--lr must be a positive finite number, not nan$"):
        TrainConfig(lr=math.nan).validate()
    with pytest.raises(InputError, match=r"^--lr must be .*not -0.1$"):
        TrainConfig(supervised_lr=-0.1).validate("supervised")
    # (commands/fit.py itself still calls a negative --stage1-epochs "--epochs")
    with pytest.raises(InputError, match=r"^--stage1-epochs must be a whole number >= 0"):
        TrainConfig(epochs=-2).validate("supervised")


@pytest.mark.parametrize(
    ("config", "name"),
    [
        (TrainConfig(validation_fraction=1.5), "TrainConfig.validation_fraction"),
        (TrainConfig(validation_fraction=math.nan), "TrainConfig.validation_fraction"),
        (TrainConfig(weight_decay=-1.0), "TrainConfig.weight_decay"),
        (TrainConfig(query_batch_size=0), "TrainConfig.query_batch_size"),
        (TrainConfig(positives_per_query=0), "TrainConfig.positives_per_query"),
        (TrainConfig(epochs=2.5), "--epochs"),
        (TrainConfig(patience=0), "--patience"),
        (TrainConfig(hidden=0), "--hidden"),
        (TrainConfig(topk=0), "--topk"),
        (TrainConfig(batch_size=-3), "--batch-size"),
        (TrainConfig(dim_weighting="big"), "TrainConfig.dim_weighting"),
        (TrainConfig(activation="swish"), "TrainConfig.activation"),
    ],
)
def test_train_config_validation_names_the_field(config, name):
    with pytest.raises(InputError, match=f"^{name} must be"):
        config.validate()


@pytest.mark.parametrize(
    ("options", "name"),
    [
        (SMECOptions(memory_size=0), "--memory-size"),
        (SMECOptions(to_dim=-4), "--to-dim"),
        (SMECOptions(memory_topk=0), "SMECOptions.memory_topk"),
        (SMECOptions(temperature_start=math.nan), "SMECOptions.temperature_start"),
        (SMECOptions(temperature_end=0.0), "SMECOptions.temperature_end"),
    ],
)
def test_smec_options_validation_names_the_field(options, name):
    with pytest.raises(InputError, match=f"^{name} must be"):
        options.validate()
    config = TrainConfig(train_dims=[4, 8], epochs=1, device="cpu")
    with pytest.raises(InputError, match=f"^{name} must be"):
        train_smec(_corpus(), config, options)


def test_defaults_are_valid():
    for mode in ("unsupervised", "supervised"):
        for method in ("matryoshka", "smec", "pca"):
            TrainConfig().validate(mode, get_method(method).one_learning_rate)
    SMECOptions().validate()


# --- adaptor artifacts ---------------------------------------------------------------------------
@pytest.fixture()
def trained(tmp_path) -> tuple[Path, Path]:
    """A store and a small matryoshka adaptor fitted on it (CLI)."""
    store, _ = make_store(tmp_path)
    result = madapt("fit", store, "--out", tmp_path / "ad", *FIT)
    assert result.exit_code == 0, result.output
    return store, tmp_path / "ad"


def _edit_config(adaptor: Path, edit) -> None:
    path = adaptor / CONFIG_FILE
    config = json.loads(path.read_text())
    path.write_text(json.dumps(edit(config)))


def _apply(adaptor: Path, store: Path, tmp_path: Path):
    return madapt("apply", adaptor, store, "--dims", "8", "--out", tmp_path / "applied")


def test_apply_refuses_an_adaptor_with_nan_weights(tmp_path, trained):
    store, adaptor = trained
    state = load_file(str(adaptor / WEIGHTS_FILE))
    state["g.0.weight"][0, 0] = math.nan
    save_file(state, str(adaptor / WEIGHTS_FILE))
    line = one_line_error(_apply(adaptor, store, tmp_path))
    assert WEIGHTS_FILE in line and "'g.0.weight'" in line and "NaN" in line
    assert not (tmp_path / "applied").exists()
    result = madapt("eval", store, "--qrels", tmp_path / "qrels.tsv", "--adaptor", adaptor)
    assert "'g.0.weight'" in one_line_error(result)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: [c], "must hold a JSON object, not a list"),
        (lambda c: "adaptor", "must hold a JSON object, not a str"),
        (lambda c: {**c, "dimension": -16}, "'dimension' must be a positive whole number"),
        (lambda c: {**c, "dimension": "16"}, "'dimension' must be a positive whole number"),
        (lambda c: {**c, "method": "magic"}, "unknown method 'magic'"),
        (
            lambda c: {**c, "architecture": {**c["architecture"], "hidden": -1}},
            "'architecture'.hidden must be a positive whole number",
        ),
        (
            lambda c: {**c, "architecture": {**c["architecture"], "activation": "x"}},
            "'architecture'.activation 'x' is unknown",
        ),
        (lambda c: {k: v for k, v in c.items() if k != "architecture"}, "must be an object"),
        (
            lambda c: {**c, "dimension": 15},
            "config.json says dimension 15 but adaptor.safetensors holds 16-d weights",
        ),
        (
            lambda c: {**c, "architecture": {**c["architecture"], "hidden": 31}},
            "tensor 'g.0.weight' has shape (32, 16) but config.json's architecture needs (31, 16)",
        ),
        (
            lambda c: {**c, "architecture": {**c["architecture"], "depth": 3}},
            "lacks g.4.weight",
        ),
    ],
)
def test_apply_refuses_a_broken_config(tmp_path, trained, edit, expected):
    store, adaptor = trained
    _edit_config(adaptor, edit)
    line = one_line_error(_apply(adaptor, store, tmp_path))
    assert expected in line, line
    assert str(adaptor) in line


def test_apply_refuses_torn_or_missing_weights(tmp_path, trained):
    store, adaptor = trained
    (adaptor / WEIGHTS_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    line = one_line_error(_apply(adaptor, store, tmp_path))
    assert WEIGHTS_FILE in line
    (adaptor / WEIGHTS_FILE).unlink()
    line = one_line_error(_apply(adaptor, store, tmp_path))
    assert "is not a madapt adaptor" in line


def test_smec_config_with_bad_stages_is_refused(tmp_path):
    store, _ = make_store(tmp_path)
    result = madapt("fit", store, "--out", tmp_path / "sm", "--method", "smec", *FIT)
    assert result.exit_code == 0, result.output
    _edit_config(tmp_path / "sm", lambda c: {**c, "smec": {**c["smec"], "stages": [{"x": 1}]}})
    with pytest.raises(InputError, match=r"'smec\.stages' must list stages"):
        Adaptor.load(tmp_path / "sm")
    _edit_config(tmp_path / "sm", lambda c: {**c, "smec": [1]})
    with pytest.raises(InputError, match="'smec' must be an object"):
        Adaptor.load(tmp_path / "sm")


def test_a_valid_adaptor_still_loads(trained):
    _, adaptor = trained
    loaded = Adaptor.load(adaptor)
    out = loaded.transform(_corpus(4), dim=8)
    assert out.shape == (4, 8) and np.isfinite(out).all()
    assert torch.isfinite(next(loaded.module.parameters())).all()


# --- queries judged only with relevance <= 0 ----------------------------------------------------
def test_eval_warns_about_queries_without_a_relevant_judgement(tmp_path):
    store, qrels = make_store(tmp_path)
    lines = qrels.read_text().splitlines()
    lines = [
        line.replace("\t1", "\t0") if line.startswith(("q2\t", "q5\t")) else line for line in lines
    ]
    lines.append("q7\td50\t-1")
    qrels.write_text("\n".join(lines) + "\n")
    report = tmp_path / "report"
    result = madapt(
        "eval", store, "--qrels", qrels, "--dims", "8", "--device", "cpu", "--report", report
    )
    assert result.exit_code == 0, result.output
    assert "2 of 12 queries (e.g. 'q2') have no judgement of relevance >= 1" in result.stderr
    written = json.loads((report / "report.json").read_text())
    assert any("2 of 12 queries" in w for w in written["warnings"])
    # the figures stay trec_eval's: the two queries count in the means, with 0
    assert written["num_queries"] == 12
