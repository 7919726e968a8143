"""The cost of a call, from the maintained `genai-prices` data (imported on first use).

A model whose price is unknown costs None, never a silent 0, with one warning per model.
"""

from __future__ import annotations

import datetime
import functools
import warnings
from typing import Any

from ._types import Usage

__all__ = ["cost", "known_models"]

FREE = {"local", "ollama"}  # runs on the user's own machine
PRICE_IDS = {"openai": "openai", "anthropic": "anthropic", "google": "google"}


@functools.cache
def _price_model(provider: str, model: str) -> tuple[Any, Any] | None:
    from genai_prices import data_snapshot

    try:
        return data_snapshot.get_snapshot().find_provider_model(
            model, None, PRICE_IDS.get(provider, provider), None
        )
    except LookupError:
        warnings.warn(
            f"ember: no price known for {provider}/{model}; its calls have cost=None",
            stacklevel=2,
        )
        return None


def cost(provider: str, model: str, usage: Usage) -> float | None:
    """USD for `usage` on `model`, or None when the price is unknown."""
    if provider in FREE:
        return 0.0
    found = _price_model(provider, model)
    if found is None:
        return None
    from genai_prices import Usage as PriceUsage

    price_provider, price_model = found
    calc = price_model.calc_price(
        PriceUsage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens),
        price_provider,
        genai_request_timestamp=datetime.datetime.now(datetime.UTC),
    )
    return float(calc.total_price)


@functools.cache
def known_models(provider: str) -> list[str]:
    """Model ids the price data knows for `provider` (for suggestions and listings)."""
    from genai_prices import data_snapshot

    for entry in data_snapshot.get_snapshot().providers:
        if entry.id == PRICE_IDS.get(provider, provider):
            return [m.id for m in entry.models]
    return []
