"""The pooled transport: POST JSON (or read server-sent events) with timeouts and retries.

Retried, with exponential backoff and full jitter: 408, 409, 429, 5xx, connection
errors, timeouts, and a 200 whose body is truncated or not JSON. `retry-after-ms` and
`retry-after` are honoured with jitter added (so concurrent callers do not retry in
lockstep) up to MAX_WAIT seconds; a provider that asks for longer is not waited for.
A timed-out attempt is retried once: a server that hangs costs two timeouts, not four.
Not retried: every other status (400, 401, 403, 404...). aiohttp is imported on first use.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from . import _pace
from ._types import Call, Json, Request
from .errors import ProviderError, ProviderTimeout, RateLimited

if TYPE_CHECKING:
    import aiohttp

__all__ = ["events", "post", "retry_delay"]

BACKOFF = 0.5  # seconds: the first retry waits up to this, doubling each time
MAX_BACKOFF = 8.0
MAX_WAIT = 60.0  # the longest retry-after ember will honour
_sessions: dict[asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, Any]] = {}


def retry_delay(attempt: int, retry_after: float | None) -> float:
    """Seconds to wait before retry `attempt` (0 for the first retry)."""
    if retry_after is not None:
        return retry_after + random.uniform(0, BACKOFF + retry_after / 2)
    return random.uniform(0, min(MAX_BACKOFF, BACKOFF * 2**attempt))


def _retry_after(headers: Any) -> float | None:
    """Seconds the provider asks us to wait, if it says so in a form we can read."""
    if "retry-after-ms" in headers:
        value, scale = headers["retry-after-ms"], 0.001
    else:
        value, scale = headers.get("retry-after"), 1.0
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
        return body.decode(errors="replace")[:500] if isinstance(body, bytes) else str(body)


def _error(req: Request, status: int | None, message: str) -> ProviderError:
    if req.api_key:
        message = message.replace(req.api_key, "***")
    kind = RateLimited if status in (429, 529) else ProviderError
    return kind(req.provider, status, message)


async def _close_with_loop(session: aiohttp.ClientSession) -> AsyncIterator[None]:
    """An async generator whose cleanup closes the session when its loop shuts down
    (asyncio.run and friends call loop.shutdown_asyncgens() before closing a loop)."""
    try:
        yield
    finally:
        await session.close()


async def _session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    if loop not in _sessions:
        import aiohttp

        for old in [old for old in _sessions if old.is_closed()]:
            del _sessions[old]
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        closer = _close_with_loop(session)
        await closer.__anext__()
        _sessions[loop] = (session, closer)
    return _sessions[loop][0]


async def post(call: Call, url: str, headers: dict[str, str], body: dict[str, Any],
               stream: bool = False) -> Any:
    """POST `body` as JSON, with retries: the decoded JSON answer (a 200), or with
    `stream=True` the open response to read events from."""
    import aiohttp

    req, session = call.request, await _session()
    timeout = aiohttp.ClientTimeout(sock_connect=req.timeout, sock_read=req.timeout)
    timeouts = 0  # a server that hangs gets a second chance, not a fourth
    for attempt in range(req.retries + 1):
        await _pace.wait(call, body)  # every attempt waits for its turn: the provider counts it
        call.start = call.start or time.perf_counter()  # latency: from the first attempt sent
        wait = None
        try:
            resp = await session.post(url, json=body, headers=headers, timeout=timeout)
            wait = _retry_after(resp.headers)
            _pace.learn(req, resp.status, resp.headers, wait)
            if resp.status == 200:
                return resp if stream else json.loads(await resp.read())
            error = _error(req, resp.status, _message(await resp.read()))
            retriable = resp.status in (408, 409, 429) or resp.status >= 500
            if not retriable or (wait is not None and wait > MAX_WAIT):
                raise error
        except TimeoutError:
            error = ProviderTimeout(req.provider, None, f"no answer within {req.timeout}s")
            timeouts += 1
        except json.JSONDecodeError:
            error = _error(req, 200, "the answer was cut short or was not valid JSON")
        except aiohttp.ClientError as exc:
            error = _error(req, None, f"{type(exc).__name__}: {exc}")
        if attempt == req.retries or timeouts == 2:
            raise error
        call.retries += 1
        await asyncio.sleep(retry_delay(attempt, wait))
    raise AssertionError("unreachable")


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
                    raise _error(req, None, _message(data))
                yield data
    except TimeoutError:
        raise ProviderTimeout(req.provider, None, f"stream stalled for {req.timeout}s") from None
    except (aiohttp.ClientError, ValueError) as exc:
        raise _error(req, None, f"stream broke: {type(exc).__name__}: {exc}") from None
    finally:
        resp.release()
