"""The `ember` command: `ember "prompt" -m MODEL`, `ember demo`, `ember usage`,
`ember models`."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from importlib import resources
from typing import Any

from ._call import models
from ._log import LOG, MIGRATIONS
from ._spend import Tracker, track
from ._sqlite import connect, home
from .errors import EmberError

__all__ = ["main"]

DEMO_MODEL = "local/smollm2"
USAGE_COLUMNS = ["calls", "cached", "tokens in", "tokens out", "cost $", "errors"]


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    shown = [headers] + [["-" if v is None else f"{v:.6f}" if isinstance(v, float) else str(v)
                          for v in row] for row in rows]
    widths = [max(len(row[i]) for row in shown) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in shown)


def _label(answer: str) -> str:
    word = (answer.strip().lower().split() or [""])[0]
    return "positive" if word.startswith("pos") else "negative" if word.startswith("neg") else "?"


def demo() -> int:
    """Classify the shipped labelled reviews with the embedded model; print the score."""
    files = resources.files("ember")
    items = [json.loads(line) for line in files.joinpath("demo.jsonl").read_text().splitlines()]
    prompt = files.joinpath("demo_prompt.txt").read_text()
    print(f"ember demo: {len(items)} labelled reviews, a few-shot prompt, model {DEMO_MODEL}\n"
          "(a 135M-parameter model running in-process: no key, no network; demo-grade)\n")
    start, right = time.perf_counter(), 0
    with track(tag="demo") as t:
        for item in items:
            answer = models(DEMO_MODEL, prompt.format(text=item["text"]), raw=True, max_tokens=2,
                            temperature=0, stop=["\n"])
            guess = _label(answer.text)
            right += guess == item["label"]
            mark = "ok " if guess == item["label"] else "MISS"
            print(f"{mark} {guess:8} (want {item['label']:8}) {item['text']}")
    print(f"\naccuracy {right}/{len(items)} = {right / len(items):.0%}   "
          f"wall {time.perf_counter() - start:.2f}s\n")
    print(_costs(t))
    return 0


def _costs(t: Tracker) -> str:
    rows = [[name, m.calls, m.input_tokens, m.output_tokens, m.cost, m.percentile(50),
             m.percentile(95)] for name, m in [*t.by_model.items(), ("total", t)]]
    headers = ["model", "calls", "tokens in", "tokens out", "cost $", "p50 s", "p95 s"]
    return _table(headers, rows)


def ask(prompt: str, model: str) -> int:
    """Stream the answer to stdout; tokens, cost and latency to stderr."""
    stream = models.stream(model, prompt)
    for text in stream:
        print(text, end="", flush=True)
    print()
    if r := stream.response:
        cost = "unknown" if r.cost is None else f"${r.cost:.6f}"
        print(f"tokens {r.usage.input_tokens} in + {r.usage.output_tokens} out  cost {cost}  "
              f"latency {r.latency:.2f}s", file=sys.stderr)
    return 0


def usage(since: str, as_json: bool) -> int:
    """The usage log, by model, by tag and by day."""
    if not since[:-1].isdigit() or since[-1:] not in ("d", "h"):
        raise EmberError(f"--since takes a number of days or hours, like 7d or 12h, not {since!r}")
    cutoff = time.time() - int(since[:-1]) * (86400 if since[-1] == "d" else 3600)
    groups = {"model": "provider || '/' || model", "tag": "coalesce(tag, '-')",
              "day": "date(time, 'unixepoch')"}
    with connect(home() / LOG, MIGRATIONS) as db:  # cached calls used no tokens
        tables = {name: db.execute(
            f"SELECT {group}, count(*), sum(cached), sum(input_tokens * (1 - cached)), "
            "sum(output_tokens * (1 - cached)), sum(cost), count(error) FROM calls "
            "WHERE time >= ? GROUP BY 1 ORDER BY 1", (cutoff,)).fetchall()
            for name, group in groups.items()}
    if as_json:
        print(json.dumps({name: [dict(zip([name, *USAGE_COLUMNS], row, strict=True))
                                 for row in rows] for name, rows in tables.items()}, indent=1))
    else:
        print("\n\n".join(_table([name, *USAGE_COLUMNS], rows) for name, rows in tables.items()))
    return 0


def known(provider: str | None) -> int:
    """The models the price data knows, with USD per million tokens."""
    from genai_prices import data_snapshot

    rows: list[list[Any]] = [["local/smollm2-135m-instruct", 0, 0]] if provider in (
        None, "local") else []
    for entry in data_snapshot.get_snapshot().providers:
        for m in entry.models if entry.id in ("openai", "anthropic", "google") else []:
            rates = [getattr(m.prices, name, None) for name in ("input_mtok", "output_mtok")]
            shown = [rate if isinstance(rate, (int, Decimal)) else "tiered" for rate in rates]
            rows += [[f"{entry.id}/{m.id}", *shown]] if provider in (None, entry.id) else []
    print(_table(["model", "$/M in", "$/M out"], rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ember", description='ember "prompt" -m MODEL, or '
                                     "ember demo | usage | models")
    parser.add_argument("prompt", help="the prompt, or a command")
    parser.add_argument("-m", "--model", default=DEMO_MODEL, help=f"default {DEMO_MODEL}")
    parser.add_argument("--since", default="36500d", help="usage: e.g. 7d or 12h")
    parser.add_argument("--json", action="store_true", help="usage: as JSON")
    parser.add_argument("--provider", help="models: only this provider's")
    o = parser.parse_args(sys.argv[1:] if argv is None else argv)
    commands: dict[str, Callable[[], int]] = {"demo": demo, "usage": lambda: usage(o.since, o.json),
                "models": lambda: known(o.provider)}
    try:
        return commands.get(o.prompt, lambda: ask(o.prompt, o.model))()
    except (EmberError, sqlite3.Error) as error:
        print(f"ember: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
