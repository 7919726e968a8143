"""Limits, budgets and the cache shared through Redis: what each costs a call over loopback
Redis, and four processes sharing one budget and one limit.

    python benchmarks/shared.py             # about 15 s; needs redis-server on the PATH
    python benchmarks/shared.py --calls 300  # fewer calls per figure, quicker

Measures, in one run (figures in BENCHMARKS.md, section "Shared through Redis"):
 1. The cost per call of each feature, local and shared: the median of --calls sequential
    `models.acall`s (5 rounds, the rounds of every variant interleaved, the best round's
    median) against benchmarks/fake_openai.py (0 ms latency, its own process), with
    nothing configured; under `limit("openai", rpm=10**9)` (no call waits: the cost of
    taking a turn); under `limit("openai", concurrency=1000)` (taking a place and giving
    it back); under `budget(usd=10**6)` (a reservation and its settlement); and a
    cache hit (SQLite, and Redis). Beside each shared figure: the Redis commands a call
    sent (Redis's own count, INFO commandstats), i.e. its round trips. For scale, in the
    same rounds: a bare aiohttp call, and one after a bare redis.asyncio EVAL of the shared
    limit's script (what one round trip before a call costs without ember).
 2. Four worker processes x 250 concurrent calls under one `budget(usd=..., shared=...)`,
    against the fake of tests/fakes.py (50 ms latency, in this process), each call costing
    just what it reserves: sent, refused, spent against the cap, requests at the server.
 3. Four worker processes sharing `limit("openai", rpm=600, shared=...)`, 8 calls each at
    once, against a fake that admits 10 requests a second (tests/test_pace.Server): 429s
    and calls a second at the server.
A redis-server of the benchmark's own runs on a free port of 127.0.0.1 (no persistence).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]  # bench.py's server, the tests' fakes
os.environ["EMBER_HOME"] = HOME = tempfile.mkdtemp(prefix="ember-bench-shared-")
for name in ("EMBER_LOG", "EMBER_LOG_PROMPTS"):
    os.environ.pop(name, None)

import redis  # noqa: E402
from bench import KEY, MAX_TOKENS, MODEL, PROMPT, FakeServer, median_call  # noqa: E402
from conftest import RedisServer  # noqa: E402
from fakes import OpenAIServer  # noqa: E402
from test_pace import Server  # noqa: E402
from test_redis import PACED, SPENDER, run_all, start  # noqa: E402
from test_spend import worst_case  # noqa: E402

from ember import SQLiteStore, _redis, budget, limit, models  # noqa: E402

ROUNDS = 5


def commands(url: str) -> int:
    """Commands clients have sent the Redis server so far: EVAL, GET, SET (INFO commandstats;
    not the commands the scripts ran, nor HMGET, used only to read .spent)."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
               for name in ("eval", "evalsha", "get", "set"))


