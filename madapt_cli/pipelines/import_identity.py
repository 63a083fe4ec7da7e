"""What `madapt import` records of vectors it did not make: the user's declaration (provider,
model, dimensions, task type or prompt, normalisation), the provider it names (built without a
network or credentials: only its identity is used), the table metadata, and each row's
content key, so a later `madapt embed` with that provider and model reuses the rows it would
have produced itself."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from madapt_cli.data import TextItem
from madapt_cli.errors import InputError, MadaptError
from madapt_cli.providers.base import PROVIDERS, EmbeddingProvider, Role, build_provider
from madapt_cli.store.base import new_table_metadata
from madapt_cli.vector_sources import VectorChunk


@dataclass(frozen=True)
class ImportDeclaration:
    """What the user says about the vectors: recorded in the table's metadata."""

    provider: str | None = None  # a registered provider (local, openai, vertex) or any label
    model: str | None = None
    dimensions: int | None = None  # the size asked of the API; default: inferred
    task_type: str | None = None
    prompt: str | None = None
    normalize: bool = True  # L2-normalise (vectors already unit-length are kept as they are)
    role: Role = "document"


def native_dimension(provider: str, model: str) -> int | None:
    """The size a known API model returns without ``dimensions`` (None when unknown)."""
    if provider == "openai":
        from madapt_cli.providers.openai import MODELS as OPENAI

        return OPENAI[model][0] if model in OPENAI else None
    if provider == "vertex":
        from madapt_cli.providers.vertex import MODELS as VERTEX

        return VERTEX[model].dimension if model in VERTEX else None
    return None


class ImportIdentity:
    """The declared provider (built without a network or credentials: only its identity is
    used), the settings recorded, and the content key of a row."""

    def __init__(self, declared: ImportDeclaration, width: int, where: str) -> None:
        self.declared, self.width = declared, width
        dimensions = declared.dimensions
        if dimensions is not None and dimensions != width:
            raise InputError(f"{where}: vectors have {width} dimensions, not {dimensions}")
        self.provider: EmbeddingProvider | None = None
        name, model = declared.provider, declared.model
        overrides: dict[str, Any] = {}
        if name in PROVIDERS:
            if not model:
                raise InputError(f"--provider {name} needs --model (the model that made them)")
            native = native_dimension(name, model)
            if dimensions is None and native is not None and native != width:
                dimensions = width  # an API asked for fewer dimensions (text-embedding-3-*)
            values: dict[str, Any] = {"dimensions": dimensions}
            if name == "local":
                values = {f"{declared.role}_prompt": declared.prompt}
            elif declared.prompt is not None:
                overrides["prompt"] = declared.prompt
            try:
                self.provider = build_provider(name, model, values)
            except MadaptError as error:
                raise InputError(f"{where} ({width}-dimensional vectors): {error}") from None
            settings = dict(self.provider.settings(declared.role))
            if declared.task_type is not None:
                overrides["task_type"] = declared.task_type
            if {**settings, **overrides} != settings:
                self.provider = copy.copy(self.provider)
                fixed = {**settings, **overrides}
                self.provider.settings = lambda role: fixed  # type: ignore[method-assign]
            self.settings = self.provider.settings(declared.role)
            self.model = self.provider.model
        else:
            self.settings = {
                k: v
                for k, v in (
                    ("dimensions", dimensions),
                    ("task_type", declared.task_type),
                    ("prompt", declared.prompt),
                )
                if v is not None
            }
            self.model = model

    def metadata(self) -> dict[str, Any]:
        return new_table_metadata(
            provider=self.declared.provider,
            model=self.model,
            dimension=self.width,
            normalized=self.declared.normalize,
            role=self.declared.role,
            **self.settings,
            dtype="float32",
            imported=True,
        )

    def keys(self, chunk: VectorChunk, ids: list[str]) -> pa.Array:
        """The content key of each row (null without a text field or a known provider)."""
        if chunk.texts is None or self.provider is None:
            return pa.nulls(len(ids), pa.string())
        texts = chunk.texts.to_pylist()
        titles = chunk.titles.to_pylist() if chunk.titles is not None else [None] * len(ids)
        keys: list[str | None] = []
        role, provider = self.declared.role, self.provider
        for item_id, text, title in zip(ids, texts, titles, strict=True):
            text, title = (text or "").strip(), (title or "").strip() or None
            if not text and not title:
                keys.append(None)  # embed refuses or skips an empty text: never reused
            else:
                keys.append(provider.content_key(TextItem(item_id, text, title), role))
        return pa.array(keys, pa.string())
