"""Pacing: `limit(target, rpm=, tpm=, concurrency=)`, and limits learned from providers.

Every call waits for its turn before it is sent. Turns are spaced (virtual scheduling, as
in GCRA): a call may start 60/rpm seconds after the one before it, and 60/tpm seconds per
token of the one before it, so no window of any length sees more than its share plus one
call. A call's tokens are estimated before it is sent (request bytes / 4, plus max_tokens)
and corrected by its actual usage when it ends. Each retry of the transport takes a turn
too (a retry is a request the provider counts), but keeps the call's place in
`concurrency`. `concurrency` places are one count for the whole process: calls from any
thread and any event loop wait in one line, and a place freed is handed to the next in
line on that caller's own loop; a caller cancelled while waiting leaves no place taken.

With nothing configured, ember paces each model of a paid provider by what the provider
says in its answers: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (OpenAI;
resets as '1s', '6m0s', '20ms') and `anthropic-ratelimit-{requests,tokens}-{limit,
remaining,reset}` (Anthropic; resets in RFC 3339). Once less than half of a per-minute
limit remains, calls are paced at that limit; when none remains, every call waits for
the reset; a 429's `retry-after` holds every call to the model, not only the refused one.
Pauses longer than MAX_PAUSE are not waited for (the provider's 429 then reaches the
caller, as in the transport). Local providers ('local', 'ollama') are paced only as
configured.

Left out: a cold-start probe. Before a model's first answer nothing is known of its
limits, so the first wave of calls (at most the caller's concurrency) goes unpaced; a
refused one is retried after its retry-after while the others wait with it. Holding every
call until the first answer instead would cost each run a whole call's latency. Also left
out: limits shared between processes (the Redis backend), and input/output token limits
counted apart (Anthropic's tokens headers give the tightest, which ember follows).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from . import providers
from ._prices import FREE
from ._spend import max_out
from ._types import Call, Json, Request
from .errors import ConfigError

if TYPE_CHECKING:
    import asyncio

__all__ = ["again", "learn", "limit", "turn"]

MAX_PAUSE = 60.0  # seconds: the longest pause a provider may ask of every call (as _http's)
KINDS = ("requests", "tokens")
_lock = threading.Lock()  # guards every limit: they are shared by threads and event loops
_configured: dict[str, Limit] = {}
_learned: dict[tuple[str, str, str], Limit] = {}


class Places:
    """`size` places for calls in flight, one count for every thread and event loop."""

    def __init__(self, size: int) -> None:
        self.size, self.used = size, 0
        self.line: deque[asyncio.Future[None]] = deque()  # callers waiting, first come first

    async def acquire(self) -> None:
        import asyncio

        with _lock:
            if self.used < self.size:
                self.used += 1
                return
            waiter = asyncio.get_running_loop().create_future()
            self.line.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            with _lock:
                waiting = waiter in self.line
                if waiting:
                    self.line.remove(waiter)
            if not waiting and not waiter.cancelled():  # handed a place as it was cancelled
                self.release()
            raise

    def release(self) -> None:
        with _lock:
            if not self.line:
                self.used -= 1
                return
            waiter = self.line.popleft()  # the place passes to it: `used` stays the same
        try:
            waiter.get_loop().call_soon_threadsafe(self._hand, waiter)
        except RuntimeError:  # its loop is closed: the next in line gets the place
            self.release()

    def _hand(self, waiter: asyncio.Future[None]) -> None:
        if waiter.cancelled():  # its caller gave up meanwhile
            self.release()
        else:
            waiter.set_result(None)


class Limit:
    """The pace of one target: configured, or learned from its provider's answers."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None,
                 concurrency: int | None = None) -> None:
        self.per_minute: dict[str, float | None] = {"requests": rpm, "tokens": tpm}
        self.next = {"requests": 0.0, "tokens": 0.0}  # time.monotonic() a call may start at
        self.paused = 0.0  # time.monotonic() when the provider last asked for a pause
        self.places = Places(concurrency) if concurrency else None

    def pause(self, seconds: float, now: float) -> None:
        """Hold every call, those already waiting for a turn included, `seconds` from now."""
        if seconds <= MAX_PAUSE:
            self.paused = now
            for kind in KINDS:
                self.next[kind] = max(self.next[kind], now + seconds)


