"""Pacing: `limit(target, rpm=, tpm=, concurrency=)`, and limits learned from providers.

Every request waits for its turn before it is sent; the transport asks for one before
each attempt (a retry is a request the provider counts). Turns are reserved in order and
spaced (virtual scheduling, as in GCRA): one may start 60/rpm seconds after the one before
it, and 60/tpm seconds per token of the one before it, so no window of any length sees
more than its share plus one call. A call's tokens are estimated before it is sent
(request bytes / 4, plus max_tokens) and corrected by its actual usage when it ends.
`concurrency` places are held by the whole call (its retries and its stream included) and
are one count for the process: calls from any thread and any event loop wait in one line
on thread-safe Futures; a caller cancelled while waiting leaves no place taken.

With nothing configured, ember paces each model of a paid provider by what the provider
says in its answers: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (OpenAI;
resets as '1s', '6m0s', '20ms') and `anthropic-ratelimit-{requests,tokens}-{limit,
remaining,reset}` (Anthropic; resets in RFC 3339). Once less than half of a per-minute
limit remains, calls are paced at that limit (the first of them a turn after the answer
that said so); when none remains, every call waits for the reset; a 429's `retry-after`
holds every call to the model, not only the refused one. Calls already waiting when such
a pause is asked for take a new turn after it. Pauses longer than MAX_PAUSE are not
waited for (the provider's 429 then reaches the caller, as in the transport). Local
providers ('local', 'ollama') are paced only as configured; the embedded model sends no
HTTP request, so only `concurrency` applies to it.

With `shared=` a Redis URL, a limit is one for every process and machine that names it:
its turns are taken in Redis (one round trip, see _redis.PACE), after the call's turn under
the limits of its own process, and the limits learned from a provider's answers for a call
under a shared limit are kept there too (a pause is told to Redis as soon as it is learned).
A shared `concurrency` is one count for them all too (see SharedPlaces: a round trip to
take a place, one to give it back); a shared limit of `concurrency` alone shares no rate,
nor what is learned. While Redis is lost, a call under a shared limit
fails closed: it raises an EmberError naming the server, unsent (pacing each process alone
would let N processes go N times the rate: the 429 storm that sharing is for). A pause
learned by another process reaches a call that has already taken its turn only through the
provider's 429.

Left out: a cold-start probe. Before a model's first answer nothing is known of its
limits, so the first wave of calls (at most the caller's concurrency) goes unpaced; a
refused one is retried after its retry-after while the others wait with it. Holding every
call until the first answer would cost each run a whole call's latency. Also left out:
an event loop blocked for longer than a turn lets the calls it held back go together;
shared limits of one call on two Redis servers (the first one's takes them all); a shared
tpm corrected by a call's real usage (it keeps the estimate: one round trip less); the turns
of a shared limit that a stricter limit of the process skips, which go unused; input and
output token limits counted apart (Anthropic's tokens headers give the tightest, which ember
follows).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from . import _redis, providers
from ._prices import FREE
from ._spend import max_out
from ._types import Call, Json, Request, number
from .errors import ConfigError, EmberError

if TYPE_CHECKING:
    from concurrent.futures import Future

__all__ = ["learn", "limit", "turn", "wait"]

POLL = 0.05  # seconds at most between asks for a place under a shared concurrency
MAX_PAUSE = 60.0  # seconds: the longest pause a provider may ask of every call (as _http's)
PARTS = ("limit", "remaining", "reset")
HEADERS = {kind: [[f"x-ratelimit-{part}-{kind}" for part in PARTS],  # OpenAI's names
                  [f"anthropic-ratelimit-{kind}-{part}" for part in PARTS]]  # Anthropic's
           for kind in ("requests", "tokens")}
FIRST = [names[0] for kind in HEADERS.values() for names in kind]  # sent by each, if any
_lock = threading.Lock()  # guards every limit: they are shared by threads and event loops
_configured: dict[str, Limit] = {}
_learned: dict[tuple[str, str, str], Limit] = {}


class Places:
    """`size` places for calls in flight, one count for every thread and event loop. A
    caller waits in line on a thread-safe Future, which its own loop awaits."""

    def __init__(self, size: int) -> None:
        self.free = self.size = size
        self.line: list[Future[None]] = []  # first come, first served

    async def acquire(self) -> Any:
        import asyncio  # on first use, as concurrent.futures: `import ember` stays light
        from concurrent.futures import Future

        with _lock:
            if self.free:
                self.free -= 1
                return
            waiter = Future[None]()
            self.line.append(waiter)
        try:
            await asyncio.wrap_future(waiter)
        except asyncio.CancelledError:
            if not waiter.cancel():  # too late: the place was handed to it, so pass it on
                await Places.release(self)
            raise

    async def release(self, place: Any = None) -> None:
        with _lock:
            while self.line:
                waiter = self.line.pop(0)
                if waiter.set_running_or_notify_cancel():  # False: it was cancelled
                    waiter.set_result(None)
                    return
            self.free += 1


class SharedPlaces(Places):
    """`size` places for every process that names the limit, held in Redis as a shared
    budget's holds are (leased, renewed, see _redis.RESERVE): a place is a hold of one under
    a cap of `size`. A call first takes one of its own process's `size` places (so no more
    than `size` of them ask Redis), then asks Redis again, POLL seconds apart at most, until
    a place is free: across processes, the line is not first come, first served."""

    def __init__(self, size: int, url: str, key: str) -> None:
        super().__init__(size)
        self.url, self.keys = url, [f"{key}:places", f"{key}:places:held"]

    async def acquire(self) -> Any:
        import asyncio

        await super().acquire()
        hold = f"{random.getrandbits(128):032x} 0 1"  # its id, no dollars, one place
        place = hold, asyncio.ensure_future(_redis.renew(self.url, self.keys, hold))
        try:
            while await _redis.run(self.url, _redis.RESERVE, self.keys,
                                   [hold, "", self.size, _redis.LEASE]):  # refused: all taken
                await asyncio.sleep(random.uniform(0, POLL))
        except BaseException:  # Redis lost, or cancelled (perhaps once the place was taken)
            await self.release(place)
            raise
        return place

    async def release(self, place: Any = None) -> None:
        hold, renewing = place
        renewing.cancel()
        with contextlib.suppress(EmberError):  # Redis lost: the place's lease frees it
            await _redis.run(self.url, _redis.SETTLE, self.keys, [hold, 0, 0])
        await super().release()


class Limit:
    """The pace of one target: configured, or learned from its provider's answers."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None,
                 concurrency: int | None = None, shared: str | None = None, key: str = "") -> None:
        self.per_minute: dict[str, float | None] = {"requests": rpm, "tokens": tpm}
        self.next = {"requests": 0.0, "tokens": 0.0}  # time.monotonic() the next turn is at
        self.until = 0.0  # time.monotonic() the provider asked every call to wait until
        self.places = None if not concurrency else \
            SharedPlaces(concurrency, shared, key) if shared else Places(concurrency)
        self.shared, self.key = (shared if rpm or tpm else None), key  # its turns' Redis, key

    def hold(self, seconds: float, now: float) -> None:
        """No call starts before `seconds` from now; a longer pause is not waited for."""
        if seconds <= MAX_PAUSE:
            self.until = max(self.until, now + seconds)


