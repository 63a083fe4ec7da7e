"""Shared fixtures: where the real data lives, and a small real-model corpus."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_SCIFACT = REPO / "examples" / "scifact"


def shared_datasets() -> Path | None:
    """../shared/datasets beside the checkout (CI and developers), if present."""
    for candidate in (REPO.parent / "shared" / "datasets", Path("/work/shared/datasets")):
        if candidate.is_dir():
            return candidate
    return None


def residual_adaptor(dimension: int, model: str, **extra: object):
    """An untrained (identity) Matryoshka adaptor for ``model`` vectors of ``dimension``,
    with the config `madapt fit` writes; ``extra`` adds or overrides config fields."""
    from madapt_cli.methods.adaptor import Adaptor
    from madapt_cli.methods.matryoshka import ResidualMLP

    config = {
        "method": "matryoshka",
        "dimension": dimension,
        "architecture": {
            "type": "residual_mlp",
            "hidden": 2 * dimension,
            "depth": 2,
            "activation": "gelu",
        },
        "base_provider": "local",
        "base_model": model,
        **extra,
    }
    return Adaptor(ResidualMLP(dimension, 2 * dimension), config)


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    found = shared_datasets()
    if found is None:
        pytest.skip("../shared/datasets is not present")
    return found


@pytest.fixture(scope="session")
def scifact_docs() -> list[dict]:
    """The bundled SciFact corpus (always present: it ships with the repo)."""
    with gzip.open(EXAMPLE_SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture()
def small_scifact(tmp_path: Path, scifact_docs: list[dict]):
    """Write the first ``n`` SciFact documents as a JSONL file with `id`, `title`, `text`."""

    def make(n: int, name: str = "docs.jsonl") -> Path:
        path = tmp_path / name
        with path.open("w", encoding="utf-8") as handle:
            for doc in scifact_docs[:n]:
                row = {"id": doc["_id"], "title": doc["title"], "text": doc["text"]}
                handle.write(json.dumps(row) + "\n")
        return path

    return make


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests never reach a model hub: models come from packages or local paths.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
