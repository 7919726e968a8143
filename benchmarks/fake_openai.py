"""A fast fake OpenAI /v1/chat/completions server for benchmarks, meant to run in its own process.

    python benchmarks/fake_openai.py [--impl raw|aiohttp] [--latency-ms 0 50] [--lifetime 600]

Listens on 127.0.0.1 only, one ephemeral port per latency given, and prints one line
``READY <latency_ms>=<port> ...`` once listening. Every POST gets the same realistic
chat.completion JSON (with usage) after the port's latency. It stops by itself when its
stdin closes (the parent exited), on SIGTERM, or after --lifetime seconds.

``raw`` is a hand-written asyncio.Protocol HTTP/1.1 keep-alive responder (about 3x the
throughput of aiohttp.web on one core, see BENCHMARKS.md); ``aiohttp`` uses aiohttp.web.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time

REPLY = json.dumps({
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{
        "index": 0,
        "message": {
            "role": "assistant",
            "content": "Hello! How can I help you today?",
            "refusal": None,
            "annotations": [],
        },
        "logprobs": None,
        "finish_reason": "stop",
    }],
    "usage": {
        "prompt_tokens": 9,
        "completion_tokens": 10,
        "total_tokens": 19,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_06737a9306",
}).encode()

RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(REPLY)).encode() + b"\r\n"
    b"Connection: keep-alive\r\n"
    b"openai-processing-ms: 1\r\n"
    b"x-request-id: req_0123456789abcdef\r\n"
    b"\r\n" + REPLY
)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"


class RawHTTP(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and pipelining; requests need a Content-Length (no chunking)."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            length = 0
            lower = head.lower()
            i = lower.find(b"\r\ncontent-length:")
            if i >= 0:
                j = lower.find(b"\r\n", i + 2)
                length = int(lower[i + 17: j if j >= 0 else len(lower)])
            total = end + 4 + length
            if len(buf) < total:
                break
            ok = head.startswith(b"POST ") and b"/chat/completions" in head[:200]
            buf = buf[total:]
            self._answer(RESPONSE if ok else NOT_FOUND)
        self.buf = buf

    def _answer(self, payload: bytes) -> None:
        if self.latency:
            self.loop.call_later(self.latency, self._write, payload)  # what asyncio.sleep does
        else:
            self._write(payload)

    def _write(self, payload: bytes) -> None:
        if self.transport is not None:
            self.transport.write(payload)


async def serve_raw(latency: float) -> tuple[asyncio.AbstractServer, int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RawHTTP(latency), "127.0.0.1", 0, backlog=1024)
    return server, server.sockets[0].getsockname()[1]


async def serve_aiohttp(latency: float) -> tuple[object, int]:
    from aiohttp import web

    async def completions(request: web.Request) -> web.Response:
        await request.read()
        if latency:
            await asyncio.sleep(latency)
        return web.Response(body=REPLY, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", choices=["raw", "aiohttp"], default="raw")
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0])
    parser.add_argument("--lifetime", type=float, default=600.0)
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.call_later(args.lifetime, stop.set)
    # the parent holds our stdin: EOF means it is gone, so stop too
    loop.add_reader(sys.stdin.fileno(), lambda: os.read(sys.stdin.fileno(), 4096) or stop.set())
    serve = serve_raw if args.impl == "raw" else serve_aiohttp
    ports = []
    for ms in args.latency_ms:
        _, port = await serve(ms / 1000)
        ports.append(f"{ms:g}={port}")
    print("READY", *ports, flush=True)
    started = time.monotonic()
    await stop.wait()
    print(f"fake server stopping after {time.monotonic() - started:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