def limit(target: str, rpm: float | None = None, tpm: float | None = None,
          concurrency: int | None = None, shared: str | None = None) -> None:
    """Pace every call to `target`, a provider ('openai') or a model ('gpt-4o-mini'):
    at most `rpm` requests and `tpm` tokens a minute, and `concurrency` at once. Calling
    it again replaces the target's limits (calls already waiting keep the old ones); with
    no numbers, removes them. Limits learned from the provider apply as well. `shared`, a
    Redis URL, makes it one limit for every process that names it (a ConfigError now if
    the server does not answer)."""
    numbers = {"rpm": rpm, "tpm": tpm, "concurrency": concurrency}
    for name, value in numbers.items():  # positive, finite; concurrency a whole number
        whole = name == "concurrency"
        ConfigError.check(value is None or (number(value, 0, whole) and value > 0), name, value,
                          f"a positive {'whole ' * whole}number, or None")
    key = target if target in providers.PROVIDERS else "/".join(providers.resolve(target))
    _configured.pop(key, None)
    if any(value is not None for value in numbers.values()):
        url = None if shared is None else _redis.check(shared, "shared")
        _configured[key] = Limit(rpm, tpm, concurrency, url, f"ember:limit:{key}")


def _limits(req: Request) -> list[Limit]:
    """The limits of a call: its provider's and its model's, and what its provider said
    (a server on the user's own machine says nothing that counts)."""
    if not _configured and not _learned:  # nothing configured, and no provider said a thing
        return []
    found = [_configured.get(req.provider), _configured.get(f"{req.provider}/{req.model}")]
    if req.provider not in FREE:  # a model that has said nothing yet paces nothing
        learned = _learned_of(req)
        learned.shared = next((each.shared for each in found if each and each.shared), None)
        if any(found) or learned.until or any(learned.per_minute.values()):
            found.append(learned)
    return [each for each in found if each is not None]


def _learned_of(req: Request) -> Limit:
    """The limits learned from the answers of the model at this address (made once)."""
    where = (req.base_url, req.provider, req.model)
    return _learned.get(where) or _learned.setdefault(
        where, Limit(key=f"ember:learned:{req.provider}/{req.model}"))


def _tokens(limits: list[Limit], body: Json) -> int:
    """The call's estimated tokens, when a limit counts them."""
    if not any(each.per_minute["tokens"] for each in limits):
        return 0
    return len(json.dumps(body)) // 4 + (max_out(body) or 0)


