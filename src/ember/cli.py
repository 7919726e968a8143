"""The `ember` command: `ember "prompt" -m MODEL`, `ember demo`, `ember usage`,
`ember models`."""

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
from ._parallel import parallel, vote
from ._spend import track
from ._sqlite import connect, home
from .errors import EmberError
from .providers import local

__all__ = ["main"]

DEMO_MODEL = "local/smollm2"
DEMO_PROMPTS = ["demo_prompt.txt", "demo_prompt_2.txt", "demo_prompt_3.txt"]  # few-shot
USAGE_COLUMNS = ["calls", "cached", "tokens in", "tokens out", "cache read", "cache write",
                 "cost $", "errors", "usage unknown"]


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    shown = [headers] + [["-" if v is None else f"{v:.6f}" if isinstance(v, float) else str(v)
                          for v in row] for row in rows]
    widths = [max(len(row[i]) for row in shown) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in shown)


def _classify(job: tuple[str, str]) -> str:
    prompt, text = job
    answer = models(DEMO_MODEL, prompt.format(text=text), raw=True, max_tokens=1, temperature=0,
                    stop=["\n"])  # one token: " Positive" and " Negative" are a token each
    word = (answer.text.strip().lower().split() or [""])[0]
    return "positive" if word.startswith("pos") else "negative" if word.startswith("neg") else "?"


def demo() -> int:
    """Classify the shipped labelled reviews with the embedded model, by one prompt and by
    a vote of three (an ensemble run through parallel); print the scores and the costs."""
    files = resources.files("ember")
    items = [json.loads(line) for line in files.joinpath("demo.jsonl").read_text().splitlines()]
    prompts = [files.joinpath(name).read_text() for name in DEMO_PROMPTS]
    print(f"ember demo: {len(items)} labelled reviews, {len(prompts)} few-shot prompts, model "
          f"{DEMO_MODEL}\n(a 135M-parameter model in-process: no key, no network; demo-grade)\n")
    start = time.perf_counter()
    with track(tag="demo") as t:
        jobs = [(prompt, item["text"]) for prompt in prompts for item in items]
        labels = parallel(_classify, jobs, concurrency=local.WORKERS)  # one call per core
    single, voted = labels[:len(items)], [vote(labels[i::len(items)]) for i in range(len(items))]
    for item, one, many in zip(items, single, voted, strict=True):
        mark = "ok " if many == item["label"] else "MISS"
        print(f"{mark} {one:8} vote {many:8} (want {item['label']:8}) {item['text']}")
    for name, guesses in [("by one prompt", single), (f"by a vote of {len(prompts)}", voted)]:
        right = sum(guess == item["label"] for guess, item in zip(guesses, items, strict=True))
        print(f"\naccuracy {right}/{len(items)} = {right / len(items):.0%} {name}", end="")
    rows = [[name, m.calls, m.input_tokens, m.output_tokens, m.cost, m.percentile(50),
             m.percentile(95)] for name, m in [*t.by_model.items(), ("total", t)]]
    print(f"\nwall {time.perf_counter() - start:.2f}s\n\n" + _table(
        ["model", "calls", "tokens in", "tokens out", "cost $", "p50 s", "p95 s"], rows))
    return 0


def ask(prompt: str, model: str) -> int:
    """Stream the answer to stdout; tokens, cost and latency to stderr."""
    stream = models.stream(model, prompt)
    for text in stream:
        print(text, end="", flush=True)
    print()
    if r := stream.response:
        cost = "unknown" if r.cost is None else f"${r.cost:.6f}"
        tokens = f"{u.input_tokens} in + {u.output_tokens} out" if (u := r.usage) else "unknown"
        print(f"tokens {tokens}  cost {cost}  latency {r.latency:.2f}s", file=sys.stderr)
    return 0


def usage(since: str, as_json: bool) -> int:
    """The usage log, by model, by tag and by day."""
    if not since[:-1].isdigit() or since[-1:] not in ("d", "h"):
        raise EmberError(f"--since takes a number of days or hours, like 7d or 12h, not {since!r}")
    cutoff = time.time() - int(since[:-1]) * (86400 if since[-1] == "d" else 3600)
    groups = {"model": "provider || '/' || model", "tag": "coalesce(tag, '-')",
              "day": "date(time, 'unixepoch')"}
    tokens = ", ".join(f"sum({kind}_tokens * (1 - cached))"
                       for kind in ("input", "output", "cache_read", "cache_write"))
    with connect(home() / LOG, MIGRATIONS) as db:  # cached calls used no tokens
        tables = {name: db.execute(
            f"SELECT {group}, count(*), sum(cached), {tokens}, sum(cost), count(error), "
            "count(*) - count(output_tokens) FROM calls "
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

    rows: list[list[Any]] = [["local/smollm2-135m-instruct", 0, 0]]
    for entry in data_snapshot.get_snapshot().providers:
        for m in entry.models if entry.id in ("openai", "anthropic", "google") else []:
            rates = [getattr(m.prices, name, None) for name in ("input_mtok", "output_mtok")]
            shown = [rate if isinstance(rate, (int, Decimal)) else "tiered" for rate in rates]
            rows.append([f"{entry.id}/{m.id}", *shown])
    print(_table(["model", "$/M in", "$/M out"], [row for row in rows if provider in (
        None, row[0].split("/")[0])]))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ember", description="ask a model, or: demo|usage|models")
    parser.add_argument("prompt", help="the prompt, or a command")
    parser.add_argument("-m", "--model", default=DEMO_MODEL, help=f"default {DEMO_MODEL}")
    parser.add_argument("--since", default="36500d", help="usage: e.g. 7d or 12h")
    parser.add_argument("--json", action="store_true", help="usage: as JSON")
    parser.add_argument("--provider", help="models: only this provider's")
    o = parser.parse_args(argv)  # None: the command line
    commands: dict[str, Callable[[], int]] = {"demo": demo, "usage": lambda: usage(o.since, o.json),
                "models": lambda: known(o.provider)}
    try:
        return commands.get(o.prompt, lambda: ask(o.prompt, o.model))()
    except (EmberError, sqlite3.Error) as error:
        print(f"ember: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
