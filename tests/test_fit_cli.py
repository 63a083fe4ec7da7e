"""`madapt fit` and `madapt apply` through the command line: artifacts, JSON, clear errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_apply import make_store

from madapt_cli import Adaptor
from madapt_cli.cli import main


@pytest.fixture()
def madapt(capsys, monkeypatch):
    """Run the real entry point (`madapt_cli.cli.main`) in-process: exit code, stdout, stderr."""

    def run(*args: str) -> SimpleNamespace:
        monkeypatch.setattr(sys, "argv", ["madapt", *map(str, args)])
        capsys.readouterr()
        code = 0
        try:
            main()
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        captured = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)

    return run


def write_qrels(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in rows]
    path.write_text("\r\n".join(lines) + "\r\n")
    return path


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    make_store(tmp_path / "store", {"corpus": 60, "queries": 12}, dimension=16)
    return tmp_path / "store"


def test_fit_unsupervised_then_apply(tmp_path, store, madapt):
    result = madapt(
        "fit",
        store,
        "--out",
        tmp_path / "ad",
        "--train-dims",
        "4,8,16",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--topk",
        "3",
        "--objective",  # the store has queries: distill would be the default
        "paper",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["name"] == "ad" and summary["train_dims"] == [4, 8, 16]
    config = json.loads((tmp_path / "ad" / "config.json").read_text())
    assert config["base_model"] == "all-MiniLM-L6-v2" and config["dimension"] == 16
    assert len(config["training_data_sha256"]) == 64
    assert config["hyperparameters"]["epochs"] == 2 and config["seed"] == 0
    assert [r["epoch"] for r in config["validation_curve"]] == [1, 2]
    applied = madapt(
        "apply", tmp_path / "ad", store, "--dims", "4,8", "--out", tmp_path / "out", "--json"
    )
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["tables"] == {"corpus": 60, "queries": 12}


def test_fit_supervised_with_validation_and_pca(tmp_path, store, madapt):
    rows = [(f"queries-{i}", f"corpus-{i}", 1) for i in range(12)]
    qrels = write_qrels(tmp_path / "train.tsv", rows)
    result = madapt(
        "fit",
        store,
        "--mode",
        "supervised",
        "--method",
        "matryoshka",
        "--qrels",
        qrels,
        "--out",
        tmp_path / "sup",
        "--train-dims",
        "8,16",
        "--epochs",
        "2",
        "--stage1-epochs",
        "1",
        "--batch-size",
        "32",
        "--topk",
        "3",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    config = Adaptor.load(tmp_path / "sup").config
    assert config["mode"] == "supervised"
    stages = [(r["stage"], r["epoch"]) for r in config["validation_curve"]]
    assert stages[0] == ("unsupervised", 0) and ("supervised", 2) in stages
    assert "8" in config["best_validation"]["ndcg@10"]
    pca = madapt("fit", store, "--method", "pca", "--out", tmp_path / "pca")
    assert pca.returncode == 0, pca.stderr
    adaptor = Adaptor.load(tmp_path / "pca")
    assert adaptor.method == "pca" and adaptor.config["training_rows"] == 60
    out = adaptor.transform(np.eye(16, dtype=np.float32), dim=4)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_fit_default_method_is_smec_with_labels_and_matryoshka_without(tmp_path, store, madapt):
    qrels = write_qrels(tmp_path / "q.tsv", [(f"queries-{i}", f"corpus-{i}", 1) for i in range(12)])
    supervised = madapt("fit", store, "--mode", "supervised", "--qrels", qrels, "--epochs", "1",
                        "--out", tmp_path / "sup", "--json")  # fmt: skip
    assert supervised.returncode == 0, supervised.stderr
    assert json.loads(supervised.stdout)["method"] == "smec"
    config = Adaptor.load(tmp_path / "sup").config
    assert config["method"] == "smec" and config["smec"]["distill_weight"] == 1.0
    assert config["smec"]["rank_loss"] == "softmax"
    # SMEC's own default sizes: powers of two from min(32, D / 2) (16-d vectors: 8), not 16
    assert config["train_dims"] == [8, 16] and list(config["best_validation"]["ndcg@10"]) == ["8"]
    common = ["--train-dims", "8,16", "--epochs", "1"]
    unsupervised = madapt("fit", store, *common, "--out", tmp_path / "uns", "--json")
    assert unsupervised.returncode == 0, unsupervised.stderr
    assert json.loads(unsupervised.stdout)["method"] == "matryoshka"
    # a Matryoshka-Adaptor option beside the supervised default says which method to name
    refused = madapt("fit", store, "--mode", "supervised", "--qrels", qrels,
                     "--quantization-aware", "binary", "--out", tmp_path / "qat")  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "error: --quantization-aware needs --method matryoshka "
        "(--mode supervised fits smec by default)"
    )
    assert not (tmp_path / "qat").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train-dims", "8,32"], "--train-dims 32 outside 1..16"),
        (["--mode", "supervised"], "needs --qrels"),
        (["--mode", "supervised", "--qrels", "QRELS"], "do the ids match"),
        (["--method", "umap"], "unknown --method"),
        (["--device", "tpu"], "--device 'tpu'"),
    ],
)
def test_fit_bad_options_are_one_line_errors(tmp_path, store, madapt, args, message):
    qrels = write_qrels(tmp_path / "q.tsv", [("nope", "corpus-1", 1)])
    args = [str(qrels) if a == "QRELS" else a for a in args]
    result = madapt("fit", store, "--out", tmp_path / "ad", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ad").exists()


def test_fit_on_a_store_without_corpus(tmp_path, madapt):
    make_store(tmp_path / "s", {"queries": 5})
    result = madapt("fit", tmp_path / "s", "--out", tmp_path / "ad")
    assert result.returncode == 2
    assert "no table 'corpus'" in result.stderr and "Traceback" not in result.stderr


def test_apply_bad_dims_is_a_one_line_error(tmp_path, store, madapt):
    assert madapt("fit", store, "--method", "pca", "--out", tmp_path / "pca").returncode == 0
    result = madapt("apply", tmp_path / "pca", store, "--dims", "8,64", "--out", tmp_path / "o")
    assert result.returncode == 2
    assert "size 64 is above the vectors' dimension 16" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_fit_unsupervised_validates_on_qrels_queries_without_training_on_them(
    tmp_path, store, madapt
):
    qrels = write_qrels(tmp_path / "q.tsv", [(f"queries-{i}", f"corpus-{i}", 1) for i in range(6)])
    result = madapt(
        "fit",
        store,
        "--out",
        tmp_path / "ad",
        "--qrels",
        qrels,
        "--train-dims",
        "8,16",
        "--epochs",
        "2",
        "--topk",
        "3",
        "--objective",  # the store has queries: distill would be the default
        "paper",
    )
    assert result.returncode == 0, result.stderr
    config = Adaptor.load(tmp_path / "ad").config
    assert config["mode"] == "unsupervised"
    assert [r["epoch"] for r in config["validation_curve"]] == [0, 1, 2]
    assert set(config["best_validation"]["ndcg@10"]) == {"8", "16"}
    # the training data hash covers the corpus only: qrels never reach the unsupervised
    # objective; the adaptors (config and weights) differ
    plain = madapt(
        "fit",
        store,
        "--out",
        tmp_path / "plain",
        "--train-dims",
        "8,16",
        "--epochs",
        "1",
        "--topk",
        "3",
        "--objective",
        "paper",
    )
    assert plain.returncode == 0, plain.stderr
    plain, validated = Adaptor.load(tmp_path / "plain"), Adaptor.load(tmp_path / "ad")
    assert plain.training_data_sha256 == validated.training_data_sha256
    assert plain.fingerprint != validated.fingerprint


def test_fit_store_reports_epochs_of_the_known_total(tmp_path, store):
    from madapt_cli.pipelines.fit import fit_store
    from madapt_cli.training.config import TrainConfig

    events = []
    config = TrainConfig(
        epochs=2, batch_size=32, topk=3, device="cpu", train_dims=[8, 16], objective="paper"
    )
    fit_store(store, tmp_path / "ad", config=config, progress=events.append)
    assert [(e.done, e.total) for e in events] == [(1, 2), (2, 2), (2, 2)]
    assert events[-1].finished and "unsupervised epoch 2 loss" in events[-1].message