async def wait(call: Call, body: Json) -> None:
    """Take the next turn under every limit on the call, and wait for it; take another if
    the provider asked for a pause meanwhile. The transport calls it before each attempt:
    a retry is a request the provider counts."""
    import asyncio

    if not (limits := _limits(call.request)):
        return
    charges = {"requests": 1, "tokens": _tokens(limits, body)}
    while True:
        with _lock:  # a shared limit's turns are taken in Redis
            now = time.monotonic()
            local = [each for each in limits if not each.shared]
            start = max([now, *(at for each in local for at in [each.until, *each.next.values()])])
            for each in local:
                for kind, most in each.per_minute.items():
                    if most:
                        each.next[kind] = start + 60 * charges[kind] / most
        start = now + await _shared_turn(limits, charges, start - now)
        if start == now:
            return
        call.waited += start - now
        await asyncio.sleep(start - now)
        if all(each.until <= start for each in limits):
            return


async def _shared_turn(limits: list[Limit], charges: dict[str, int], ahead: float) -> float:
    """Seconds to the call's turn under its shared limits as well (taken in Redis), given
    `ahead`, the seconds to its turn in this process."""
    now, shared = time.monotonic(), [each for each in limits if each.shared]
    if not shared:
        return ahead
    told: list[float] = [charges["requests"], charges["tokens"], ahead]
    for each in shared:  # its rates, and a pause this process was asked for (if learned)
        told += [each.per_minute["requests"] or 0, each.per_minute["tokens"] or 0,
                 max(0.0, each.until - now)]
    keys = [each.key for each in shared]
    return float(await _redis.run(str(shared[0].shared), _redis.PACE, keys, told))


def turn(call: Call, body: Json) -> contextlib.AbstractAsyncContextManager[None]:
    """Hold a place under every `concurrency` on the call while it runs; when it ends, give
    back the tokens it was charged (by `wait`) but did not use."""
    limits = _limits(call.request)
    return _turn(call, body, limits) if limits else contextlib.nullcontext()


@contextlib.asynccontextmanager
async def _turn(call: Call, body: Json, limits: list[Limit]) -> AsyncIterator[None]:
    asked = time.monotonic()
    held: list[tuple[Places, Any]] = []
    try:
        for places in [each.places for each in limits if each.places]:
            held.append((places, await places.acquire()))
        call.waited += time.monotonic() - asked if held else 0.0
        yield
    finally:
        for places, place in held:
            await places.release(place)
    if call.response is not None and call.response.usage and (tokens := _tokens(limits, body)):
        used = call.response.usage.input_tokens + call.response.usage.output_tokens
        with _lock:
            for each in limits:
                if tpm := each.per_minute["tokens"]:
                    each.next["tokens"] -= 60 * (tokens - used) / tpm


def _seconds(reset: str) -> float:
    """Seconds to a reset given as OpenAI does ('1s', '6m0s', '20ms') or Anthropic (RFC 3339)."""
    if "T" in reset:
        return datetime.datetime.fromisoformat(reset).timestamp() - time.time()
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}
    return sum(float(n) * units[unit] for n, unit in re.findall(r"([\d.]+)(ms|s|m|h|)", reset))


def _reported(headers: Mapping[str, str], kind: str) -> tuple[float, float, float] | None:
    """(limit, remaining, seconds to reset) of `kind`, from OpenAI's or Anthropic's headers."""
    for names in HEADERS[kind]:
        most, left, reset = map(headers.get, names)
        if most and left and reset:
            with contextlib.suppress(ValueError):  # not a number
                return float(most), float(left), _seconds(reset)
    return None


async def learn(req: Request, status: int, headers: Mapping[str, str],
                retry_after: float | None) -> None:
    """Learn the model's pace from one answer's rate-limit headers and status; a pause it
    asks for is told to Redis at once when the model's limits are shared."""
    if req.provider in FREE or (status != 429 and not any(map(headers.__contains__, FIRST))):
        return  # nothing said of its limits
    learned = _learned_of(req)
    with _lock:
        now, before = time.monotonic(), learned.until
        for kind in HEADERS:
            if (found := _reported(headers, kind)) is None:
                continue
            most, left, reset = found
            paced = most if 0 <= left < most / 2 else None
            # pacing starts: a turn from now (shared, the turns in Redis are spaced already)
            if paced and not learned.per_minute[kind] and not learned.shared:
                learned.hold(60 / paced, now)
            learned.per_minute[kind] = paced
            if left == 0:  # none left: every call waits for the reset
                learned.hold(reset, now)
        if status == 429 and retry_after is not None:
            learned.hold(retry_after, now)
    if learned.until > before and learned.shared:  # a turn of no requests: the pause only
        with contextlib.suppress(EmberError):  # Redis lost: the next call will say so
            await _shared_turn([learned], {"requests": 0, "tokens": 0}, 0.0)
