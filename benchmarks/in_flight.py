"""Thousands in flight: `aparallel(async_fn, 10_000 items, concurrency=1000)` at 50 ms latency
against bare aiohttp with a semaphore, ember's usage log on.

    python benchmarks/in_flight.py               # 5 repetitions, about 1 minute
    python benchmarks/in_flight.py --reps 9 --before c3f1bc1

Each sample is a fresh process (so its peak RSS is its own) that opens its pool with 1000
concurrent calls, then times 10,000 calls at most 1000 at once to the fake OpenAI server
(benchmarks/fake_openai.py, another process, 50 ms latency): the ideal is 10000 / 1000 *
0.05 = 0.5 s. Bare aiohttp: one session (TCPConnector(limit=0), as ember's), each call
`async with semaphore: session.post(...)`, all 10,000 gathered. ember: `await
ember.aparallel(one, range(10_000), concurrency=1000, progress=False)` with `async def one(i):
return (await models.acall(...)).text`, its usage log on (a temporary EMBER_HOME). After the
timed run ember waits for its log (`_log.flush()`, reported apart: "log flush"), then checks
that the log holds one row per call. The clients take turns, rep by rep, order rotated;
--before REV adds ember as it was at git revision REV.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import EXPECTED, KEY, MODEL, PROMPT, FakeServer

HERE = Path(__file__).resolve().parent
N, CONCURRENCY, WARM = 10_000, 1000, 1000

COMMON = f"""
import asyncio, json, resource, sys, time
URL, N, CONCURRENCY, WARM = sys.argv[1], {N}, {CONCURRENCY}, {WARM}
BODY = {{"model": {MODEL!r}, "messages": [{{"role": "user", "content": {PROMPT!r}}}],
        "max_tokens": 16}}
def report(wall, **more):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({{"wall": wall, "rss_mb": rss, "cpu": time.process_time(), **more}}))
"""
BARE = COMMON + f"""
import aiohttp
async def main():
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    semaphore = asyncio.Semaphore(CONCURRENCY)
    async def one(i):
        async with semaphore:
            async with session.post(URL + "/chat/completions", json=BODY,
                                    headers={{"Authorization": "Bearer {KEY}"}}) as resp:
                return json.loads(await resp.read())["choices"][0]["message"]["content"]
    await asyncio.gather(*(one(i) for i in range(WARM)))
    start = time.perf_counter()
    answers = await asyncio.gather(*(one(i) for i in range(N)))
    wall = time.perf_counter() - start
    assert set(answers) == {{{EXPECTED!r}}}
    await session.close()
    report(wall)
asyncio.run(main())
"""
EMBER = COMMON + f"""
import os, sqlite3
import ember
from ember import _log, models
async def one(i):
    return (await models.acall({MODEL!r}, {PROMPT!r}, base_url=URL, api_key={KEY!r},
                               max_tokens=16)).text
async def main():
    await ember.aparallel(one, range(WARM), concurrency=CONCURRENCY, progress=False)
    _log.flush(60)
    start = time.perf_counter()
    answers = await ember.aparallel(one, range(N), concurrency=CONCURRENCY, progress=False)
    wall = time.perf_counter() - start
    assert set(answers) == {{{EXPECTED!r}}}
    start = time.perf_counter()
    _log.flush(60)
    flushed = time.perf_counter() - start
    with sqlite3.connect(os.path.join(os.environ["EMBER_HOME"], "usage.sqlite")) as db:
        rows = db.execute("SELECT count(*) FROM calls").fetchone()[0]
    assert rows == WARM + N, rows
    report(wall, flush=flushed)
asyncio.run(main())
"""


def sample(code: str, url: str, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", code, url], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--before", help="also run ember as it was at this git revision")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ember-in-flight-"))
    base = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    clients = {"bare aiohttp + semaphore": (BARE, base),
               "ember aparallel, log on": (EMBER, {**base, "PYTHONPATH": str(HERE.parent / "src"),
                                                   "EMBER_HOME": str(tmp / "home")})}
    if args.before:
        archive = subprocess.run(["git", "archive", args.before, "src"], cwd=HERE.parent,
                                 check=True, capture_output=True).stdout
        (tmp / "before").mkdir()
        subprocess.run(["tar", "-x", "-C", str(tmp / "before")], input=archive, check=True)
        clients[f"ember at {args.before}, log on"] = (EMBER, {
            **base, "PYTHONPATH": str(tmp / "before" / "src"), "EMBER_HOME": str(tmp / "old")})
    results: dict[str, list[dict[str, float]]] = {name: [] for name in clients}
    try:
        with FakeServer("raw", [50.0], lifetime=900) as server:
            url = server.base_url(50.0)
            names = list(clients)
            for rep in range(args.reps):
                for name in names[rep % len(names):] + names[:rep % len(names)]:
                    code, env = clients[name]
                    for log in tmp.glob("*/usage.sqlite*"):  # one run's rows in each check
                        log.unlink()
                    results[name].append(sample(code, url, env))
                    print(f"rep {rep + 1}: {name}: {results[name][-1]['wall']:.3f}s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bare = results[names[0]]
    bare_wall = statistics.median(r["wall"] for r in bare)
    bare_rss = statistics.median(r["rss_mb"] for r in bare)
    print(f"\ncpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, {args.reps} reps, "
          f"medians; ideal {N / CONCURRENCY * 0.05:.2f}s\n")
    print(f"{'client':32} {'wall s':>7} {'vs bare':>7} {'best s':>7} {'peak RSS MB':>11} "
          f"{'vs bare':>7} {'log flush s':>11}")
    for name, got in results.items():
        wall = statistics.median(r["wall"] for r in got)
        rss = statistics.median(r["rss_mb"] for r in got)
        flush = statistics.median(r.get("flush", 0.0) for r in got)
        print(f"{name:32} {wall:7.3f} {wall / bare_wall:6.2f}x {min(r['wall'] for r in got):7.3f}"
              f" {rss:11.0f} {rss / bare_rss:6.2f}x {flush:11.3f}")


if __name__ == "__main__":
    main()
