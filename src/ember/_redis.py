"""The shared backend: limits, budgets and the cache, shared by processes and machines
through one Redis server, named by URL (`shared="redis://host:6379/0"`).

Every decision is one Lua script, which Redis runs atomically, on its own clock (TIME), so
machines need not agree on the time: a turn under the shared limits of a call (PACE), a
reservation under a shared budget (RESERVE), its settlement (SETTLE) and the renewal of its
lease (RENEW). A reservation is leased for LEASE seconds and renewed every LEASE / 3 while
its call runs; one whose process died is dropped by the first reservation after its lease
ends, so a crash never holds a cap for longer than LEASE. Summing the reservations under
way costs each reservation a pass over them (a few µs per hundred).

The redis package (`pip install 'ember[shared]'`) is imported on first use. Calls use its
asyncio client: one per event loop, of at most 50 connections (more calls at once wait for
one). The cache's store, whose interface is synchronous like SQLite's, and the checks made
when a limit, budget or store is created use its blocking client. Every operation,
connecting included, gives up after TIMEOUT seconds, unretried. A server that cannot be
reached when something names it is a ConfigError; later, an EmberError. Neither, nor any
repr, shows the credentials of a URL.

Left out: Redis Cluster and Sentinel (one server, or whatever answers at one address), and
a cap or rate that differs between the processes naming it (each process checks its own).
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from .errors import ConfigError, EmberError

if TYPE_CHECKING:
    import redis

__all__ = ["LEASE", "PACE", "RESERVE", "SCHEMES", "SETTLE", "RedisStore", "check", "client",
           "renew", "run", "safe", "spent", "store"]

TIMEOUT = 2.0  # seconds any Redis operation may take, connecting included
LEASE = 60.0  # seconds a hold outlives a process that died holding it
SCHEMES = ("redis://", "rediss://", "unix://")  # the URLs redis-py reads
_clients: dict[str, dict[Any, tuple[Any, Any]]] = {}  # by URL, then by event loop

NOW = "local t = redis.call('TIME') local now = t[1] + t[2] / 1e6\n"
# KEYS: a hash per shared limit of the call, holding the time the next turn of each kind is
# at (a pause asked for puts both off). ARGV: the call's requests and tokens, the seconds its
# turn in its own process is away, then per key: rpm and tpm (0: none), and a pause (seconds).
PACE = NOW + """local start = now + ARGV[3]
for i, key in ipairs(KEYS) do
  local at = redis.call('HMGET', key, 'requests', 'tokens')
  start = math.max(start, now + ARGV[3 * i + 3], tonumber(at[1]) or 0, tonumber(at[2]) or 0)
end
for i, key in ipairs(KEYS) do
  for j, kind in ipairs({'requests', 'tokens'}) do
    local most = tonumber(ARGV[3 * i + j])
    redis.call('HSET', key, kind, start + (most > 0 and 60 * ARGV[j] / most or 0))
  end
  redis.call('EXPIRE', key, 3600)
end
return tostring(start - now)"""
# A budget: KEYS[1] a hash of what was spent (usd, tokens), KEYS[2] the holds of the calls under
# way, 'id usd tokens' each, in a sorted set by the time their leases end. ARGV: the hold, the
# caps of usd and tokens ('' for none), the lease. Returns nothing when the hold is taken;
# when a cap refuses it: which (1 usd, 2 tokens), what was spent and what is held.
RESERVE = NOW + """redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local spent, held = redis.call('HMGET', KEYS[1], 'usd', 'tokens'), {0, 0}
for _, hold in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local usd, tokens = hold:match(' (%S+) (%S+)$')
  held = {held[1] + usd, held[2] + tokens}
end
local need = {ARGV[1]:match(' (%S+) (%S+)$')}
for i = 1, 2 do
  local cap, used = tonumber(ARGV[i + 1]), tonumber(spent[i]) or 0
  if cap and used + held[i] + need[i] > cap then return {i, tostring(used), tostring(held[i])} end
