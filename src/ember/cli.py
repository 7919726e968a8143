"""The `ember` command, one subcommand each: `ember ask "prompt" -m MODEL` (or just
`ember "prompt"`), `ember demo`, `ember usage`, `ember models`, `ember dashboard`,
`ember cache stats|clear`. Each runs one small function, called with its options by name;
_add_commands adds their parsers."""

import argparse
import datetime
import json
import sqlite3
import sys
import time
from collections.abc import Callable
from importlib import resources
from typing import Any, Literal

from . import dashboard
from ._call import models
from ._parallel import parallel, vote
from ._report import report, window
from ._spend import track
from .errors import EmberError, MissingKey
from .providers import local

__all__ = ["main"]

DEMO_MODEL = "local/smollm2"
DEMO_PROMPTS = ["demo_prompt.txt", "demo_prompt_2.txt", "demo_prompt_3.txt"]  # few-shot
PRICED = ["openai", "anthropic", "google"]  # the providers whose prices `ember models` lists
DEMO_JSON_PROMPT = "demo_prompt_json.txt"  # the first, its labels written as JSON strings


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    shown = [headers] + [["-" if v is None else f"{v:.6f}" if isinstance(v, float) else str(v)
                          for v in row] for row in rows]
    widths = [max(len(row[i]) for row in shown) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in shown)


def _classify(job: tuple[str, str]) -> str:
    prompt, text = job
    answer = models(DEMO_MODEL, prompt.format(text=text), raw=True, max_tokens=1, temperature=0,
                    stop=["\n"], cache=True)  # one token: " Positive" and " Negative" are one each
    word = (answer.text.strip().lower().split() or [""])[0]
    return "positive" if word.startswith("pos") else "negative" if word.startswith("neg") else "?"


def _label(job: tuple[str, str]) -> str:  # through schema=: only "positive" or "negative"
    return str(models(DEMO_MODEL, job[0].format(text=job[1]), raw=True, max_tokens=8,
                      temperature=0, schema=Literal["positive", "negative"], cache=True).parsed)


def demo() -> int:
    """Classify the shipped labelled reviews with the embedded model, by one prompt, by a
    vote of three (an ensemble run through parallel) and by one prompt through a Literal
    schema= (a llama.cpp grammar: no other answer is possible); print scores and costs."""
    files = resources.files("ember")
    items = [json.loads(line) for line in files.joinpath("demo.jsonl").read_text().splitlines()]
    prompts = [files.joinpath(name).read_text() for name in DEMO_PROMPTS]
    json_prompt = files.joinpath(DEMO_JSON_PROMPT).read_text()
    print(f"ember demo: {len(items)} labelled reviews, {len(prompts)} few-shot prompts, model "
          f"{DEMO_MODEL}\n(a 135M-parameter model in-process: no key, no network; demo-grade)\n")
    local.load()  # before the clock and the progress bar start: loading is not a call
    start = time.perf_counter()
    with track(tag="demo") as t:
        jobs = [(prompt, item["text"]) for prompt in prompts for item in items]
        labels = parallel(_classify, jobs, concurrency=local.WORKERS)  # one call per core
        typed = parallel(_label, [(json_prompt, item["text"]) for item in items],
                         concurrency=local.WORKERS)
    single, voted = labels[:len(items)], [vote(labels[i::len(items)]) for i in range(len(items))]
    print(f"{'one prompt':14} {f'vote of {len(prompts)}':14} {'want':9} review")
    for item, one, many in zip(items, single, voted, strict=True):
        marks = ["ok  " if guess == item["label"] else "MISS" for guess in (one, many)]
        print(f"{marks[0]} {one:9} {marks[1]} {many:9} {item['label']:9} {item['text']}")
    for name, guesses in [("by one prompt", single), (f"by a vote of {len(prompts)}", voted),
                          ('by one prompt through schema=Literal["positive", "negative"]', typed)]:
        right = sum(guess == item["label"] for guess, item in zip(guesses, items, strict=True))
        print(f"\naccuracy {right}/{len(items)} = {right / len(items):.0%} {name}", end="")
    rows = [[name, m.calls, m.input_tokens, m.output_tokens, m.cost, m.percentile(50),
             m.percentile(95)] for name, m in [*t.by_model.items(), ("total", t)]]
    print(f"\nwall {time.perf_counter() - start:.2f}s\n\n" + _table(
        ["model", "calls", "tokens in", "tokens out", "cost $", "p50 s", "p95 s"], rows))
    print(f"\n{t.cached} of {t.calls} calls served from the cache, ${t.saved:.6f} saved "
          "(`ember cache clear` to start afresh)")
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


