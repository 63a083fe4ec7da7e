"""The adaptor: identity at start, transform contract, artifact round trip, compatibility."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import residual_adaptor

from madapt_cli import Adaptor
from madapt_cli.errors import InputError, MadaptError
from madapt_cli.methods.adaptor import CONFIG_FILE, WEIGHTS_FILE
from madapt_cli.methods.pca import fit_pca


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _matryoshka(dimension: int = 16, seed: int = 0) -> Adaptor:
    torch.manual_seed(seed)
    return residual_adaptor(dimension, "all-MiniLM-L6-v2", training_data_sha256="abc")


def test_untrained_adaptor_is_the_identity():
    x = _unit(np.random.default_rng(0).normal(size=(10, 16)))
    adaptor = _matryoshka()
    np.testing.assert_allclose(adaptor.transform(x), x, atol=1e-6)
    truncated = adaptor.transform(x, dim=4)
    np.testing.assert_allclose(truncated, _unit(x[:, :4]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(truncated, axis=1), 1.0, atol=1e-6)


def test_transform_keeps_the_input_kind_and_normalises_at_the_chosen_size():
    adaptor = _matryoshka()
    with torch.no_grad():  # a non-trivial map
        adaptor.module.g[-1].weight.normal_(0, 0.3)
    x = np.random.default_rng(1).normal(size=(7, 16)).astype(np.float32) * 3  # not unit
    numpy_out = adaptor.transform(x, dim=8)
    torch_out = adaptor.transform(torch.from_numpy(x), dim=8)
    assert isinstance(numpy_out, np.ndarray) and numpy_out.dtype == np.float32
    assert isinstance(torch_out, torch.Tensor)
    assert numpy_out.shape == (7, 8)
    np.testing.assert_allclose(torch_out.numpy(), numpy_out, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(numpy_out, axis=1), 1.0, atol=1e-5)
    # the input is normalised first: scaling it changes nothing
    np.testing.assert_allclose(adaptor.transform(x / 3, dim=8), numpy_out, atol=1e-5)
    # small batches give the same result as one big one
    np.testing.assert_allclose(adaptor.transform(x, dim=8, batch_size=2), numpy_out, atol=1e-6)


def test_transform_rejects_bad_sizes():
    adaptor = _matryoshka()
    with pytest.raises(InputError, match="out of range"):
        adaptor.transform(np.ones((2, 16), np.float32), dim=17)
    with pytest.raises(InputError, match="takes 16-d"):
        adaptor.transform(np.ones((2, 12), np.float32))


def test_save_load_round_trip(tmp_path):
    adaptor = _matryoshka()
    with torch.no_grad():
        adaptor.module.g[-1].weight.normal_(0, 0.3)
    path = adaptor.save(tmp_path / "my-adaptor")
    assert (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file()
    assert json.loads((path / CONFIG_FILE).read_text())["name"] == "my-adaptor"
    loaded = Adaptor.load(path)
    assert loaded.name == "my-adaptor" and loaded.dimension == 16
    assert loaded.config["base_model"] == "all-MiniLM-L6-v2"
    x = np.random.default_rng(2).normal(size=(5, 16)).astype(np.float32)
    np.testing.assert_array_equal(loaded.transform(x, dim=8), adaptor.transform(x, dim=8))


def test_load_rejects_missing_and_torn_artifacts(tmp_path):
    with pytest.raises(InputError, match="not a madapt adaptor"):
        Adaptor.load(tmp_path)
    path = _matryoshka().save(tmp_path / "a")
    (path / WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="cannot load weights"):
        Adaptor.load(path)


def test_check_vectors_metadata_names_model_and_dimension_mismatches():
    adaptor = _matryoshka()
    metadata = {"model": "all-MiniLM-L6-v2", "dimension": 16, "provider": "local"}
    adaptor.check_vectors_metadata(metadata)
    with pytest.raises(MadaptError, match=r"takes 16-d vectors but .* are 384-d"):
        adaptor.check_vectors_metadata({"model": "all-MiniLM-L6-v2", "dimension": 384})
    with pytest.raises(MadaptError, match="text-embedding-3-small"):
        adaptor.check_vectors_metadata({"model": "text-embedding-3-small", "dimension": 16})


def test_fingerprint_is_the_content_of_config_and_weights(tmp_path):
    adaptor = _matryoshka()
    adaptor.config["training_data_sha256"] = "f00d"
    before = adaptor.fingerprint
    assert len(before) == 64 and adaptor.training_data_sha256 == "f00d"
    # saving (which sets name and madapt_version), loading and renaming keep it
    loaded = Adaptor.load(adaptor.save(tmp_path / "a"))
    assert loaded.fingerprint == before
    (tmp_path / "a").rename(tmp_path / "b")
    assert Adaptor.load(tmp_path / "b").fingerprint == before
    # other weights, or another config, are another adaptor (same training data)
    other = _matryoshka(seed=1)
    other.config["training_data_sha256"] = "f00d"
    assert other.fingerprint != before
    adaptor.config["hyperparameters"] = {"epochs": 3}
    assert adaptor.fingerprint != before


def test_pca_orders_axes_by_variance_and_round_trips(tmp_path):
    rng = np.random.default_rng(3)
    scales = np.array([5.0, 0.1, 2.0, 0.5, 1.0, 0.2])
    x = _unit(rng.normal(size=(500, 6)) * scales + 0.05)
    module = fit_pca([x[:200], x[200:]], 6)  # streamed in two batches
    components = module.components.numpy()
    np.testing.assert_allclose(components.T @ components, np.eye(6), atol=1e-5)
    projected = (x - module.mean.numpy()) @ components
    variances = projected.var(axis=0)
    assert np.all(np.diff(variances) <= 1e-6)
    assert abs(components[0, 0]) > 0.9  # the largest-variance input axis comes first
    adaptor = Adaptor(module, {"method": "pca", "dimension": 6})
    loaded = Adaptor.load(adaptor.save(tmp_path / "pca"))
    np.testing.assert_allclose(loaded.transform(x, dim=2), adaptor.transform(x, dim=2), atol=1e-6)