def per_call(base_url: str, url: str, calls: int) -> dict[str, tuple[float, float]]:
    """Median µs per call of each variant, and the Redis commands it sent per call."""
    params = {"base_url": base_url, "api_key": KEY, "max_tokens": MAX_TOKENS}
    shared_budget = budget(usd=10**6, shared=url, name="bench")
    sqlite = SQLiteStore()

    async def call() -> Any:
        return await models.acall(MODEL, PROMPT, **params)

    def under(cap: Any) -> Callable[[], Awaitable[Any]]:
        async def call() -> Any:
            with cap:
                return await models.acall(MODEL, PROMPT, **params)
        return call

    local, shared = lambda: limit("openai", rpm=10**9), lambda: limit("openai", rpm=10**9,
                                                                       shared=url)
    variants: dict[str, tuple[Callable[[], None], Callable[[], Awaitable[Any]]]] = {
        "nothing configured": (lambda: None, call),
        "limit, local": (local, call), "limit, shared": (shared, call),
        "concurrency, local": (lambda: limit("openai", concurrency=1000), call),
        "concurrency, shared": (lambda: limit("openai", concurrency=1000, shared=url), call),
        "budget, local": (lambda: None, under(budget(usd=10**6))),
        "budget, shared": (lambda: None, under(shared_budget)),
        "cache hit, SQLite": (lambda: None, lambda: models.acall(MODEL, PROMPT, cache=sqlite,
                                                                 **params)),
        "cache hit, Redis": (lambda: None, lambda: models.acall(MODEL, PROMPT, cache=url,
                                                                **params)),
    }
    clients: dict[str, Any] = {}  # made in the event loop that measures

    async def bare(script: bool) -> Any:
        """A bare aiohttp call, after a bare EVAL of the shared limit's own script if asked:
        the least one Redis round trip before a call can cost here."""
        if script:
            await clients["redis"].eval(_redis.PACE, 1, "bench:floor", 1, 0, 0.0, 10**9, 0, 0.0)
        body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
                "max_completion_tokens": MAX_TOKENS}
        async with clients["http"].post(f"{base_url}/chat/completions", json=body,
                                         headers={"Authorization": f"Bearer {KEY}"}) as resp:
            return json.loads(await resp.read())

    variants["bare aiohttp"] = (lambda: None, lambda: bare(False))
    variants["bare aiohttp, after a bare EVAL of PACE"] = (lambda: None, lambda: bare(True))
    best: dict[str, float] = {name: float("inf") for name in variants}
    sent: dict[str, float] = {}

    async def measure() -> None:
        import aiohttp
        import redis.asyncio

        clients.update(http=aiohttp.ClientSession(), redis=redis.asyncio.Redis.from_url(url))
        for _ in range(ROUNDS + 1):  # the first round warms: connections, data, entries
            for name, (configure, run) in variants.items():
                configure()
                before = commands(url)
                best[name] = min(best[name], await median_call(run, calls))
                sent[name] = (commands(url) - before) / calls
                limit("openai")
        await clients["http"].close()
        await clients["redis"].aclose()

    async def bare_round_trip() -> float:  # for scale: redis-py's own, with no script
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(url)
        try:
            return min([await median_call(lambda: client.eval("return 1", 0), calls)
                        for _ in range(ROUNDS + 1)])
        finally:
            await client.aclose()

    asyncio.run(measure())
    figures = {name: (best[name], sent[name]) for name in variants}
    figures["(a bare redis.asyncio EVAL, alone)"] = (asyncio.run(bare_round_trip()), 1.0)
    return figures


def four_spenders(url: str) -> dict[str, Any]:
    with OpenAIServer() as server:
        os.environ.update(OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY=KEY)
        worst = worst_case(server, max_tokens=100)
        server.latency, cap = 0.05, worst * 100.5
        began = time.perf_counter()
        outcomes = " ".join(run_all([start(SPENDER, url, repr(cap)) for _ in range(4)]))
        wall = time.perf_counter() - began
        spent = budget(usd=cap, shared=url, name="nightly").spent
        return {"sent": outcomes.split().count("Response"),
                "refused": outcomes.split().count("BudgetExceeded"),
                "other": len(outcomes.split()) - outcomes.split().count("Response")
                - outcomes.split().count("BudgetExceeded"),
                "requests": len(server.requests), "cap": cap, "spent": spent,
                "server count x price": len(server.requests) * worst, "wall s": wall}


def four_paced(url: str) -> dict[str, Any]:
    with Server(rate=10) as server:
        os.environ.update(OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY=KEY)
        run_all([start(PACED, url) for _ in range(4)])
        times = sorted(r.at for r in server.requests)
        return {"calls": len(times), "429s": server.refused,
                "calls/s": (len(times) - 1) / (times[-1] - times[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    server = RedisServer()
    try:
        with FakeServer("raw", [0.0], lifetime=600) as fake:
            costs = per_call(fake.base_url(0.0), server.url, args.calls // ROUNDS)
        base = costs["nothing configured"][0]
        print(f"{'per call (median µs, best of 5 rounds)':40} {'µs':>8} {'added':>8} "
              f"{'Redis commands':>15}")
        for name, (us, sent) in costs.items():
            added = f"{us - base:+8.1f}" if name[0] != "(" else " " * 8
            print(f"{name:40} {us:8.1f} {added} {sent:15.2f}")
        redis.Redis.from_url(server.url).flushall()
        print("\nfour processes x 250 calls under one shared budget:", four_spenders(server.url))
        print("four processes sharing limit(rpm=600), server admits 10/s:", four_paced(server.url))
    finally:
        server.stop()
        shutil.rmtree(HOME, ignore_errors=True)


if __name__ == "__main__":
    main()
