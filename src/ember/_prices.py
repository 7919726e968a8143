"""The cost of a call, from the maintained `genai-prices` data (imported on first use).

A model's price is looked up once; flat per-token prices are then applied in about a
microsecond, tiered or dated ones through genai-prices itself. A model whose price is
unknown costs None, never a silent 0, with one warning per model; so does a call whose
usage is unknown. Cache reads and writes are priced at the model's cache prices, or at its
input price where it has none (as genai-prices does).

Flat prices and unknown models, once looked up, are kept in TABLE in the ember home, so
that a new process prices a model seen before without importing the price data (a few
hundred ms, more than the rest of a first call to a fast server). The table is thrown
away when the genai-prices version changes. Left out: keeping tiered prices there (they
stay genai-prices' own calculation), and fetching newer prices than the installed ones.
"""


import contextlib
import dataclasses
import datetime
import functools
import json
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._types import Usage
from .errors import UnknownPrice

__all__ = ["cost", "known_models"]

FREE = {"local", "ollama"}  # runs on the user's own machine
TABLE = "prices.json"  # {"genai-prices": version, "models": {"provider/model": rates}}
Pricer = Callable[[Usage], float]


@functools.cache
def _pricer(provider: str, model: str) -> Pricer | None:
    table, key = _table(), f"{provider}/{model}"
    rates = table[key] if key in table else _lookup(provider, model)
    if key not in table and not callable(rates):  # a flat price, or none: kept for next time
        table[key] = rates
        _save(table)
    if rates is None:
        warnings.warn_explicit(f"no price known for {provider}/{model}: its calls have "
                               "cost=None", UnknownPrice, "ember", 0)  # no line of ember's
    if rates is None or callable(rates):
        return rates
    per_in, per_out, per_read, per_write = rates
    return lambda u: ((u.input_tokens - u.cache_read_tokens - u.cache_write_tokens) * per_in
                      + u.output_tokens * per_out + u.cache_read_tokens * per_read
                      + u.cache_write_tokens * per_write)


def _lookup(provider: str, model: str) -> list[float] | Pricer | None:
    """USD per token (input, output, cache read, cache write) of a flat price; for a price
    that depends on the call (its size, its date...), genai-prices' own calculation; None
    when the price is unknown."""
    from decimal import Decimal

    from genai_prices import Usage as PriceUsage
    from genai_prices import data_snapshot
    from genai_prices.types import ModelPrice

    try:
        found, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
    except LookupError:
        return None
    if isinstance(price := info.prices, ModelPrice):  # else prices, each under a condition
        uncached = price.input_mtok or 0
        rates: list[Any] = [uncached, price.output_mtok or 0, price.cache_read_mtok or uncached,
                            price.cache_write_mtok or uncached]
        if all(isinstance(rate, (int, Decimal)) for rate in rates):
            return [float(rate) / 1e6 for rate in rates]

    def tiered(u: Usage) -> float:
        usage = PriceUsage(**dataclasses.asdict(u))  # the same names
        now = datetime.datetime.now(datetime.UTC)
        return float(info.calc_price(usage, found, genai_request_timestamp=now).total_price)

    return tiered


@functools.cache
def _version() -> str | None:
    """The installed genai-prices version, from its .dist-info folder's name (importing
    importlib.metadata would cost more than the table saves); None if not found so."""
    import importlib.util

    spec = importlib.util.find_spec("genai_prices")
    folder = Path(spec.origin).parent.parent if spec and spec.origin else Path()
    found = [path.name.removeprefix("genai_prices-").removesuffix(".dist-info")
             for path in folder.glob("genai_prices-*.dist-info")]
    return found[0] if len(found) == 1 else None


@functools.cache
def _table() -> dict[str, Any]:
    """The lookups made so far, from TABLE, so that a new process prices a model it has seen
    without importing the price data (a few hundred ms). Thrown away when the genai-prices
    version changes; prices that depend on the call ("tiered") come from genai-prices."""
    from ._sqlite import home

    try:
        saved = json.loads((home() / TABLE).read_text())
        fresh = _version() is not None and saved["genai-prices"] == _version()
        return dict(saved["models"]) if fresh else {}
    except (OSError, ValueError, LookupError, TypeError):  # none yet, or not one of ours
        return {}


def _save(table: dict[str, Any]) -> None:
    """Write the table, owner-only, in one step: a reader never sees half of it."""
    from ._sqlite import home

    with contextlib.suppress(OSError):  # a home we cannot write: each process looks them up
        path = home() / TABLE
        temporary = path.with_name(f"{TABLE}.{os.getpid()}.{threading.get_ident()}")
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                       "w") as file:  # dict(): a copy, as another thread may add to the table
            json.dump({"genai-prices": _version(), "models": dict(table)}, file)
        os.replace(temporary, path)


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
