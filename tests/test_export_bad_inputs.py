"""Issue #14 section 1: `madapt export` refuses bad input with exit 2, one line on stderr
naming the option or file, and writes nothing (the rules of tests/test_bad_inputs.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import REPO
from typer.testing import CliRunner

from madapt_cli.cli import app

FIXTURES = REPO / "tests" / "fixtures" / "artifacts"


def openai_adaptor(root: Path) -> Path:
    path = root / "openai-ad"
    shutil.copytree(FIXTURES / "pca", path)
    config = json.loads((path / "config.json").read_text())
    config.update(base_provider="openai", base_model="text-embedding-3-small")
    (path / "config.json").write_text(json.dumps(config))
    return path


def foreign_dir(root: Path) -> Path:
    (root / "theirs").mkdir()
    (root / "theirs" / "notes.txt").write_text("not madapt's")
    return root / "theirs"


def folder(path: Path) -> Path:
    path.mkdir()
    return path


PCA = FIXTURES / "pca"  # a 32-d adaptor whose base, "fixture-model", is not installed
ST = "sentence-transformers"
CASES = [
    # (argv after `madapt export`, the stderr line's pattern)
    (lambda r: [PCA, "--to", "tflite", "--out", r / "m"], r"--to 'tflite'.*sentence-transformers"),
    (lambda r: [PCA, "--to", "onnx", "--out", r / "a.onnx", "--dim", "0"], r"--dim 0 .*1\.\.32"),
    (lambda r: [PCA, "--to", "onnx", "--out", r / "a.onnx", "--dim", "-3"], r"--dim -3 "),
    (lambda r: [PCA, "--to", "onnx", "--out", r / "a.onnx", "--dim", "33"], r"--dim 33 .*1\.\.32"),
    (lambda r: [PCA, "--to", ST, "--out", r / "m", "--dim", "64"], r"--dim 64 .*1\.\.32"),
    (lambda r: [openai_adaptor(r), "--to", ST, "--out", r / "m"], r"openai vectors.*--to onnx"),
    (lambda r: [PCA, "--to", ST, "--out", r / "m"], r"'fixture-model' is not available offline"),
    (
        lambda r: [r / "nope", "--to", "onnx", "--out", r / "a.onnx"],
        r"nope is not a madapt adaptor",
    ),
    (lambda r: [r / "nope", "--to", ST, "--out", r / "m"], r"nope is not a madapt adaptor"),
    (lambda r: [PCA, "--to", "onnx", "--out", r / "a.txt"], r"--out .*a\.txt: must end in \.onnx"),
    (
        lambda r: [PCA, "--to", "onnx", "--out", folder(r / "x.onnx")],
        r"--out .*x\.onnx is a folder",
    ),
    (lambda r: [PCA, "--to", "onnx", "--out", r / "no" / "a.onnx"], r"--out .*no such folder"),
]


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {
        str(path.relative_to(root)): None if path.is_dir() else path.read_bytes()
        for path in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize(("build", "pattern"), CASES)
def test_bad_export_is_one_line_and_writes_nothing(tmp_path, monkeypatch, build, pattern):
    pytest.importorskip("onnx")
    args = ["export", *[str(a) for a in build(tmp_path)]]
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    detail = (args, result.exit_code, result.stderr, repr(result.exception))
    assert result.exit_code == 2, detail
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), detail
    assert re.search(pattern, lines[0]), detail
    assert "Traceback" not in result.output
    assert snapshot(tmp_path) == before


def test_foreign_folder_is_refused_for_sentence_transformers(tmp_path, monkeypatch):
    """A folder madapt did not write is refused before the base model is even looked for."""
    from export_helpers import random_adaptor

    adaptor = random_adaptor(tmp_path / "ad", "pca", 16)
    theirs = foreign_dir(tmp_path)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(app, ["export", str(adaptor), "--to", ST, "--out", str(theirs)])
    assert result.exit_code == 2 and "did not write" in result.stderr, result.output
    assert snapshot(tmp_path) == before
