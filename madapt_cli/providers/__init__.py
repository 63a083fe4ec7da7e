"""Embedding providers, looked up by name. Each is imported only when asked for, so that a
missing optional SDK (openai, google-genai) only matters to the user who picks it."""

from __future__ import annotations

import importlib
from typing import Any

from madapt_cli.errors import MadaptError
from madapt_cli.providers.base import EmbeddingProvider

#: provider name -> "module:Class"
PROVIDERS: dict[str, str] = {
    "local": "madapt_cli.providers.local:LocalProvider",
    "openai": "madapt_cli.providers.openai:OpenAIProvider",
    "vertex": "madapt_cli.providers.vertex:VertexProvider",
}


def get_provider(name: str, model: str, **options: Any) -> EmbeddingProvider:
    """Build the provider ``name`` for ``model``; options are the provider's own."""
    if name not in PROVIDERS:
        raise MadaptError(f"unknown provider {name!r}: choose one of {', '.join(PROVIDERS)}")
    module_name, class_name = PROVIDERS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            raise MadaptError(f"provider {name!r} is not available in this version") from None
        raise
    provider_class = getattr(module, class_name)
    return provider_class(model, **options)
