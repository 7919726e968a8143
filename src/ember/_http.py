"""The pooled transport: POST JSON (or read server-sent events) with timeouts and retries.

Retried, with exponential backoff and full jitter: 408, 409, 429, 5xx, connection
errors, timeouts, and a 200 whose body is truncated, not JSON, or JSON of another shape.
`retry-after-ms` and `retry-after` are honoured with jitter added (so concurrent callers
do not retry in lockstep) up to MAX_WAIT seconds; a provider that asks for longer is not
waited for; Gemini's wait comes in its error body (RetryInfo's retryDelay), honoured
alike. A timed-out attempt is retried once: a server that hangs costs two timeouts, not
four. A call's `deadline` bounds everything: attempts, waits and reading a stream.
Not retried: every other status (400, 401, 403, 404...), nor OpenAI's 429 for an exhausted
quota (`insufficient_quota`: billing). Redirects are never followed: the key goes to the
configured origin only. Connections are pooled per event loop and bounded per host (see
_pool_size), so that thousands of calls at once queue for a connection instead of running
out of file descriptors. aiohttp is imported on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import json
import math
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from . import _pace
from ._redis import safe
from ._types import Call, Json, Request
from .errors import ProviderError, ProviderTimeout, RateLimited

if TYPE_CHECKING:
    import aiohttp

__all__ = ["events", "post", "retry_delay"]

BACKOFF = 0.5  # seconds: the first retry waits up to this, doubling each time
MAX_BACKOFF = 8.0
MAX_WAIT = 60.0  # the longest retry-after ember will honour
CONNECT = 10.0  # seconds to open a connection (the SDKs allow 5): a dead host fails fast
_sessions: dict[asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, Any]] = {}


def retry_delay(attempt: int, retry_after: float | None, backoff: float | None = None) -> float:
    """Seconds to wait before retry `attempt` (0 for the first retry): full jitter, up to
    `backoff` (default BACKOFF) doubling each time; after `retry_after`, plus jitter."""
    base = BACKOFF if backoff is None else backoff
    if retry_after is not None:
        return retry_after + random.uniform(0, base + retry_after / 2)
    return random.uniform(0, min(MAX_BACKOFF, base * 2**attempt))


def _retry_after(headers: Any) -> float | None:
    """Seconds the provider asks us to wait, if it says so in a form we can read."""
    ms = headers.get("retry-after-ms")
    value, scale = (headers.get("retry-after"), 1.0) if ms is None else (ms, 0.001)
    try:
        return max(0.0, float(value) * scale) if value is not None else None
    except ValueError:
        pass
    try:  # the other form allowed by HTTP: a date
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _message(body: bytes | dict[str, Any]) -> str:
    """The provider's own words from an error body (all three put them in error.message)."""
    try:
        data = json.loads(body) if isinstance(body, bytes) else body
        error = data.get("error", data)
        return str(error.get("message") or error) if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        return body.decode(errors="replace") if isinstance(body, bytes) else str(body)


def _hints(body: bytes, wait: float | None) -> tuple[bool, float | None]:
    """From an error body: is the quota exhausted (OpenAI's insufficient_quota), and the wait
    asked for where no header said (Gemini's RetryInfo retryDelay, "22s" or "1.5s")?"""
    try:
        error = json.loads(body)["error"]
        delays = [d["retryDelay"] for d in error.get("details", []) if "retryDelay" in d]
        wait = float(delays[0].removesuffix("s")) if delays and wait is None else wait
        return "insufficient_quota" in (error.get("code"), error.get("type")), wait
    except (ValueError, LookupError, TypeError, AttributeError):
        return False, wait


def _error(req: Request, status: int | None, message: str, request_id: str | None = None,
           quota: bool = False) -> ProviderError:
    """The error to raise: the key hidden (in any case) before the message is cut."""
    if req.api_key:
        message = re.sub(re.escape(req.api_key), "***", message, flags=re.IGNORECASE)
    if quota:  # a billing matter, not a rate: RateLimited would invite waiting it out
        message = f"quota exhausted: check billing: {message}"
    kind = RateLimited if status in (429, 529) and not quota else ProviderError
    return kind(req.provider, status, message[:500], request_id)


def _timeout(call: Call, connecting: bool = False) -> ProviderTimeout:
    """What ran out, what was tried, and which setting changes it."""
    req, spent = call.request, time.perf_counter() - call.start
    if req.deadline and spent >= req.deadline:
        what = f"no whole answer within deadline={req.deadline:g}s"
    elif connecting:
        what = f"could not connect to {safe(req.base_url)} within {min(CONNECT, req.timeout):g}s"
    else:
        what = f"no answer within timeout={req.timeout:g}s of silence"
    return ProviderTimeout(req.provider, None, f"{what} ({call.retries + 1} attempt(s), "
                           f"{spent:.1f}s in all); timeout= sets the silence allowed per "
                           "attempt, deadline= the time for the whole call")


async def _close_with_loop(close: Callable[[], Awaitable[Any]]) -> AsyncIterator[None]:
    """An async generator whose cleanup closes a client (with `close`) when its loop shuts
    down (asyncio.run and friends call loop.shutdown_asyncgens() before closing a loop)."""
    try:
        yield
    finally:
        await close()


