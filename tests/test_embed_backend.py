"""`madapt embed --backend torch|onnx|openvino`: the same vectors (to rounding) from ONNX Runtime
and OpenVINO, recorded in the metadata and content keys, never mixed with torch's."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from madapt_cli.cli import app
from madapt_cli.data import TextItem
from madapt_cli.errors import ProviderError
from madapt_cli.pipelines.embed_plan import default_backend, longest_first
from madapt_cli.providers import local_onnx
from madapt_cli.providers.local import LocalProvider
from madapt_cli.store.base import open_store

runner = CliRunner()
needs_onnx = pytest.mark.skipif(
    not local_onnx.available("onnx"), reason="onnxruntime/onnx not installed (madapt[fast])"
)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # one export for the whole session, outside the user's cache
    monkeypatch.setenv("MADAPT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "madapt-cache"))


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["embed", *args])
    return result.exit_code, result.output


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def items(docs: list[dict], n: int) -> list[TextItem]:
    return [TextItem(d["_id"], d["text"], d["title"]) for d in docs[:n]]


def test_longest_first_orders_each_window_by_length():
    rows = [TextItem(str(i), "x" * n) for i, n in enumerate([3, 9, 1, 7, 5, 2])]
    assert [i.id for i in longest_first(rows)] == ["1", "3", "4", "0", "5", "2"]
    # a window of 3 rows at a time: memory stays bounded on huge tables
    assert [i.id for i in longest_first(rows, window=3)] == ["1", "0", "2", "3", "4", "5"]


def test_torch_keeps_the_keys_of_stores_made_before_backends(scifact_docs):
    torch_provider = LocalProvider(backend="torch")
    assert torch_provider.settings("document") == {}
    item = items(scifact_docs, 1)[0]
    before = torch_provider.content_key(item, "document")
    # the key of a store embedded before --backend existed: provider, model, settings, text
    import hashlib

    payload = {
        "provider": "local",
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "settings": {},
        "title": item.title,
        "text": item.text,
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")
    assert before == hashlib.sha256(blob).hexdigest()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "tensorrt"], "--backend must be one of torch, onnx, openvino"),
        (["--provider", "openai", "--backend", "onnx"], "--backend"),
    ],
)
def test_bad_backend_options_exit_2_writing_nothing(tmp_path: Path, small_scifact, args, message):
    out = tmp_path / "store"
    code, output = cli(str(small_scifact(3)), "--out", str(out), *args)
    assert code == 2, output
    assert message in output and "Traceback" not in output
    assert not out.exists()


def test_a_missing_package_names_the_extra(tmp_path: Path, small_scifact, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        local_onnx.importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("onnxruntime", "openvino") else real(name, *a),
    )
    for backend, package in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        code, output = cli(
            str(small_scifact(3)), "--out", str(tmp_path / "s"), "--backend", backend
        )
        assert code == 2, output
        assert f"--backend {backend} needs {package}" in output and "madapt[fast]" in output
    # without them the default is torch, and embed works
    assert default_backend(tmp_path / "new", "cpu") == ("torch", "fp32")
    with pytest.raises(ProviderError, match=r"madapt\[fast\]"):
        LocalProvider(backend="onnx")


@needs_onnx
@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_backend_vectors_match_torch(scifact_docs, backend: str):
    if not local_onnx.available(backend):
        pytest.skip(f"{backend} not installed")
    texts = items(scifact_docs, 40)
    reference = LocalProvider(backend="torch", batch_size=8).embed_batch(texts, "document")
    fast = LocalProvider(backend=backend, batch_size=8)
    vectors = fast.embed_batch(texts, "document")
    assert (unit(vectors) * unit(reference)).sum(axis=1).min() >= 0.999
    assert fast.settings("document") == {"backend": backend, "precision": "fp32"}
    # progress: one call per model batch, adding up to the request
    seen: list[int] = []
    again = fast.embed_request(texts, "query", seen.append)
    assert seen == [8] * 5
    np.testing.assert_allclose(again, vectors, atol=1e-5)
    # the export is cached: a second provider reuses the file
    name = "model-fused.onnx" if backend == "onnx" else "model.onnx"
    exports = list(Path(local_onnx.os.environ["MADAPT_CACHE_DIR"]).rglob(name))
    assert len(exports) == 1


@needs_onnx
def test_onnx_runs_the_fused_graph(scifact_docs):
    import onnx

    LocalProvider(backend="onnx", batch_size=8).embed_batch(items(scifact_docs, 2), "document")
    cache = Path(local_onnx.os.environ["MADAPT_CACHE_DIR"])
    (fused,) = cache.rglob("model-fused.onnx")
    (traced,) = cache.rglob("model.onnx")
    fused_ops = {n.op_type for n in onnx.load(str(fused), load_external_data=False).graph.node}
    traced_ops = {n.op_type for n in onnx.load(str(traced), load_external_data=False).graph.node}
    # ONNX Runtime's own attention and residual-norm kernels replace the traced arithmetic
    assert {"Attention", "SkipLayerNormalization"} <= fused_ops
    assert "Attention" not in traced_ops


needs_bf16 = pytest.mark.skipif(
    not local_onnx.cpu_has_bf16(), reason="this CPU has no native bf16 (AVX-512 BF16 or AMX)"
)


@needs_bf16
@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_bf16_vectors_stay_close_to_fp32_and_say_so(scifact_docs, backend: str):
    if not local_onnx.available(backend):
        pytest.skip(f"{backend} not installed")
    texts = items(scifact_docs, 24)
    reference = LocalProvider(backend="torch", batch_size=8).embed_batch(texts, "document")
    half = LocalProvider(backend=backend, precision="bf16", batch_size=8)
    vectors = half.embed_batch(texts, "document")
    assert vectors.dtype == np.float32
    cosines = (unit(vectors) * unit(reference)).sum(axis=1)
    # close, but not equal: the precision must be recorded, not passed off as fp32's rounding
    assert cosines.min() >= 0.999 and cosines.min() < 0.999999
    assert half.settings("query") == {"backend": backend, "precision": "bf16"}


def test_bf16_is_refused_where_it_cannot_run(tmp_path: Path, small_scifact, monkeypatch):
    with pytest.raises(ProviderError, match="--precision bf16 runs on --backend torch or openvino"):
        LocalProvider(backend="onnx", precision="bf16")
    with pytest.raises(ProviderError, match="precision must be one of fp32, bf16"):
        LocalProvider(precision="int8")
    monkeypatch.setattr(local_onnx, "cpu_has_bf16", lambda: False)
    out = tmp_path / "s"
    code, output = cli(str(small_scifact(3)), "--out", str(out), "--precision", "bf16")
    assert code == 2, output
    assert "needs a CPU with native bfloat16" in output and not out.exists()
    code, output = cli(
        str(small_scifact(3)), "--out", str(out), "--provider", "openai", "--precision", "bf16"
    )
    assert code == 2 and "--precision" in output, output


@needs_bf16
def test_bf16_and_fp32_never_mix_and_reruns_keep_the_precision(tmp_path: Path, small_scifact):
    source, out = small_scifact(6), tmp_path / "store"
    code, output = cli(str(source), "--out", str(out), "--precision", "bf16")
    assert code == 0, output
    meta = open_store(out).metadata("corpus")
    assert (meta["backend"], meta["precision"]) == ("torch", "bf16")
    assert default_backend(out, "cpu") == ("torch", "bf16")
    code, output = cli(str(source), "--out", str(out), "--json")
    assert code == 0 and json.loads(output)["rows_reused"] == 6
    code, output = cli(str(source), "--out", str(out), "--precision", "fp32")
    assert code == 2, output
    assert "holds vectors of --backend torch (bf16), not torch (fp32)" in output


@needs_onnx
def test_backends_never_mix_in_a_table(tmp_path: Path, small_scifact):
    source, out = small_scifact(12), tmp_path / "store"
    code, output = cli(str(source), "--out", str(out), "--backend", "torch")
    assert code == 0, output
    assert "backend" not in open_store(out).metadata("corpus")
    # without --backend a rerun follows the store: nothing to embed again
    assert default_backend(out, "cpu") == ("torch", "fp32")
    code, output = cli(str(source), "--out", str(out), "--json")
    assert code == 0 and json.loads(output)["rows_reused"] == 12
    # --backend onnx into the torch table is refused before any work, naming the way out
    code, output = cli(str(source), "--out", str(out), "--backend", "onnx")
    assert code == 2, output
    assert "holds vectors of --backend torch (fp32), not onnx (fp32)" in output
    assert open_store(out).num_rows("corpus") == 12
    # into a new table it is recorded, and its keys differ from torch's
    code, output = cli(str(source), "--out", str(out), "--backend", "onnx", "--table", "fast")
    assert code == 0, output
    store = open_store(out)
    meta = store.metadata("fast")
    assert (meta["backend"], meta["precision"]) == ("onnx", "fp32")
    torch_keys, onnx_keys = store.read_keys("corpus"), store.read_keys("fast")
    assert torch_keys.keys() == onnx_keys.keys()
    assert not set(torch_keys.values()) & set(onnx_keys.values())
    _, a = store.read_vectors("corpus")
    ids_fast, b = store.read_vectors("fast")
    ids, _ = store.read_vectors("corpus")
    order = {i: n for n, i in enumerate(ids_fast)}
    assert (a * b[[order[i] for i in ids]]).sum(axis=1).min() >= 0.999


@needs_onnx
def test_the_default_is_torch_for_a_new_store_and_the_held_one_otherwise(
    tmp_path: Path, small_scifact
):
    assert default_backend(tmp_path / "new", "cpu") == ("torch", "fp32")
    out = tmp_path / "store"
    code, output = cli(str(small_scifact(4)), "--out", str(out), "--backend", "onnx")
    assert code == 0, output
    assert default_backend(out, "cpu") == ("onnx", "fp32")
    code, output = cli(str(small_scifact(4)), "--out", str(out), "--json")
    assert code == 0 and json.loads(output)["rows_reused"] == 4


@needs_onnx
def test_an_adaptor_fitted_on_onnx_vectors_encodes_with_onnx():
    from conftest import residual_adaptor

    from madapt_cli.pipelines.encode import provider_for_adaptor

    onnx = {"backend": "onnx", "precision": "fp32"}
    model = "sentence-transformers/all-MiniLM-L6-v2"
    adaptor = residual_adaptor(384, model, base_settings={"document": onnx, "query": onnx})
    built = provider_for_adaptor(adaptor)
    assert built.backend == "onnx" and built.settings("query") == onnx
    # torch-made adaptors (nothing recorded) keep torch
    plain = residual_adaptor(384, model, base_settings={"document": {}, "query": {}})
    assert provider_for_adaptor(plain).backend == "torch"
