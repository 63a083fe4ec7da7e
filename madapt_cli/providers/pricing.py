"""Estimated API cost for ``madapt embed --dry-run``, from an editable price table.

The table is ``madapt_cli/providers/pricing.json`` (USD per 1M input tokens, ``provider -> model ->
price``; ``"*"`` matches any model of a provider). Set ``MADAPT_PRICING`` to a JSON file of
the same shape to use your own prices (negotiated rates, new models) without editing the
package.

    cost = estimated_tokens / 1_000_000 * price_per_million
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from madapt_cli.errors import InputError

PRICING_ENV = "MADAPT_PRICING"


def load_prices() -> dict[str, Any]:
    """The price table: ``$MADAPT_PRICING`` if set, else the one shipped in the package."""
    override = os.environ.get(PRICING_ENV)
    if override:
        path = Path(override)
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise InputError(
                f"{PRICING_ENV}={override}: cannot read it ({error.strerror})"
            ) from None
        except ValueError as error:
            raise InputError(f"{PRICING_ENV}={override}: not valid JSON ({error})") from None
        source = str(path)
    else:
        text = (
            resources.files("madapt_cli.providers")
            .joinpath("pricing.json")
            .read_text(encoding="utf-8")
        )
        table = json.loads(text)
        source = "madapt_cli/providers/pricing.json"
    if not isinstance(table, dict):
        raise InputError(f"{source}: expected a JSON object of provider -> model -> price")
    return table


def price_per_million(provider: str, model: str) -> float | None:
    """USD per 1M input tokens for ``model``, or ``None`` if the table does not list it."""
    table = load_prices()
    models = table.get(provider)
    if not isinstance(models, dict):
        return None
    price = models.get(model, models.get("*"))
    if price is None:
        return None
    if not isinstance(price, int | float) or isinstance(price, bool) or price < 0:
        raise InputError(f"price for {provider}/{model} must be a non-negative number: {price!r}")
    return float(price)
