"""The cache: what a hit costs, and 100 identical concurrent calls sharing one request.

    python benchmarks/cache.py            # about 30 s
    python benchmarks/cache.py --hits 5000  # fewer hits per figure, quicker

Measures, in one run (figures in BENCHMARKS.md, section "Cache"):
 1. The cost of a hit, in µs: --hits hits (after one miss) in 5 rounds, the best round's
    mean, for the memory and the SQLite store:
    - `@cache` on a sync and on an async function: the cache's own cost (key, lookup, unpickle);
    - `await models.acall(..., cache=store)`: a whole call as a user sees it: the Request
      checked, the key hashed from the request as it would be sent, the lookup, and the hit
      recorded as saved in usage() and the usage log (on, as by default);
    - the sync twin `models(..., cache=store)`, which also crosses to ember's loop thread;
    and, for scale, in the same run against the same fake server: a bare aiohttp call and an
    uncached `models.acall` (medians of sequential calls; server at 0 ms latency, in its own
    process: benchmarks/fake_openai.py).
 2. 100 identical calls at once with cache=True, to a server that answers in 200 ms,
    requests counted at the server (tests/fakes.py): from one event loop (asyncio.gather),
    and from 4 threads with an event loop each; bare aiohttp's 100 calls beside them.

ember's home (the SQLite store, the usage log) is a temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]  # bench.py's clients, tests' fake server
os.environ["EMBER_HOME"] = HOME = tempfile.mkdtemp(prefix="ember-bench-cache-")
for name in ("EMBER_LOG", "EMBER_LOG_PROMPTS"):
    os.environ.pop(name, None)

from bench import KEY, MAX_TOKENS, MODEL, PROMPT, FakeServer, make_bare, median_call  # noqa: E402
from fakes import OpenAIServer  # noqa: E402

from ember import MemoryStore, SQLiteStore, _log, cache, models  # noqa: E402

GOALS = {"memory": 20.0, "sqlite": 200.0}  # µs per hit (issue 10)


ROUNDS = 5  # each figure is the best of ROUNDS rounds: the machine may be busy with others


def per_hit(run: Callable[[], Any], hits: int) -> float:
    """µs per call of `run` (a hit: it was called once before): the best round's mean."""
    run()
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(hits // ROUNDS):
            run()
        best = min(best, (time.perf_counter() - start) / (hits // ROUNDS) * 1e6)
    return best


async def aper_hit(run: Callable[[], Awaitable[Any]], hits: int) -> float:
    await run()
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(hits // ROUNDS):
            await run()
        best = min(best, (time.perf_counter() - start) / (hits // ROUNDS) * 1e6)
    return best


def breakdown(base_url: str, hits: int) -> dict[str, float]:
    """Where a models.acall hit's time goes (memory store): the parts every call pays
    (checking the Request, recording it) and the cache's own lookup (with unpickling)."""
    import dataclasses

    from ember import _cache, _call, _spend
    from ember._types import Call

    store = MemoryStore()
    req = _call.request(MODEL, PROMPT, cache=store, base_url=base_url, api_key=KEY,
                        max_tokens=MAX_TOKENS)
    asyncio.run(_call.send(req))
    [key] = store._entries  # the one entry
    hit = dataclasses.replace(_cache._lookup(store, key), cached=True, cost=0.0)
    return {"request() (every call)": per_hit(lambda: _call.request(
                MODEL, PROMPT, cache=store, base_url=base_url, api_key=KEY,
                max_tokens=MAX_TOKENS), hits),
            "lookup + unpickle (cache)": per_hit(lambda: _cache._lookup(store, key), hits),
            "record() (every call)": per_hit(lambda: _spend.record(Call(req, response=hit)),
                                             hits)}


def hit_costs(base_url: str, hits: int) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    params = {"base_url": base_url, "api_key": KEY, "max_tokens": MAX_TOKENS}
    for name, store in [("memory", MemoryStore()), ("sqlite", SQLiteStore())]:
        @cache(store=store)
        def label(text: str, shots: int = 3) -> str:
            return text.upper()

        @cache(store=store)
        async def alabel(texts: list[str]) -> list[str]:
            return [text.upper() for text in texts]

        async def acall(store: Any = store) -> Any:
            return await models.acall(MODEL, PROMPT, cache=store, **params)

        async def measure() -> dict[str, float]:
            return {"@cache sync fn": per_hit(lambda: label("a great film"), hits),
                    "@cache async fn": await aper_hit(lambda: alabel(["a great film"]), hits),
                    "models.acall": await aper_hit(acall, hits)}

        figures[name] = asyncio.run(measure())
        figures[name]["models() sync"] = per_hit(
            lambda store=store: models(MODEL, PROMPT, cache=store, **params), hits // 4)
    return figures


async def scale(base_url: str, calls: int) -> dict[str, float]:
    bare, close = await make_bare(base_url)
    try:
        for _ in range(50):  # warm both: connections open, modules imported
            await bare()
            await models.acall(MODEL, PROMPT, base_url=base_url, api_key=KEY,
                               max_tokens=MAX_TOKENS)
        return {"bare aiohttp call": await median_call(bare, calls),
                "models.acall, uncached": await median_call(
                    lambda: models.acall(MODEL, PROMPT, base_url=base_url, api_key=KEY,
                                         max_tokens=MAX_TOKENS), calls)}
    finally:
        await close()


async def hundred(base_url: str, tasks: int) -> list[Any]:
    return await asyncio.gather(*[models.acall(MODEL, PROMPT, base_url=base_url, api_key=KEY,
                                               max_tokens=MAX_TOKENS, cache=True)
                                  for _ in range(tasks)])


def shared_calls() -> list[tuple[str, int, int, float]]:
    """(how, calls, requests at the server, wall ms) for 100 identical calls at once."""
    rows = []
    with OpenAIServer(latency=0.2, reply_text="Hello!") as server:
        url = server.base_url

        async def bare_hundred() -> None:
            bare, close = await make_bare(url)
            await asyncio.gather(*[bare() for _ in range(100)])
            await close()

        def loops() -> None:
            threads = [threading.Thread(target=lambda: asyncio.run(hundred(url, 25)))
                       for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        for how, run in [("bare aiohttp, 1 event loop", lambda: asyncio.run(bare_hundred())),
                         ("ember cache=True, 1 event loop",
                          lambda: asyncio.run(hundred(url, 100))),
                         ("ember cache=True, 4 threads x 1 loop each", loops)]:
            SQLiteStore().clear()
            before, start = len(server.requests), time.perf_counter()
            run()
            rows.append((how, 100, len(server.requests) - before,
                         (time.perf_counter() - start) * 1e3))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hits", type=int, default=20_000, help="hits per figure")
    args = parser.parse_args()
    import platform

    print(f"python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}\n")
    try:
        with FakeServer("raw", [0.0], lifetime=600) as server:
            base_url = server.base_url(0.0)
            figures = hit_costs(base_url, args.hits)
            parts = breakdown(base_url, args.hits)
            for_scale = asyncio.run(scale(base_url, 2000))
        print(f"1. cost of a hit, µs (best of {ROUNDS} rounds of {args.hits // ROUNDS} hits)\n")
        kinds = list(figures["memory"])
        print(f"{'':28}" + "".join(f"{kind:>17}" for kind in kinds))
        for name, row in figures.items():
            print(f"{name + ' store':28}" + "".join(f"{row[kind]:17.1f}" for kind in kinds))
        for name, goal in GOALS.items():
            own = figures[name]["@cache async fn"]
            print(f"  {name}: goal <= {goal:.0f} µs per hit: @cache {own:.1f} µs "
                  f"({'meets' if own <= goal else 'misses'}), models.acall "
                  f"{figures[name]['models.acall']:.1f} µs "
                  f"({'meets' if figures[name]['models.acall'] <= goal else 'misses'})")
        print("\nwhere a models.acall hit goes (memory store), µs:")
        for how, us in parts.items():
            print(f"  {how:28} {us:8.1f}")
        print("  the rest: the key (the request as it would be sent, hashed), the hit's copy,\n"
              "  and the coroutine layers of acall")
        print("\nfor scale, the same server, median of 2000 sequential calls:")
        for how, us in for_scale.items():
            print(f"  {how:28} {us:8.1f} µs")
        print("\n2. 100 identical calls at once, server latency 200 ms\n")
        print(f"{'':44}{'calls':>7}{'requests':>10}{'wall ms':>9}")
        for how, calls, requests, wall in shared_calls():
            print(f"{how:44}{calls:7d}{requests:10d}{wall:9.0f}")
        _log.flush()
    finally:
        shutil.rmtree(HOME, ignore_errors=True)


if __name__ == "__main__":
    main()
