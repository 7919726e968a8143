"""Pacing: 200 calls at 20 concurrent against a fake OpenAI server that admits 10 a second.

    python benchmarks/pacing.py        # about 65 s: three runs of about 20 s

The server runs in a thread of this process, on 127.0.0.1 only. It admits 10 requests a
second, as a bucket of 10 refilled continuously (a limit of 600 a minute enforced over
short windows, as OpenAI does). Every answer carries OpenAI's headers: x-ratelimit-limit-
requests (600), x-ratelimit-remaining-requests (what is left in the bucket) and
x-ratelimit-reset-requests (the time until the bucket is full, as '300ms' or '1s'). A
refused request gets a 429 with OpenAI's error body, retry-after-ms (the time until one
request is admitted) and retry-after (the same, in whole seconds). Every run gets a fresh
server: a full bucket, and a new port (so ember learns nothing from an earlier run).

The runs, each 200 calls that must all succeed:
 1. bare aiohttp: 20 tasks post in a loop; a task given a 429 sleeps for its retry-after-ms
    and tries again (what a careful user of a bare client writes);
 2. ember with nothing configured: `parallel(fn, range(200), concurrency=20)`, fn calling
    `models(...)` on parallel's worker threads;
 3. the same after `limit("openai", rpm=600)`.
Goals: ember unconfigured at least 9.5 calls/s and at most 10 429s; with the limit, 0 429s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

RATE = 10.0  # requests a second
CALLS, CONCURRENCY = 200, 20
MODEL = "gpt-4o-mini"
REPLY = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 1741570283,
         "model": "gpt-4o-mini-2024-07-18",
         "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                      "message": {"role": "assistant", "content": "Hello!", "refusal": None}}],
         "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}
REFUSAL = {"error": {"message": "Rate limit reached for gpt-4o-mini in organization org-bench "
                                "on requests per min (RPM): Limit 600, Used 600, Requested 1.",
                     "type": "requests", "param": None, "code": "rate_limit_exceeded"}}


class LimitedServer:
    """A fake /v1/chat/completions that admits RATE requests a second, in a thread."""

    def __init__(self) -> None:
        self.bucket, self.filled = RATE, time.monotonic()
        self.ok = self.refused = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"  # type: ignore[union-attr]
        ready.set()
        self.loop.run_forever()

    def _said(self) -> dict[str, str]:
        full = (RATE - self.bucket) / RATE  # seconds until the bucket is full again
        reset = f"{full * 1000:.0f}ms" if full < 1 else f"{full:g}s"
        return {"x-ratelimit-limit-requests": str(int(RATE * 60)),
                "x-ratelimit-remaining-requests": str(int(self.bucket)),
                "x-ratelimit-reset-requests": reset}

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        now = time.monotonic()
        self.bucket = min(RATE, self.bucket + (now - self.filled) * RATE)
        self.filled = now
        if self.bucket < 1:
            self.refused += 1
            wait = (1 - self.bucket) / RATE
            headers = self._said() | {"retry-after-ms": f"{wait * 1000:.0f}",
                                      "retry-after": str(math.ceil(wait))}
            return web.json_response(REFUSAL, status=429, headers=headers)
        self.bucket -= 1
        self.ok += 1
        return web.json_response(REPLY, headers=self._said())

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)


@contextlib.contextmanager
def server() -> Iterator[LimitedServer]:
    srv = LimitedServer()
    try:
        yield srv
    finally:
        srv.close()


async def bare(url: str) -> None:
    """20 tasks posting in a loop with one aiohttp session, honouring retry-after-ms."""
    import aiohttp

    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 16}
    headers = {"Authorization": "Bearer sk-bench"}
    todo = iter(range(CALLS))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            for _ in todo:
                while True:
                    async with session.post(f"{url}/chat/completions", json=body,
                                            headers=headers) as resp:
                        data = json.loads(await resp.read())
                        if resp.status == 200:
                            assert data["choices"][0]["message"]["content"] == "Hello!"
                            break
                        await asyncio.sleep(float(resp.headers["retry-after-ms"]) / 1000)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def ember_run(url: str) -> None:
    from ember import models, parallel

    def call(i: int) -> str:
        return models(MODEL, "Say hi", base_url=url, api_key="sk-bench", max_tokens=16).text

    texts = parallel(call, range(CALLS), concurrency=CONCURRENCY, progress=False)
    assert texts == ["Hello!"] * CALLS


def measure(name: str, run: Any) -> dict[str, Any]:
    with server() as srv:
        start = time.perf_counter()
        run(srv.url)
        wall = time.perf_counter() - start
    row = {"client": name, "ok": srv.ok, "429s": srv.refused, "wall_s": round(wall, 2),
           "calls_per_s": round(CALLS / wall, 2)}
    print(f"{name:<34} ok {srv.ok:>3}   429s {srv.refused:>4}   wall {wall:6.2f} s   "
          f"{CALLS / wall:5.2f} calls/s", flush=True)
    return row


def main() -> None:
    home = tempfile.mkdtemp(prefix="ember-bench-")
    os.environ["EMBER_HOME"] = home  # the usage log goes here, never to ~/.ember
    for name in ("EMBER_LOG", "EMBER_LOG_PROMPTS", "OPENAI_BASE_URL"):
        os.environ.pop(name, None)
    from ember import limit

    print(f"{CALLS} calls, {CONCURRENCY} concurrent; the server admits {RATE:g} a second "
          f"(bucket of {RATE:g}); Python {sys.version.split()[0]}")
    rows = [measure("bare aiohttp (honours retry-after)", lambda url: asyncio.run(bare(url))),
            measure("ember, nothing configured", ember_run)]
    limit("openai", rpm=600)
    rows.append(measure('ember, limit("openai", rpm=600)', ember_run))
    unconfigured, limited = rows[1], rows[2]
    goals = {"200 ok": all(row["ok"] == CALLS for row in rows),
             ">= 9.5 calls/s unconfigured": unconfigured["calls_per_s"] >= 9.5,
             "<= 10 429s unconfigured": unconfigured["429s"] <= 10,
             "0 429s with the limit": limited["429s"] == 0}
    for goal, met in goals.items():
        print(f"  {'met' if met else 'MISSED'}: {goal}")
    with contextlib.suppress(OSError):
        import shutil

        shutil.rmtree(home)


if __name__ == "__main__":
    main()