def usage(since: str, tag: str | None, model: str | None, as_json: bool) -> int:
    """The usage log, by model, by tag and by time (the dashboard's numbers); a cached call
    counts in `saved`, not in tokens or cost."""
    found = report(since, tag, model)
    tables = [found[f"by_{name}"] or [{name: "(none)"}] for name in ("model", "tag", "time")]
    print(json.dumps(found, indent=1) if as_json else "\n\n".join(
        _table(list(rows[0]), [list(row.values()) for row in rows]) for rows in tables))
    return 0


def known(provider: str | None) -> int:
    """The models the price data knows, with today's USD per million tokens."""
    from genai_prices import data_snapshot

    now = datetime.datetime.now(datetime.UTC)
    rows: list[list[Any]] = [["local/smollm2", 0, 0]]
    for entry in data_snapshot.get_snapshot().providers:
        for m in entry.models if entry.id in PRICED else []:
            prices = m.get_prices(now)
            rows.append([f"{entry.id}/{m.id}", _rate(prices.input_mtok), _rate(prices.output_mtok)])
    rows = [row for row in rows if provider in (None, row[0].split("/")[0])]
    print(_table(["model", "$/M in", "$/M out"], rows))
    return 0


def _rate(rate: Any) -> Any:
    """A price per million tokens: a number, or for a tiered one '3 (6 if prompt > 200k)'."""
    tiers = "".join(f" ({tier.price} if prompt > {tier.start // 1000}k)"
                    for tier in getattr(rate, "tiers", []))
    return f"{rate.base}{tiers}" if tiers else rate


def _window(parser: argparse.ArgumentParser, since: str) -> None:
    parser.add_argument("--since", default=since, help=f"days or hours: 7d, 12h (default {since})")
    parser.add_argument("--tag", help="only the calls with this tag ('-': those without)")
    parser.add_argument("--model", help="only the calls to this model")


def _command(commands: Any, name: str, about: str, run: Callable[..., int]) -> Any:
    """A subcommand's parser; `run` is called with its options as keyword arguments."""
    parser = commands.add_parser(name, help=about, description=about)
    parser.set_defaults(run=run)
    return parser


def cache(action: str, older_than: str | None) -> int:
    """The default cache store: its size, or clear it (only entries older than an age)."""
    from ._cache import SQLiteStore

    store = SQLiteStore()
    if action == "clear":
        age = window(older_than, "--older-than") if older_than else None
        print(f"removed {store.clear(age)} entries")
    else:
        print("{entries} entries, {bytes} bytes in {path}".format(**store.stats()))
    return 0


def _add_commands(commands: Any) -> None:
    """Each subcommand's parser, and what it runs."""
    parser = _command(commands, "ask", 'stream an answer (the default: ember "prompt")', ask)
    parser.add_argument("prompt")
    parser.add_argument("-m", "--model", default=DEMO_MODEL, help=f"default {DEMO_MODEL}")
    _command(commands, "demo", "the main job, on the embedded model", demo)
    parser = _command(commands, "usage", "the usage log by model, tag and time", usage)
    _window(parser, "36500d")
    parser.add_argument("--json", dest="as_json", action="store_true", help="as JSON")
    parser = _command(commands, "models", "the known models, USD per million tokens", known)
    parser.add_argument("--provider", choices=[*PRICED, "local"], help="only this provider's")
    parser = _command(commands, "dashboard", "the usage log as a live page on 127.0.0.1",
                      dashboard.main)
    _window(parser, "7d")
    parser.add_argument("--port", type=int, default=dashboard.PORT, help="0: any free port")
    parser.add_argument("--html", metavar="FILE", help="write the page, data included, to FILE")
    parser.add_argument("--no-browser", dest="browser", action="store_false", help="print the URL")
    parser = _command(commands, "cache", "the default cache store: its size, or clear it", cache)
    parser.add_argument("action", choices=["stats", "clear"])
    parser.add_argument("--older-than", metavar="AGE", help="clear: only entries written over "
                        "AGE ago (7d, 12h), and the expired ones")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ember", description="Call language models and know "
                                     'what they cost. `ember "prompt"` is `ember ask "prompt"`.')
    commands = parser.add_subparsers(title="commands", required=True)
    _add_commands(commands)
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] not in (*commands.choices, "-h", "--help"):
        args = ["ask", *args]  # ember "prompt" -m MODEL
    options = vars(parser.parse_args(args))
    run = options.pop("run")
    try:
        return int(run(**options))
    except MissingKey as error:  # the command line has no api_key= to pass
        print(f"ember: no API key for {error.provider}: set {' or '.join(error.variables)}",
              file=sys.stderr)
    except (EmberError, sqlite3.Error, OSError) as error:  # OSError: a port in use, say
        print(f"ember: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1