def limit(target: str, rpm: float | None = None, tpm: float | None = None,
          concurrency: int | None = None) -> None:
    """Pace every call to `target`, a provider ('openai') or a model ('gpt-4o-mini'):
    at most `rpm` requests and `tpm` tokens a minute, and `concurrency` at once. Calling
    it again replaces the target's limits (calls already waiting keep the old ones); with
    no numbers, removes them. Limits learned from the provider apply as well."""
    for name, value in (("rpm", rpm), ("tpm", tpm), ("concurrency", concurrency)):
        kind = int if name == "concurrency" else (int, float)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)
                                  or not 0 < value < math.inf):
            whole = "whole " if kind is int else ""
            raise ConfigError(f"limit({target!r}): {name}= takes a positive {whole}number, "
                              f"or None for no limit; not {value!r}")
    key = target if target in providers.PROVIDERS else "/".join(providers.resolve(target))
    if rpm is None and tpm is None and concurrency is None:
        _configured.pop(key, None)
    else:
        _configured[key] = Limit(rpm, tpm, concurrency)


def _limits(req: Request) -> list[Limit]:
    """The limits of a call: its provider's and its model's, and what its provider said."""
    found = [_configured.get(req.provider), _configured.get(f"{req.provider}/{req.model}")]
    if req.provider not in FREE:  # a server on the user's own machine says nothing
        found.append(_learned.setdefault((req.base_url, req.provider, req.model), Limit()))
    return [each for each in found if each is not None]


def _tokens(limits: list[Limit], body: Json) -> int:
    """The call's estimated tokens, when a limit counts them."""
    if not any(each.per_minute["tokens"] for each in limits):
        return 0
    return len(json.dumps(body)) // 4 + (max_out(body) or 0)


async def _wait(call: Call, limits: list[Limit], tokens: int) -> None:
    """Take the next turn under every limit and wait for it; take another if the provider
    asked for a pause meanwhile."""
    import asyncio

    charges = {"requests": 1, "tokens": tokens}
    while True:
        with _lock:
            now = time.monotonic()
            start = max([now, *(at for each in limits for at in each.next.values())])
            for each in limits:
                for kind, per_minute in each.per_minute.items():
                    if per_minute:
                        each.next[kind] = start + 60 * charges[kind] / per_minute
        if start == now:
            return
        call.waited += start - now
        await asyncio.sleep(start - now)
        if all(each.paused < now for each in limits):
            return


@contextlib.asynccontextmanager
async def turn(call: Call, body: Json) -> AsyncIterator[None]:
    """Hold a place under every `concurrency` that applies, then wait for the call's turn;
    when the call ends, give the limits back the tokens it was charged but did not use."""
    limits, held, asked = _limits(call.request), list[Places](), time.monotonic()
    tokens = _tokens(limits, body)
    try:
        for places in [each.places for each in limits if each.places]:
            await places.acquire()
            held.append(places)
        call.waited += time.monotonic() - asked
        await _wait(call, limits, tokens)
        yield
    finally:
        for places in held:
            places.release()
    if call.response is not None and tokens:
        used = call.response.usage.input_tokens + call.response.usage.output_tokens
        with _lock:
            for each in limits:
                if tpm := each.per_minute["tokens"]:
                    each.next["tokens"] -= 60 * (tokens - used) / tpm


async def again(call: Call, body: Json) -> None:
    """A retry's turn (its place in `concurrency` is still held)."""
    limits = _limits(call.request)
    await _wait(call, limits, _tokens(limits, body))


def _seconds(reset: str) -> float:
    """Seconds to a reset given as OpenAI does ('1s', '6m0s', '20ms') or Anthropic (RFC 3339)."""
    if "T" in reset:
        return datetime.datetime.fromisoformat(reset).timestamp() - time.time()
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}
    return sum(float(n) * units[unit] for n, unit in re.findall(r"([\d.]+)(ms|s|m|h|)", reset))


def _reported(headers: Mapping[str, str], kind: str) -> tuple[float, float, float] | None:
    """(limit, remaining, seconds to reset) of `kind`, from OpenAI's or Anthropic's headers."""
    for form in ("x-ratelimit-{}-" + kind, "anthropic-ratelimit-" + kind + "-{}"):
        limit, left, reset = (headers.get(form.format(part)) for part in
                              ("limit", "remaining", "reset"))
        if limit and left and reset:
            with contextlib.suppress(ValueError):
                return float(limit), float(left), _seconds(reset)
    return None


def learn(req: Request, status: int, headers: Mapping[str, str],
          retry_after: float | None) -> None:
    """Learn the model's pace from one answer's rate-limit headers and status."""
    if req.provider in FREE:
        return
    learned = _learned.setdefault((req.base_url, req.provider, req.model), Limit())
    with _lock:
        now = time.monotonic()
        for kind in KINDS:
            if (found := _reported(headers, kind)) is None:
                continue
            most, left, reset = found
            paced = most if 0 <= left < most / 2 else None
            if paced and not learned.per_minute[kind]:  # pacing starts: a turn from now
                learned.next[kind] = max(learned.next[kind], now + 60 / paced)
            learned.per_minute[kind] = paced
            if left == 0:
                learned.pause(reset, now)
        if status == 429 and retry_after is not None:
            learned.pause(retry_after, now)
