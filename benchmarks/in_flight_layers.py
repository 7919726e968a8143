"""Where ember's time goes with 1000 calls in flight: the case of in_flight.py, layer by layer.

    python benchmarks/in_flight_layers.py            # 3 rounds, about 2 minutes
    python benchmarks/in_flight_layers.py --rounds 5

In one process (ember from this checkout's src/ when run from it with PYTHONPATH=src),
10,000 calls at most 1000 at once to the fake OpenAI server at 50 ms latency, rows taking
turns round by round (order rotated), each after 1000 warm-up calls made the same way:
 - bare, gather + semaphore: in_flight.py's baseline (10,000 tasks);
 - bare, through aparallel: the same aiohttp call as an `async def`, in ember.aparallel
   (1000 workers instead of 10,000 tasks);
 - ember transport: ember's `_http.post` of a body encoded once, through aparallel
   (no request checks, budget, pacing, tracking, log or Response);
 - ember, log on / log off: `models.acall` through aparallel (EMBER_LOG=0 for "off");
 - "no gc" rows: the same with Python's cyclic garbage collector disabled during the timed
   run (a measurement only: ember never changes the collector's settings).
Medians of the wall time; "gen2" is the number of full collections in a timed run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from bench import EXPECTED, KEY, MODEL, PROMPT, FakeServer

import ember
from ember import _http, _log, models
from ember._call import request
from ember._types import Call
from ember.providers import openai

N, CONCURRENCY = 10_000, 1000
BODY = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16}
One = Callable[[int], Awaitable[str]]


async def timed(make: Callable[[aiohttp.ClientSession, str], One], url: str, gather: bool,
                collect: bool) -> tuple[float, int]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    one, semaphore = make(session, url), asyncio.Semaphore(CONCURRENCY)

    async def limited(i: int) -> str:
        async with semaphore:
            return await one(i)

    async def run(n: int) -> list[Any]:
        if gather:
            return await asyncio.gather(*(limited(i) for i in range(n)))
        return await ember.aparallel(one, range(n), concurrency=CONCURRENCY, progress=False)

    await run(CONCURRENCY)
    _log.flush(60)
    full = gc.get_stats()[2]["collections"]
    if not collect:
        gc.disable()
    start = time.perf_counter()
    answers = await run(N)
    wall = time.perf_counter() - start
    gc.enable()
    assert set(answers) == {EXPECTED}
    await session.close()
    _log.flush(60)
    return wall, gc.get_stats()[2]["collections"] - full


def bare(session: aiohttp.ClientSession, url: str) -> One:
    async def one(i: int) -> str:
        async with session.post(url + "/chat/completions", json=BODY,
                                headers={"Authorization": f"Bearer {KEY}"}) as resp:
            return str(json.loads(await resp.read())["choices"][0]["message"]["content"])
    return one


def transport(session: aiohttp.ClientSession, url: str) -> One:
    req = request(MODEL, PROMPT, base_url=url, api_key=KEY, max_tokens=16)
    address, headers, body = openai.encode(req)

    async def one(i: int) -> str:
        data = await _http.post(Call(req), address, headers, body)
        return str(data["choices"][0]["message"]["content"])
    return one


def full(session: aiohttp.ClientSession, url: str) -> One:
    async def one(i: int) -> str:
        return (await models.acall(MODEL, PROMPT, base_url=url, api_key=KEY,
                                   max_tokens=16)).text
    return one


ROWS: dict[str, tuple[Callable[..., One], bool, bool, bool]] = {  # make, gather, gc, log
    "bare, gather + semaphore": (bare, True, True, True),
    "bare, through aparallel": (bare, False, True, True),
    "bare, through aparallel, no gc": (bare, False, False, True),
    "ember transport, through aparallel": (transport, False, True, True),
    "ember, log on": (full, False, True, True),
    "ember, log off": (full, False, True, False),
    "ember, log on, no gc": (full, False, False, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    os.environ["EMBER_HOME"] = tempfile.mkdtemp(prefix="ember-layers-")  # read at each call
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in ROWS}
    names = list(ROWS)
    with FakeServer("raw", [50.0], lifetime=900) as server:
        url = server.base_url(50.0)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                make, gather, collect, log = ROWS[name]
                os.environ.pop("EMBER_LOG", None)
                if not log:
                    os.environ["EMBER_LOG"] = "0"
                results[name].append(asyncio.run(timed(make, url, gather, collect)))
    base = statistics.median(wall for wall, _ in results[names[0]])
    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, {rounds} rounds, "
          f"medians\n")
    for name, got in results.items():
        wall = statistics.median(w for w, _ in got)
        print(f"{name:36} {wall:6.3f}s {wall / base:5.2f}x   gen2 "
              f"{statistics.median(g for _, g in got):.0f}")


if __name__ == "__main__":
    main()