end
redis.call('ZADD', KEYS[2], now + ARGV[4], ARGV[1])"""
# ARGV: the hold, and what its call spent (usd, tokens)
SETTLE = """redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HINCRBYFLOAT', KEYS[1], 'usd', ARGV[2])
redis.call('HINCRBYFLOAT', KEYS[1], 'tokens', ARGV[3])"""
RENEW = NOW + "redis.call('ZADD', KEYS[2], 'XX', now + ARGV[2], ARGV[1])"  # ARGV: hold, lease


def safe(url: str) -> str:
    """A URL without its credentials: redis://:secret@host:6379 → redis://host:6379 (any
    scheme: the transport's messages use it too)."""
    return re.sub(r"//[^/@]*@", "//", url)


@contextlib.contextmanager
def _failing(url: str, kind: type[EmberError] = EmberError) -> Iterator[None]:
    """A failed Redis operation as an error of `kind` naming the server, not its password."""
    import redis

    try:
        yield
    except (redis.RedisError, OSError, ValueError) as problem:
        raise kind(f"Redis at {safe(url)} failed: {type(problem).__name__}: "
                   f"{str(problem).replace(url, safe(url))}") from None


@functools.cache
def client(url: str) -> redis.Redis:
    """The blocking client of a server: thread-safe, one for the process."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT,
                                retry=Retry(NoBackoff(), 0))  # no retries: TIMEOUT holds


def check(url: object, name: str) -> str:
    """A Redis URL, once its server has answered: a ConfigError naming it when it does not
    (or when redis-py cannot read it: its ValueError names the schemes it takes)."""
    ConfigError.check(isinstance(url, str), name, url, "a Redis URL such as redis://host:6379/0")
    with _failing(str(url), ConfigError):  # the server is asked once, when it is named
        client(str(url)).ping()
    return str(url)


async def run(url: str, script: str, keys: list[str], args: list[Any]) -> Any:
    """Run a Lua script on the server at `url`, with this event loop's client."""
    import redis.asyncio

    from ._http import per_loop

    def connect() -> redis.asyncio.Redis:
        return redis.asyncio.Redis.from_pool(redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=50, timeout=TIMEOUT, socket_timeout=TIMEOUT,
            socket_connect_timeout=TIMEOUT))

    client = await per_loop(_clients.setdefault(url, {}), connect, "aclose")
    with _failing(url):
        return await client.eval(script, len(keys), *keys, *args)


async def renew(url: str, keys: list[str], hold: str) -> None:
    """Renew a hold's lease every LEASE / 3 seconds, until cancelled."""
    import asyncio

    with contextlib.suppress(EmberError):  # Redis lost: the settlement says so
        while True:
            await asyncio.sleep(LEASE / 3)
            await run(url, RENEW, keys, [hold, LEASE])


def spent(url: str, name: str) -> tuple[float, int]:
    """What the shared budget `name` has spent, by every process: (usd, tokens)."""
    with _failing(url):
        usd, tokens = client(url).hmget(f"ember:budget:{name}", ["usd", "tokens"])
    return float(usd or 0), int(float(tokens or 0))


class RedisStore:
    """Cache entries in a Redis server, shared by every process and machine that names it:
    each a key `ember:cache:<key>` that Redis expires after its ttl (None: kept until cleared).
    `clear()` removes them all (Redis keeps no time of writing: older_than= is refused)."""

    PREFIX = "ember:cache:"

    def __init__(self, url: str, ttl: float | None = None) -> None:
        self.url, self.ttl = check(url, "url"), ttl

    def get(self, key: str) -> bytes | None:
        return cast("bytes | None", client(self.url).get(self.PREFIX + key))

    def set(self, key: str, value: bytes, ttl: float | None) -> None:
        client(self.url).set(self.PREFIX + key, value, px=round(ttl * 1000) if ttl else None)

    def clear(self, older_than: float | None = None) -> int:
        ConfigError.check(older_than is None, "older_than", older_than, "None with Redis")
        keys = list(client(self.url).scan_iter(self.PREFIX + "*"))
        return int(client(self.url).delete(*keys)) if keys else 0

    def stats(self) -> dict[str, Any]:
        keys = list(client(self.url).scan_iter(self.PREFIX + "*"))
        return {"entries": len(keys), "bytes": sum(map(client(self.url).strlen, keys)),
                "path": safe(self.url)}

    def __repr__(self) -> str:
        return f"RedisStore({safe(self.url)!r})"


store = functools.cache(RedisStore)  # the store of a URL given as cache= or store=: one each
