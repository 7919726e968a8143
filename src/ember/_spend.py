"""Know and cap what you spend: `track()`, `budget()` and `usage()`.

Every call is recorded in the trackers active in its task (contextvars, so concurrent
tasks do not mix), in the process-wide `usage()`, and in the usage log (see _log).

A budget reserves each call's worst case before it is sent: an upper bound of its input
tokens (the bytes of its text, as a token is at least one byte, plus a few tokens of
framing per message), all priced as cache writes (the dearest input), plus its max_tokens
(which bound the reasoning tokens too), at the model's price. A call whose reservation
would cross a cap is refused, unsent. A call whose usage stays unknown (a stream without
usage) is charged that worst case.

A budget given `shared=` (a Redis URL) and a `name` is one cap for every process and
machine that names it: after the process's own check, each call's worst case is held in
Redis (one round trip, _redis.RESERVE, which refuses it atomically when the cap could be
crossed by all that was spent and is held) and settled to what it spent when it ends
(another). A hold is leased and renewed while the call runs (see _redis.LEASE): a process
that dies frees its holds once their leases end. `.spent` and `.tokens_used` read what
every process spent. Redis lost mid-run fails closed: a call is refused with an EmberError
naming the server, and a call under way when it is lost raises one when it ends (its cost
could not be counted). What a shared budget spent stays in Redis (`ember:budget:NAME`)
until deleted: a new run that starts from zero takes a new name.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

from . import _log, _redis
from ._prices import cost
from ._types import Call, Request, Usage, number
from .errors import BudgetExceeded, ConfigError

__all__ = ["Budget", "Tracker", "active_tag", "budget", "max_out", "percentile", "record",
           "spending", "track", "usage"]

_trackers: ContextVar[tuple[Tracker, ...]] = ContextVar("ember_trackers", default=())
_budgets: ContextVar[tuple[Budget, ...]] = ContextVar("ember_budgets", default=())
_lock = threading.Lock()  # trackers and budgets are shared with worker threads
FRAMING = 8  # tokens a chat template may add per message, above the message's own text


class _Scope:
    """Entered with `with` or `async with`: active in this task and the tasks it starts."""

    _var: ContextVar[tuple[Any, ...]]

    def __enter__(self) -> Any:
        self._var.set((*self._var.get(), self))
        return self

    def __exit__(self, *exc: object) -> None:  # one object may be active in several tasks
        active = list(self._var.get())
        del active[len(active) - 1 - active[::-1].index(self)]
        self._var.set(tuple(active))

    async def __aenter__(self) -> Any:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()


class Tracker(_Scope):
    """`with track() as t:` (or `async with`): the usage of the calls made inside, in this
    task and the tasks it starts: t.calls, t.input_tokens, t.output_tokens (cache reads and
    writes: t.cache_read_tokens, t.cache_write_tokens; see Usage), t.cost, t.unknown (calls
    of unknown usage or price, not in t.cost), t.cached, t.saved, t.retries, t.errors,
    t.percentile(95), t.by_model. `tag` labels the log rows."""

    _var = _trackers

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag
        self.calls = self.input_tokens = self.output_tokens = 0
        self.cache_read_tokens = self.cache_write_tokens = 0
        self.cached = self.retries = self.errors = self.unknown = 0
        self.cost = self.saved = 0.0
        self.latencies: list[float] = []
        self.by_model: dict[str, Tracker] = _ByModel()

    def _add(self, call: Call, error: BaseException | None) -> None:
        self.calls += 1
        self.retries += call.retries
        self.errors += error is not None
        if (r := call.response) is None:
            return
        self.latencies.append(r.latency)
        if r.cached:
            self.cached += 1
            self.saved += cost(r.provider, r.model, r.usage) or 0.0
            return
        usage = r.usage or Usage()  # unknown: counted in .unknown instead
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cache_read_tokens += usage.cache_read_tokens
        self.cache_write_tokens += usage.cache_write_tokens
        self.cost += r.cost or 0.0
        self.unknown += r.cost is None

    def percentile(self, q: float) -> float:
        """Latency (seconds) below which q percent of the calls finished."""
        return percentile(sorted(self.latencies), q)

    def __repr__(self) -> str:
        unknown = f" (+{self.unknown} calls of unknown cost)" if self.unknown else ""
        return (f"Tracker(calls={self.calls}, tokens={self.input_tokens}+{self.output_tokens} "
                f"(cache read {self.cache_read_tokens}, write {self.cache_write_tokens}), "
                f"cost=${self.cost:.6f}{unknown}, cached={self.cached}, saved=${self.saved:.6f}, "
                f"retries={self.retries}, errors={self.errors}, "
                f"p50={self.percentile(50):.3f}s, p95={self.percentile(95):.3f}s)")


class _ByModel(dict[str, Tracker]):
    """Trackers by 'provider/model', also found by the name a call used: by_model['gpt-4o']."""

    def __missing__(self, model: str) -> Tracker:
        from .providers import resolve

        full = "/".join(resolve(model)) if "/" not in model else model
        if full == model or full not in self:
            raise KeyError(model)
        return self[full]


class Budget(_Scope):
    """`with budget(usd=2.00, tokens=None):` a hard cap on the calls made inside: each is
    refused, unsent, with BudgetExceeded when its worst case could cross the cap. With
    `shared=` a Redis URL and a `name`, one cap for every process that names it (a
    ConfigError now if the server does not answer)."""

    _var = _budgets

    def __init__(self, usd: float | None = None, tokens: int | None = None,
                 shared: str | None = None, name: str | None = None) -> None:
        if usd is None and tokens is None:
            raise ConfigError("budget() needs a cap: budget(usd=2.00) or budget(tokens=100_000)")
        ConfigError.check(usd is None or number(usd, 0), "usd", usd, "dollars >= 0")
        ConfigError.check(tokens is None or number(tokens, 0, whole=True), "tokens", tokens,
                          "a whole number >= 0")
        ConfigError.check(shared is None or bool(name and isinstance(name, str)), "name", name,
                          "the shared budget's name, the same in every process")
        self.usd, self.tokens, self.name = usd, tokens, name
        self.shared = None if shared is None else _redis.check(shared, "shared")
        self.own, self.reserved = 0.0, 0.0  # spent and held by this process
        self.own_tokens, self.tokens_reserved = 0, 0

    @property
    def spent(self) -> float:
        """USD spent under the cap: by every process that shares it, read from Redis."""
        return _redis.spent(self.shared, str(self.name))[0] if self.shared else self.own

    @property
    def tokens_used(self) -> int:
        """Tokens spent under the cap: by every process that shares it, read from Redis."""
        return _redis.spent(self.shared, str(self.name))[1] if self.shared else self.own_tokens

    def _admit(self, model: str, usd: float | None, tokens: int) -> None:
        if self.usd is not None and usd is None:
            raise BudgetExceeded(f"no price is known for {model}, so a usd budget cannot bound "
                                 "its calls: cap them with budget(tokens=...) instead")
        for cap, spent, held, need, unit in [(self.usd, self.own, self.reserved, usd, "USD"), (
                self.tokens, self.own_tokens, self.tokens_reserved, tokens, "tokens")]:
            if cap is not None and spent + held + (need or 0) > cap:
                raise _crossed(cap, unit, spent, held, need or 0)

    def __repr__(self) -> str:
        shared = f", shared={_redis.safe(self.shared)!r}, name={self.name!r}" if self.shared else ""
        return (f"Budget(usd={self.usd}, tokens={self.tokens}{shared}, spent=${self.own:.6f}, "
                f"tokens_used={self.own_tokens})")


def _crossed(cap: float, unit: str, spent: float, held: float, need: float) -> BudgetExceeded:
    return BudgetExceeded(f"budget of {cap:g} {unit} would be crossed: spent {spent:g}, reserved "
                          f"{held:g} for calls under way, and this call may need {need:g}")


track = Tracker  # `with track() as t:` (or `async with`); `track(tag="x")` labels the log
budget = Budget  # `with budget(usd=2.00):` refuses, unsent, any call that could cross it
_process = Tracker()


def percentile(ordered: list[float], q: float) -> float:
    """The value below which q percent of `ordered` (sorted) lie; 0.0 for none."""
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0


def usage() -> Tracker:
    """The usage of every call this process has made."""
    return _process


def active_tag() -> str | None:
    """The tag of the innermost `track(tag=...)` active here: the label of its log rows."""
    return next((t.tag for t in reversed(_trackers.get()) if t.tag), None)


def max_out(body: dict[str, Any]) -> int | None:
    """The most tokens the call may write: its max_tokens, in the provider's words."""
    found = [body.get("max_tokens"), body.get("max_completion_tokens"),
             body.get("generationConfig", {}).get("maxOutputTokens")]
    return next((int(n) for n in found if n is not None), None)


