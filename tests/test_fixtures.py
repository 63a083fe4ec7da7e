"""Adaptor artifacts written by an earlier release (tests/fixtures/artifacts: one of each
method, made at commit cc801ad by tests/fixtures/make_adaptor_fixtures.py) still load and
transform to the same numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from madapt_cli import Adaptor

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "artifacts"


@pytest.mark.parametrize("method", ["pca", "matryoshka", "smec"])
def test_an_earlier_releases_adaptor_transforms_to_the_same_numbers(method: str) -> None:
    expected = load_file(str(FIXTURES / "expected.safetensors"))
    adaptor = Adaptor.load(FIXTURES / method)
    assert adaptor.method == method
    for dim in (8, 16, 32):
        got = adaptor.transform(expected["input"], dim=dim)
        np.testing.assert_allclose(got, expected[f"{method}_{dim}"], rtol=0, atol=1e-6)
