"""The price table kept in the ember home: exact, owner-only, per genai-prices version."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from ember import _prices

PRICE = ("import sys; from ember._prices import cost; from ember._types import Usage; "
         "print(repr(cost('openai', 'gpt-4o-mini', Usage(1000, 500, 200, 0))), "
         "'genai_prices' in sys.modules)")


def _fresh_process(home: Path) -> tuple[float, bool]:
    """The cost a new process computes, and whether it imported the price data to do so."""
    out = subprocess.run([sys.executable, "-c", PRICE], capture_output=True, text=True,
                         env={**os.environ, "EMBER_HOME": str(home)}, check=True).stdout.split()
    return float(out[0]), out[1] == "True"


def test_a_new_process_prices_a_model_seen_before_exactly_without_the_price_data(
        tmp_path: Path):
    first, imported = _fresh_process(tmp_path)
    assert imported  # the first lookup needs genai-prices...
    second, imported = _fresh_process(tmp_path)
    assert not imported  # ...the next process reads the table instead
    exact = calc_price(PriceUsage(input_tokens=1000, output_tokens=500, cache_read_tokens=200),
                       "gpt-4o-mini", provider_id="openai").total_price
    assert second == first  # the very float the lookup gave
    assert second == pytest.approx(float(exact), rel=1e-12)  # genai-prices' own sum, in Decimal


def test_the_table_is_owner_only(tmp_path: Path):
    _fresh_process(tmp_path)
    table = tmp_path / _prices.TABLE
    assert stat.S_IMODE(table.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [_prices.TABLE]  # no temporary file left


def test_a_table_of_another_genai_prices_version_is_thrown_away(tmp_path: Path):
    version = _prices._version()
    assert version is not None  # found from the installed package, not importlib.metadata
    wrong = {"openai/gpt-4o-mini": [1.0, 1.0, 1.0, 1.0]}
    table = tmp_path / _prices.TABLE
    table.write_text(json.dumps({"genai-prices": version, "models": wrong}))
    assert _fresh_process(tmp_path) == (1000 - 200 + 500 + 200, False)  # the table is read...
    table.write_text(json.dumps({"genai-prices": "0.0.1", "models": wrong}))
    cost, imported = _fresh_process(tmp_path)
    assert imported and cost < 0.01  # ...but not one from another version: looked up again
    saved = json.loads(table.read_text())
    assert saved["genai-prices"] == version and saved["models"]["openai/gpt-4o-mini"][0] < 1e-5
