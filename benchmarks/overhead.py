"""Where ember's extra time per call goes: a ladder from the bare aiohttp client to
`models.acall`, adding one layer of ember at a time (sequential, 0 ms latency, fake server).

    python benchmarks/overhead.py [--calls 1500] [--rounds 6]

Each row is the median wall time per call; "+" is its gap to the bare client. The rows run
in interleaved rounds so drift hits them alike. cProfile is no use at this scale (its own
cost per function call is as big as the differences), hence this ablation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time

import aiohttp
from bench import KEY, MODEL, PROMPT, FakeServer, messages, seq_round, seq_round_sync

from ember import _call, _http, _log, models, providers
from ember._types import Call


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1500, help="calls per row per round")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    with FakeServer("raw", [0.0], lifetime=300) as server:
        base = server.base_url(0.0)
        req = _call.request(MODEL, PROMPT, base_url=base, api_key=KEY)
        url, headers, _ = providers.module("openai").encode(req)

        async def open_session() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

        session = loop.run_until_complete(open_session())

        async def bare() -> str:
            body = {"model": MODEL, "messages": messages()}
            async with session.post(url, json=body, headers=headers) as resp:
                data = json.loads(await resp.read())
            return data["choices"][0]["message"]["content"]  # type: ignore[no-any-return]

        async def bare_timeout() -> str:  # + ember's per-call ClientTimeout(sock_*)
            body = {"model": MODEL, "messages": messages()}
            timeout = aiohttp.ClientTimeout(sock_connect=30.0, sock_read=30.0)
            resp = await session.post(url, json=body, headers=headers, timeout=timeout)
            data = json.loads(await resp.read())
            return data["choices"][0]["message"]["content"]  # type: ignore[no-any-return]

        async def transport() -> str:  # ember's _http.post: its session, retry loop, _read_json
            body = {"model": MODEL, "messages": messages()}
            data = await _http.post(Call(req), url, headers, body)
            return data["choices"][0]["message"]["content"]  # type: ignore[no-any-return]

        async def encoded() -> str:  # + providers.module() and encode()
            provider = providers.module(req.provider)
            u, h, body = provider.encode(req)
            data = await _http.post(Call(req), u, h, body)
            return data["choices"][0]["message"]["content"]  # type: ignore[no-any-return]

        async def decoded() -> str:  # + decode() (text and Usage)
            provider = providers.module(req.provider)
            u, h, body = provider.encode(req)
            text, *_ = provider.decode(await _http.post(Call(req), u, h, body))
            return text

        async def send() -> str:  # + Response and its timing: _call.send on a ready Request
            return (await _call.send(req)).text

        async def acall() -> str:  # + request(): the whole public call
            return (await models.acall(MODEL, PROMPT, base_url=base, api_key=KEY)).text

        rows = {"bare aiohttp": bare, "+ ClientTimeout(sock_*) per call": bare_timeout,
                "ember _http.post": transport, "+ providers.module() + encode()": encoded,
                "+ decode()": decoded, "ember _call.send(req)": send,
                "ember models.acall (+ request())": acall}
        own_loop = asyncio.new_event_loop()  # a loop in the caller's thread, for comparison

        def sync_twin() -> str:
            return models(MODEL, PROMPT, base_url=base, api_key=KEY).text

        def sync_on_own_loop() -> str:
            return own_loop.run_until_complete(acall())

        # part 1: the ladder, all on one loop; part 2: ways to call from sync code
        parts = [rows, {"bare aiohttp": lambda: loop.run_until_complete(bare()),
                        "ember models.acall": lambda: loop.run_until_complete(acall()),
                        "ember sync twin models(...)": sync_twin,
                        "acall on a loop in the caller's thread": sync_on_own_loop}]
        results = []
        for i, part in enumerate(parts):
            items = list(part.items())
            run = ((lambda f, n, ts: loop.run_until_complete(seq_round(f, n, ts))) if i == 0
                   else seq_round_sync)
            for _, f in items:
                run(f, 300, [])
            times: dict[str, list[int]] = {k: [] for k in part}
            for r in range(args.rounds):
                for name, f in items[r % len(items):] + items[:r % len(items)]:
                    run(f, args.calls, times[name])
            results.append(times)
        loop.run_until_complete(session.close())
        for lp in (loop, own_loop):
            lp.run_until_complete(lp.shutdown_asyncgens())
            lp.close()

    print(f"sequential, 0 ms latency, {args.calls * args.rounds} calls per row "
          f"(finished {time.strftime('%H:%M:%S')})")
    titles = ["the ladder (async, one loop)",
              "from sync code (each call by run_until_complete, but the sync twin)"]
    for title, times in zip(titles, results, strict=True):
        ref = statistics.median(times["bare aiohttp"])
        print(f"\n{title}\n| row | median µs | gap to bare µs |\n|---|---:|---:|")
        for name, ts in times.items():
            m = statistics.median(ts)
            print(f"| {name} | {m / 1000:.1f} | {(m - ref) / 1000:+.1f} |")


if __name__ == "__main__":
    home = tempfile.mkdtemp(prefix="ember-overhead-")  # the usage log: never ~/.ember
    os.environ["EMBER_HOME"] = home
    try:
        main()
    finally:
        _log.flush()
        shutil.rmtree(home, ignore_errors=True)