def _input_bound(req: Request) -> int:
    """An upper bound of the call's input tokens. A token is at least one byte of text, and
    each message adds a few tokens of framing (role, separators); structured parameters
    (tools, schemas) are read by the model too, so their JSON counts in full."""
    texts = [*([req.system] if req.system else []), *(m.get("content") for m in req.messages)]
    size = sum(len(t.encode()) if isinstance(t, str) else len(json.dumps(t)) for t in texts)
    read = [value for value in req.params.values() if isinstance(value, (dict, list))]
    read += [req.schema.boxed] if req.schema is not None else []
    return size + FRAMING * len(texts) + (len(json.dumps(read)) if read else 0)


def _reserve(req: Request, body: dict[str, Any]) -> Any:
    if not (budgets := _budgets.get()):
        return None
    tokens_in, tokens_out = _input_bound(req), max_out(body)
    usd = cost(req.provider, req.model, Usage(tokens_in, tokens_out or 0, 0, tokens_in))
    if tokens_out is None and (usd != 0.0 or any(cap.tokens is not None for cap in budgets)):
        raise ConfigError("under a budget, pass max_tokens=... so that ember can bound the call")
    tokens = tokens_in + (tokens_out or 0)
    with _lock:
        for cap in budgets:
            cap._admit(f"{req.provider}/{req.model}", usd, tokens)
        for cap in budgets:
            cap.reserved += usd or 0.0
            cap.tokens_reserved += tokens
    return budgets, usd or 0.0, tokens


