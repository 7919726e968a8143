"""The cost of a call, from the maintained `genai-prices` data (imported on first use).

A model's price is looked up once; flat per-token prices are then applied in about a
microsecond, tiered or dated ones through genai-prices itself. A model whose price is
unknown costs None, never a silent 0, with one warning per model; so does a call whose
usage is unknown. Cache reads and writes are priced at the model's cache prices, or at its
input price where it has none (as genai-prices does).
"""


import dataclasses
import datetime
import functools
import warnings
from collections.abc import Callable
from typing import Any

from ._types import Usage
from .errors import UnknownPrice

__all__ = ["cost", "known_models"]

FREE = {"local", "ollama"}  # runs on the user's own machine
Pricer = Callable[[Usage], float]


@functools.cache
def _pricer(provider: str, model: str) -> Pricer | None:
    from decimal import Decimal

    from genai_prices import Usage as PriceUsage
    from genai_prices import data_snapshot
    from genai_prices.types import ModelPrice

    try:
        found, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
    except LookupError:
        warnings.warn_explicit(f"no price known for {provider}/{model}: its calls have "
                               "cost=None", UnknownPrice, "ember", 0)  # no line of ember's
        return None
    rates: list[Any] = []
    if isinstance(price := info.prices, ModelPrice):  # else prices, each under a condition
        uncached = price.input_mtok or 0
        rates = [uncached, price.output_mtok or 0, price.cache_read_mtok or uncached,
                 price.cache_write_mtok or uncached]
    if rates and all(isinstance(rate, (int, Decimal)) for rate in rates):
        per_in, per_out, per_read, per_write = (float(rate) / 1e6 for rate in rates)
        return lambda u: ((u.input_tokens - u.cache_read_tokens - u.cache_write_tokens) * per_in
                          + u.output_tokens * per_out + u.cache_read_tokens * per_read
                          + u.cache_write_tokens * per_write)

    def tiered(u: Usage) -> float:
        usage = PriceUsage(**dataclasses.asdict(u))  # the same names
        now = datetime.datetime.now(datetime.UTC)
        return float(info.calc_price(usage, found, genai_request_timestamp=now).total_price)

    return tiered


def cost(provider: str, model: str, usage: Usage | None) -> float | None:
    """USD for `usage` on `model`, or None when the usage or the price is unknown."""
    if provider in FREE:
        return 0.0
    pricer = _pricer(provider, model)
    return None if pricer is None or usage is None else pricer(usage)


@functools.cache
def known_models(provider: str) -> list[str]:
    """Model ids the price data knows for `provider` (for suggestions and listings)."""
    from genai_prices import data_snapshot

    for entry in data_snapshot.get_snapshot().providers:
        if entry.id == provider:
            return [m.id for m in entry.models]
    return []
