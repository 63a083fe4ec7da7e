"""A new method is one class plus one registry line: nothing else in madapt changes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from madapt_cli import Adaptor
from madapt_cli.cli import app
from madapt_cli.methods import METHODS
from madapt_cli.methods.base import Fitted, Method, TrainingData
from madapt_cli.store.base import embedding_schema, new_table_metadata, open_store, vectors_to_arrow


class Reverse(nn.Module):
    """f(e) = e with its coordinates in reverse order."""

    def __init__(self, dimension: int) -> None:
        super().__init__()
        self.register_buffer("order", torch.arange(dimension - 1, -1, -1))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return e[:, self.order]


class ReverseMethod(Method):
    name = "reverse"
    supervised_needs_qrels = False

    def build_module(self, config: dict[str, Any]) -> nn.Module:
        return Reverse(int(config["dimension"]))

    def fit(self, data: TrainingData, config: Any, options: Any, progress: Any, resume=None):
        ids, _, _, _ = data.read()
        record = {"architecture": {"type": "reverse"}, "training_rows": len(ids)}
        return Fitted(Reverse(data.dimension), {**record, "training_data_sha256": data.sha256()})


def test_a_method_registered_with_one_line_fits_loads_and_transforms(tmp_path, monkeypatch):
    import pyarrow as pa
    from typer.testing import CliRunner

    monkeypatch.setitem(METHODS, "reverse", f"{__name__}:ReverseMethod")
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(20, 8)).astype(np.float32)
    metadata = new_table_metadata(
        provider="local", model="m", dimension=8, normalized=True, dtype="float32"
    )
    rows = pa.Table.from_arrays(
        [pa.array([f"d{i}" for i in range(20)]), vectors_to_arrow(vectors), pa.array(["k"] * 20)],
        schema=embedding_schema(8, metadata=metadata),
    )
    open_store(tmp_path / "store", create=True).append("corpus", rows)

    result = CliRunner().invoke(
        app, ["fit", str(tmp_path / "store"), "--method", "reverse", "--out", str(tmp_path / "a")]
    )
    assert result.exit_code == 0, result.output
    adaptor = Adaptor.load(tmp_path / "a")
    assert adaptor.method == "reverse"
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = unit[:, ::-1][:, :4]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(adaptor.transform(vectors, dim=4), expected, atol=1e-6)


def test_an_unregistered_method_is_refused_naming_the_known_ones(tmp_path):
    from madapt_cli.errors import InputError
    from madapt_cli.methods.base import get_method

    with pytest.raises(InputError, match="matryoshka, pca, smec"):
        get_method("nope")
