"""Reliability under load and time (issue 11), measured against fake servers on 127.0.0.1.

    python benchmarks/reliability.py                 # all four cases, about 2 minutes
    python benchmarks/reliability.py --case many     # or long, dead, ctrl-c

1. many: 10,000 calls at once (one `gather`) in a fresh process whose file-descriptor limit is
   1024 (`ulimit -n 1024`, set with setrlimit), server latency 50 ms. For ember (defaults,
   usage log on) and for bare aiohttp: calls that succeeded, log rows written (ember), wall
   time, and peak RSS (ru_maxrss) next to the RSS after one warm-up call. Bare aiohttp runs
   twice: with its default pool (TCPConnector limit=100) and with limit=0, the unbounded pool
   ember had before (it ran out of descriptors). The fake server (benchmarks/fake_openai.py)
   runs in its own process with the machine's limit.
2. long: a server that stays silent for 45 s, then answers (a reasoning model that thinks
   before its first byte, non-streaming). ember's defaults and the openai SDK's defaults, at
   once: wall time and the requests the server received (each one would be billed).
3. dead: a server that never accepts (its listen queue full), with ember's defaults: the
   error and how long it took. A server that accepts and never answers costs two timeouts,
   2 x 600 s by default; that case is run with timeout=5 to keep the run short.
4. ctrl-c: `parallel(sync_fn, range(40), concurrency=8)` in a fresh process, each item one
   call, against a server that answers after 10 s and against one that never answers (with
   timeout=2, so attempts are retried while it runs); SIGINT once 8 requests have arrived:
   seconds until the process is gone, requests the server got after the SIGINT (within 3 s
   more), and the tracebacks printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import KEY, MAX_TOKENS, MODEL, PROMPT, FakeServer  # noqa: E402
from fake_openai import REPLY  # noqa: E402

N, LIMIT, LATENCY_MS, SILENCE = 10_000, 1024, 50.0, 45.0

CHILD = """
import asyncio, json, resource, sqlite3, sys, time
from pathlib import Path
client, url, n, limit, key, model, prompt, max_tokens = sys.argv[1:]
n, limit, max_tokens = int(n), int(limit), int(max_tokens)
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

def rss_mb():
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20

async def main():
    if client == "ember":
        from ember import gather, models
        async def one():
            r = await models.acall(model, prompt, base_url=url, api_key=key, max_tokens=max_tokens)
            return r.text
        async def many(k):
            return await gather(*(one() for _ in range(k)), errors="return")
    else:
        import aiohttp
        pool = int(client.split("=")[1])
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=pool))
        body = {"model": model, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens}
        async def one():
            async with session.post(url + "/chat/completions", json=body,
                                    headers={"Authorization": f"Bearer {key}"}) as resp:
                return json.loads(await resp.read())["choices"][0]["message"]["content"]
        async def many(k):
            return await asyncio.gather(*(one() for _ in range(k)), return_exceptions=True)
    await many(1)  # warm-up: session, imports, price data
    before = rss_mb()
    start = time.perf_counter()
    results = await many(n)
    wall = time.perf_counter() - start
    errors = [r for r in results if isinstance(r, BaseException)]
    rows = None
    if client == "ember":
        from ember import _log
        from ember._sqlite import home
        _log.flush(120)
        try:
            with sqlite3.connect(home() / "usage.sqlite") as db:
                rows = db.execute("SELECT count(*) FROM calls").fetchone()[0] - 1  # not warm-up
        except sqlite3.OperationalError:  # the log was never written
            rows = 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"ok": n - len(errors), "rows": rows, "wall": wall, "rss_before": before,
                      "rss_peak": peak, "error": repr(errors[0])[:160] if errors else None}))
    if client != "ember":
        await session.close()

