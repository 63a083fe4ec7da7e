"""Issue #14 section 1: `madapt export --to onnx` gives the adaptor alone (D floats in, dim
unit floats out, any batch size), equal to Adaptor.transform for every method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from export_helpers import METHODS, random_adaptor
from typer.testing import CliRunner

from madapt_cli.cli import app
from madapt_cli.methods.adaptor import Adaptor

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

FIXTURES = REPO / "tests" / "fixtures" / "artifacts"


def run(*args: object, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (args, result.output, repr(result.exception))
    return result


def onnx_vectors(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "embedding" and out.name == "adapted"
    assert isinstance(inp.shape[0], str) and isinstance(out.shape[0], str)  # dynamic batch
    return session.run(None, {"embedding": x})[0]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dim", [None, 5])
def test_onnx_equals_transform_for_every_method(tmp_path: Path, method: str, dim: int | None):
    fixture = Adaptor.load(FIXTURES / method)
    adaptors = {
        "fixture": FIXTURES / method,  # fitted by madapt fit
        "random": random_adaptor(tmp_path / "random", method, 48, seed=3),  # every part busy
    }
    for kind, path in adaptors.items():
        adaptor = Adaptor.load(path)
        out = tmp_path / f"{kind}.onnx"
        extra = () if dim is None else ("--dim", dim)
        run("export", path, "--to", "onnx", "--out", out, *extra)
        want_dim = dim or adaptor.dimension
        rng = np.random.default_rng(1)
        for rows in (1, 3, 300):
            x = rng.normal(size=(rows, adaptor.dimension)).astype(np.float32)
            got = onnx_vectors(out, x)
            assert got.shape == (rows, want_dim) and got.dtype == np.float32
            assert np.abs(got - adaptor.transform(x, dim=want_dim)).max() <= 1e-5, (kind, rows)
            assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
        model = onnx.load(str(out))
        assert model.producer_name == "madapt"
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["method"] == f'"{method}"' and meta["dim"] == str(want_dim)
    assert fixture.method == method


def test_onnx_output_rules(tmp_path: Path):
    adaptor = FIXTURES / "pca"
    out = tmp_path / "a.onnx"
    run("export", adaptor, "--to", "onnx", "--out", out, "--dim", 8)
    first = out.read_bytes()
    refused = run("export", adaptor, "--to", "onnx", "--out", out, code=2)
    assert "--overwrite" in refused.stderr and out.read_bytes() == first
    run("export", adaptor, "--to", "onnx", "--out", out, "--overwrite")
    assert onnx_vectors(out, np.ones((2, 32), np.float32)).shape == (2, 32)  # replaced: full D
    foreign = tmp_path / "theirs.onnx"
    foreign.write_bytes(b"not madapt's")
    refused = run("export", adaptor, "--to", "onnx", "--out", foreign, "--overwrite", code=2)
    assert "did not write" in refused.stderr and foreign.read_bytes() == b"not madapt's"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no staging file left behind
