"""Pacing: `limit(target, rpm=, tpm=, concurrency=)`, and limits learned from providers.

Every call waits for its turn before it is sent. Turns are spaced (virtual scheduling,
as in GCRA): a call may start 60/rpm seconds after the one before it, and 60/tpm
seconds per token of the one before it, so no window of any length ever sees more than
its share plus one call. A call's tokens are estimated before it is sent (request bytes
/ 4, plus max_tokens) and corrected by its actual usage when it ends.

With nothing configured, ember paces each model of a paid provider by what the provider
says: its per-minute limits (`x-ratelimit-limit-requests/tokens`, `anthropic-ratelimit-
requests/tokens-limit`), a remaining count of 0 (wait for the reset), and a 429 (every
call waits for its retry-after, not only the refused one). Until a model's first answer
arrives, other calls to it wait for that answer (at most PROBE seconds): a cold start
does not open with a burst that the provider would refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from . import providers
from ._prices import FREE
from ._spend import max_out
from ._types import Call, Request
from .errors import ConfigError

__all__ = ["PROBE", "learn", "limit", "turn"]

PROBE = 0.0  # seconds other calls wait for a model's first answer (draft: being reworked)
POLL = 0.02
_configured: dict[str, Limit] = {}
_learned: dict[tuple[str, str, str], Limit] = {}


class Limit:
    """The pace of one target: configured, or learned from its provider."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None,
                 concurrency: int | None = None) -> None:
        self.rpm, self.tpm, self.concurrency = rpm, tpm, concurrency
        self.next = 0.0  # time.monotonic() at which the next call may start
        self.known, self.probe_until = False, 0.0
        self.busy: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}

    def slot(self, tokens: int) -> float:
        """Take the next turn for a call of `tokens`: the seconds to wait for it."""
        now = time.monotonic()
        start = max(now, self.next)
        self.next = start + (60 / self.rpm if self.rpm else 0.0)
        self.next += 60 * tokens / self.tpm if self.tpm else 0.0
        return start - now

    def pause(self, seconds: float) -> None:
        self.next = max(self.next, time.monotonic() + seconds)


def limit(target: str, rpm: float | None = None, tpm: float | None = None,
          concurrency: int | None = None) -> None:
    """Pace every call to `target`, a provider ('openai') or a model ('gpt-4o-mini'):
    at most `rpm` requests and `tpm` tokens a minute, and `concurrency` at once. Calling
    it again replaces the target's limits; with no numbers, removes them."""
    if any(value is not None and value <= 0 for value in (rpm, tpm, concurrency)):
        raise ConfigError(f"limit({target!r}) takes positive numbers, or None for no limit")
    key = target if target in providers.PROVIDERS else "/".join(providers.resolve(target))
    _configured.pop(key, None)
    if (rpm, tpm, concurrency) != (None, None, None):
        _configured[key] = Limit(rpm, tpm, concurrency)


def _learned_for(req: Request) -> Limit | None:
    if req.provider in FREE:  # runs on the user's own machine: no provider limits
        return None
    return _learned.setdefault((req.base_url, req.provider, req.model), Limit())


@contextlib.asynccontextmanager
async def turn(call: Call, body: dict[str, Any]) -> AsyncIterator[None]:
    """Wait for the call's turn under every limit that applies, then hold its place in
    their concurrency; when it ends, give back the tokens it was charged but did not use."""
    req = call.request
    limits = [found for key in (req.provider, f"{req.provider}/{req.model}")
              if (found := _configured.get(key))]
    learned = _learned_for(req)
    if learned is not None:
        if not learned.known and not learned.probe_until:
            learned.probe_until = time.monotonic() + PROBE  # this call is the probe
        else:
            while not learned.known and time.monotonic() < learned.probe_until:
                await asyncio.sleep(POLL)
        limits.append(learned)
    tokens = 0
    if any(each.tpm for each in limits):
        tokens = len(json.dumps(body)) // 4 + (max_out(body) or 0)
    await asyncio.sleep(max([each.slot(tokens) for each in limits], default=0.0))
    async with contextlib.AsyncExitStack() as held:
        for each in limits:
            if each.concurrency:
                loop = asyncio.get_running_loop()
                gate = each.busy.setdefault(loop, asyncio.Semaphore(each.concurrency))
                await held.enter_async_context(gate)
        yield
    if call.response is not None and call.response.usage and tokens:  # correct the estimate
        used = call.response.usage.input_tokens + call.response.usage.output_tokens
        for each in limits:
            each.next -= 60 * (tokens - used) / each.tpm if each.tpm else 0.0


def _seconds(reset: str) -> float:
    """A reset time as OpenAI ('1s', '6m0s', '20ms') or Anthropic (RFC 3339) gives it."""
    if "T" in reset:
        moment = datetime.datetime.fromisoformat(reset.replace("Z", "+00:00"))
        return max(0.0, moment.timestamp() - time.time())
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * units[unit] for n, unit in re.findall(r"([\d.]+)(ms|s|m|h)", reset))


def learn(req: Request, status: int, headers: Mapping[str, str],
          retry_after: float | None) -> None:
    """Learn the model's pace from one answer's status and rate-limit headers."""
    learned = _learned_for(req)
    if learned is None:
        return
    learned.known = True
    for kind in ("requests", "tokens"):
        names = [f"x-ratelimit-{{}}-{kind}", f"anthropic-ratelimit-{kind}-{{}}"]
        found = {part: next((headers[name.format(part)] for name in names
                             if name.format(part) in headers), None)
                 for part in ("limit", "remaining", "reset")}
        with contextlib.suppress(ValueError):
            if found["limit"]:
                setattr(learned, "rpm" if kind == "requests" else "tpm", float(found["limit"]))
            if found["remaining"] == "0" and found["reset"]:
                learned.pause(_seconds(found["reset"]))
    if status == 429:
        learned.pause(1.0 if retry_after is None else retry_after)