class spending:  # a class, not a generator: every call enters it, and that saves each ~3 µs
    """`async with spending(req, body) as call:` reserve budget for one call, then settle and
    record it however it ends (a call a shared budget refuses is not recorded, as one refused
    here is not). The model's price is looked up first: nothing after the answer arrives
    imports or opens a file."""

    def __init__(self, req: Request, body: dict[str, Any]) -> None:
        cost(req.provider, req.model, None)
        self.call = Call(req, hold=_reserve(req, body))
        self.holds: contextlib.AsyncExitStack | None = None  # made for a shared budget only

    async def __aenter__(self) -> Call:
        try:
            for cap in self.call.hold[0] if self.call.hold else ():
                if cap.shared:
                    self.holds = self.holds or contextlib.AsyncExitStack()
                    await self.holds.enter_async_context(_shared(cap, self.call))
        except BaseException as caught:
            await self.__aexit__(None, caught, None)
            raise
        return self.call

    async def __aexit__(self, *exc: Any) -> None:
        try:  # the settlements (one that fails raises, the call recorded as it ended)
            if self.holds is not None:
                await self.holds.aclose()
        finally:  # GeneratorExit: a stream's reader stopped early, no error
            record(self.call, None if isinstance(exc[1], GeneratorExit) else exc[1])


@contextlib.asynccontextmanager
async def _shared(cap: Budget, call: Call) -> AsyncIterator[None]:
    """Hold the call's worst case under a shared budget while it runs; then settle it."""
    import asyncio
    import uuid

    (_, usd, tokens), url, key = call.hold, str(cap.shared), f"ember:budget:{cap.name}"
    keys, hold = [key, key + ":held"], f"{uuid.uuid4().hex} {usd!r} {tokens}"
    caps = [cap.usd, cap.tokens]
    told = [hold, *("" if each is None else each for each in caps), _redis.LEASE]
    if refused := await _redis.run(url, _redis.RESERVE, keys, told):
        kind = int(refused[0]) - 1
        raise _crossed(caps[kind] or 0, ("USD", "tokens")[kind], float(refused[1]),
                       float(refused[2]), (usd, tokens)[kind])
    renewing = asyncio.ensure_future(_redis.renew(url, keys, hold))
    try:
        yield
    finally:
        renewing.cancel()
        await _redis.run(url, _redis.SETTLE, keys, [hold, *_used(call)])


def _used(call: Call) -> tuple[float, int]:
    """What a call under a budget spent: its cost and tokens (its reserved worst case when
    its usage is unknown); nothing when it had no answer, or a cached one."""
    r, (_, usd, tokens) = call.response, call.hold
    if r is None or r.cached:
        return 0.0, 0
    u = r.usage
    return (usd, tokens) if u is None else (r.cost or 0.0, u.input_tokens + u.output_tokens)


def record(call: Call, error: BaseException | None = None) -> None:
    """Settle the call's reservation and add it to every tracker and the usage log."""
    with _lock:
        if call.hold is not None:
            (budgets, usd, tokens), (spent, used) = call.hold, _used(call)
            for cap in budgets:
                cap.reserved -= usd
                cap.tokens_reserved -= tokens
                cap.own += spent
                cap.own_tokens += used
        if isinstance(error, BudgetExceeded):  # refused by a shared budget: never sent
            return
        active = _trackers.get()
        key = f"{call.request.provider}/{call.request.model}"
        for tracker in (_process, *active):
            tracker._add(call, error)
            if key not in tracker.by_model:
                tracker.by_model[key] = Tracker()
            tracker.by_model[key]._add(call, error)
    _log.write(call, error, active_tag())