def _pool_size() -> int:
    """Connections per host: a quarter of the file descriptors this process may open, at
    most 1000; all hosts together take at most half, leaving the rest to the program."""
    soft = 4000  # where there is no such limit (not a Unix)
    with contextlib.suppress(ImportError):
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return min(1000, soft // 4) if soft > 0 else 1000  # -1: unlimited


async def per_loop(table: dict[Any, tuple[Any, Any]], make: Callable[[], Any],
                   close: str = "close") -> Any:
    """The client in `table` of the running event loop: made by `make` once per loop, and
    closed (its `close` method) when that loop shuts down; those of closed loops are dropped."""
    loop = asyncio.get_running_loop()
    if loop not in table:
        for old in [old for old in list(table) if old.is_closed()]:
            table.pop(old, None)  # another thread's loop may be dropping it too
        client = make()
        closer = _close_with_loop(getattr(client, close))
        await closer.__anext__()
        table[loop] = (client, closer)
    return table[loop][0]


def _open_session() -> aiohttp.ClientSession:
    """An event loop's pooled session (see per_loop); aiohttp imported on first use."""
    from aiohttp import ClientSession, TCPConnector

    size = _pool_size()
    return ClientSession(connector=TCPConnector(limit=2 * size, limit_per_host=size))


@functools.lru_cache(maxsize=256)  # a call without a deadline takes the one for its timeout
def _timeouts(total: float | None, silence: float) -> aiohttp.ClientTimeout:
    import aiohttp

    return aiohttp.ClientTimeout(total=total, sock_connect=min(CONNECT, silence), sock_read=silence)


async def post(call: Call, url: str, headers: dict[str, str], body: dict[str, Any],
               stream: bool = False, decode: Any = None) -> Any:
    """POST `body` as JSON, with retries: the JSON answer of a 200, passed through `decode`
    if given (an answer it cannot read is retried like a truncated one), or with
    `stream=True` the open response to read events from."""
    import aiohttp

    req, session = call.request, await per_loop(_sessions, _open_session)
    timeouts = 0  # a server that hangs gets a second chance, not a fourth
    for attempt in range(req.retries + 1):
        await _pace.wait(call, body)  # every attempt waits for its turn: the provider counts it
        call.start = call.start or time.perf_counter()  # latency: from the first attempt sent
        end = call.start + req.deadline if req.deadline else math.inf
        wait = None
        timeout = _timeouts(req.deadline and end - time.perf_counter(), req.timeout)
        try:
            resp = await session.post(url, json=body, headers=headers, timeout=timeout,
                                      allow_redirects=False)
            wait = _retry_after(resp.headers)
            call.request_id = resp.headers.get("x-request-id") or resp.headers.get("request-id")
            answer = b"" if resp.status == 200 and stream else await resp.read()
            quota, wait = _hints(answer, wait) if resp.status != 200 else (False, wait)
            await _pace.learn(req, resp.status, resp.headers, wait)
            call.rate_limited += resp.status == 429
            if resp.status == 200 and stream:
                return resp
            if resp.status == 200:
                try:  # not contextlib.suppress: that costs every call 0.3 µs
                    return decode(json.loads(answer)) if decode else json.loads(answer)
                except (ValueError, LookupError, TypeError, AttributeError):
                    error = _error(req, 200, "the answer was cut short or was not valid JSON "
                                   f"of the expected shape; it began: {answer[:200]!r}",
                                   call.request_id)
            else:  # a redirect is not followed: that would send the key elsewhere
                error = _error(req, resp.status, _message(answer) if resp.status >= 400 else
                               f"redirected to {resp.headers.get('Location')}, not followed",
                               call.request_id, quota)
                retriable = not quota and (resp.status in (408, 409, 429) or resp.status >= 500)
                if not retriable or (wait is not None and wait > MAX_WAIT):
                    raise error
        except TimeoutError as exc:
            error = _timeout(call, isinstance(exc, aiohttp.ConnectionTimeoutError))
            timeouts += 1
        except aiohttp.ClientError as exc:
            hint = " (is Ollama running? set OLLAMA_BASE_URL)" if req.provider == "ollama" else ""
            error = _error(req, None, f"{type(exc).__name__}: {exc}{hint}")
        delay = retry_delay(attempt, wait)
        if attempt == req.retries or timeouts == 2 or time.perf_counter() + delay >= end:
            raise error
        call.retries += 1
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # the last attempt returns or raises


async def events(call: Call, url: str, headers: dict[str, str], body: Json) -> AsyncIterator[Json]:
    """POST `body` and yield the JSON data of each server-sent event, until [DONE] or EOF.
    Only opening the stream is retried: once text has arrived, a failure is raised."""
    import aiohttp

    req, resp = call.request, await post(call, url, headers, body, stream=True)
    lines: list[str] = []
    try:
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("data:"):
                lines.append(line[5:].removeprefix(" "))
            elif not line and lines:
                payload, lines = "\n".join(lines), []
                if payload == "[DONE]":
                    return
                data = json.loads(payload)
                if "error" in data:  # an error event, in each provider's shape
                    raise _error(req, None, _message(data), call.request_id)
                yield data
    except TimeoutError:
        raise _timeout(call) from None
    except (aiohttp.ClientError, ValueError) as exc:
        raise _error(req, None, f"stream broke: {type(exc).__name__}: {exc}",
                     call.request_id) from None
    finally:
        resp.release()