asyncio.run(main())
"""


def many() -> list[dict[str, Any]]:
    rows = []
    with FakeServer("raw", [LATENCY_MS], lifetime=900) as server, \
            tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "EMBER_HOME": home}
        env.pop("EMBER_LOG", None)
        for client in ("ember", "aiohttp limit=100", "aiohttp limit=0"):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, client, server.base_url(LATENCY_MS), str(N),
                 str(LIMIT), KEY, MODEL, PROMPT, str(MAX_TOKENS)],
                env=env, capture_output=True, text=True, timeout=600, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"{client} failed:\n{out.stderr[-3000:]}")
            rows.append({"client": client, **json.loads(out.stdout.splitlines()[-1])})
    return rows


class Silent:
    """A fake chat/completions server that waits `silence` seconds before its answer and
    counts the requests it receives."""

    def __init__(self, silence: float) -> None:
        self.silence, self.requests = silence, 0
        ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        from aiohttp import web

        async def answer(request: web.Request) -> web.Response:
            self.requests += 1
            await request.read()
            await asyncio.sleep(self.silence)
            return web.Response(body=REPLY, content_type="application/json")

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/v1/chat/completions", answer)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"  # type: ignore[union-attr]

        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(start())
        ready.set()
        self.loop.run_forever()


async def timed(name: str, server: Silent | None, call: Any) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        text, error = await call(), None
    except Exception as exc:  # reported, not raised: the figures are the point
        text, error = None, f"{type(exc).__name__}: {exc}"
    return {"client": name, "wall": time.perf_counter() - start,
            "requests": server.requests if server else "-",
            "answered": text is not None, "error": error}


def long() -> list[dict[str, Any]]:
    from openai import AsyncOpenAI

    from ember import models

    servers = {"ember (defaults)": Silent(SILENCE), "openai SDK (defaults)": Silent(SILENCE)}

    async def ember_call() -> str:
        url = servers["ember (defaults)"].url
        return (await models.acall(MODEL, PROMPT, base_url=url, api_key=KEY)).text

    async def openai_call() -> str:
        client = AsyncOpenAI(base_url=servers["openai SDK (defaults)"].url, api_key=KEY)
        done = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}])
        return done.choices[0].message.content or ""

    async def both() -> list[dict[str, Any]]:
        return list(await asyncio.gather(
            timed("ember (defaults)", servers["ember (defaults)"], ember_call),
            timed("openai SDK (defaults)", servers["openai SDK (defaults)"], openai_call)))

    return asyncio.run(both())


def dead() -> list[dict[str, Any]]:
    from ember import models

    results = []
    with socket.socket() as listener, contextlib.ExitStack() as queued:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        for _ in range(3):  # fill its accept queue: later connections are never accepted
            sock = queued.enter_context(socket.socket())
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(listener.getsockname())
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        silent = Silent(3600)
        for name, kwargs in [("never accepts (defaults)", {"base_url": url}),
                             ("accepts, never answers (timeout=5)",
                              {"base_url": silent.url, "timeout": 5})]:
            server = silent if "timeout" in kwargs else None  # never accepted: none arrive

            async def call(kwargs: dict[str, Any] = kwargs) -> str:
                return (await models.acall(MODEL, PROMPT, api_key=KEY, **kwargs)).text

            results.append(asyncio.run(timed(name, server, call)))
    return results


CTRL_C = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
from ember import models, parallel
url, timeout = sys.argv[1], float(sys.argv[2])
parallel(lambda i: models("gpt-4o-mini", f"q{i}", base_url=url, api_key="k", timeout=timeout),
         range(40), concurrency=8, progress=False)
"""


def ctrl_c() -> list[dict[str, Any]]:
    import signal

    rows = []
    for name, silence, timeout in [("answers after 10 s", 10.0, 600.0),
                                   ("never answers (timeout=2)", 3600.0, 2.0)]:
        server = Silent(silence)
        with tempfile.TemporaryDirectory() as home:
            child = subprocess.Popen([sys.executable, "-c", CTRL_C, server.url, str(timeout)],
                                     env={**os.environ, "EMBER_HOME": home},
                                     stderr=subprocess.PIPE, text=True)
            while server.requests < 8:
                time.sleep(0.01)
            sent, start = server.requests, time.perf_counter()
            child.send_signal(signal.SIGINT)
            _, err = child.communicate(timeout=60)
            gone = time.perf_counter() - start
            time.sleep(3)
        rows.append({"server": name, "exit s": gone, "requests after": server.requests - sent,
                     "tracebacks": err.count("Traceback")})
    return rows


def show(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n## {title}\n")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        cells = [f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=["many", "long", "dead", "ctrl-c"], action="append")
    cases = parser.parse_args().case or ["many", "long", "dead", "ctrl-c"]
    with tempfile.TemporaryDirectory() as home:
        os.environ["EMBER_HOME"] = home  # the long and dead cases log here, not in ~/.ember
        if "many" in cases:
            show(f"many: {N:,} calls at once, ulimit -n {LIMIT}, {LATENCY_MS:g} ms latency "
                 "(wall s, RSS MB)", many())
        if "long" in cases:
            show(f"long: the server silent {SILENCE:g} s, then answering (wall s)", long())
        if "dead" in cases:
            show("dead servers (wall s)", dead())
        if "ctrl-c" in cases:
            show("ctrl-c during parallel(sync_fn, ...)", ctrl_c())


if __name__ == "__main__":
    main()
