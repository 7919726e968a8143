"""Explicit caching: `@cache` on any function, and `models(..., cache=True)`.

Nothing is cached unless asked. A model call's key is a hash of the whole request as it
would be sent (provider, URL with base and model, every message and parameter), never
its credentials; a hit is a Response with cached=True and cost 0. A function's key is its
qualified name and its arguments in canonical JSON. Concurrent identical async calls share
one upstream call (errors are shared, never cached). A store that is corrupt, locked or
unwritable warns once and the call goes on uncached: never a crash, never a wrong answer.

A store is any object with get(key) -> bytes | None, set(key, value, ttl), clear() -> int
and stats() -> dict; values are pickled. Default: SQLiteStore() in the ember home folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import pickle
import sqlite3
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ._sqlite import connect, home
from ._types import Request, Response
from .errors import ConfigError

__all__ = ["MemoryStore", "SQLiteStore", "cache", "store_for", "through"]

T = TypeVar("T")
_MISS = object()
_inflight: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Future[Any]] = {}


class SQLiteStore:
    """Entries in a SQLite file (default: cache.sqlite in the ember home folder), shared by
    every process that opens it; WAL mode, owner-only, each write committed on its own."""

    MIGRATIONS: ClassVar = [("001_cache", "CREATE TABLE cache (key TEXT PRIMARY KEY, "
                                          "value BLOB, expires REAL, created REAL)")]

    def __init__(self, path: str | Path | None = None, ttl: float | None = None) -> None:
        self.path, self.ttl = path, ttl
        self._db: sqlite3.Connection | None = None
        self._opened: Path | str | None = None
        self._lock = threading.Lock()
        self._warned = False

    def _run(self, sql: str, *args: Any) -> list[Any]:
        """Run one statement. A store that fails (corrupt, locked, unwritable) warns once
        and acts as if it were empty."""
        try:
            with self._lock:
                path = self.path or home() / "cache.sqlite"  # follows EMBER_HOME
                if self._db is None or self._opened != path:
                    self._db, self._opened = connect(path, self.MIGRATIONS), path
                return self._db.execute(sql, args).fetchall()
        except (sqlite3.Error, OSError) as problem:
            if not self._warned:
                self._warned = True
                warnings.warn(f"ember: cache at {path} failed ({problem}); calls go uncached",
                              stacklevel=2)
            return []

    def get(self, key: str) -> bytes | None:
        rows = self._run("SELECT value FROM cache WHERE key = ? AND (expires IS NULL OR "
                         "expires > ?)", key, time.time())
        return bytes(rows[0][0]) if rows else None

    def set(self, key: str, value: bytes, ttl: float | None) -> None:
        expires = time.time() + ttl if ttl else None
        self._run("INSERT OR REPLACE INTO cache VALUES (?, ?, ?, ?)", key, value, expires,
                  time.time())

    def clear(self) -> int:
        return len(self._run("DELETE FROM cache RETURNING 1"))

    def stats(self) -> dict[str, Any]:
        rows = self._run("SELECT count(*), coalesce(sum(length(value)), 0) FROM cache")
        entries, size = rows[0] if rows else (0, 0)
        return {"entries": entries, "bytes": size, "path": str(self._opened)}


class MemoryStore(SQLiteStore):
    """Entries in this process's memory (an in-memory SQLite database); gone when it ends."""

    def __init__(self, ttl: float | None = None) -> None:
        super().__init__(":memory:", ttl)


_default = SQLiteStore()


@functools.cache
def _default_for(ttl: float) -> SQLiteStore:
    return SQLiteStore(ttl=ttl)


def store_for(cache: Any, stream: bool = False) -> Any:
    """What `cache=` names: None/False for no cache, True for the default store, a number of
    seconds for the default store with that ttl, or a store."""
    if cache is None or cache is False:
        return None
    if stream:
        raise ConfigError("a stream is never cached: drop cache=, or call without streaming")
    if cache is True:
        return _default
    if isinstance(cache, (int, float)) and cache > 0:
        return _default_for(float(cache))
    if all(hasattr(cache, name) for name in ("get", "set", "clear", "stats")):
        return cache
    raise ConfigError(f"cache= takes True, False or a store such as MemoryStore(), not {cache!r}")


def _lookup(store: Any, key: str) -> Any:
    found = store.get(key)
    try:
        return _MISS if found is None else pickle.loads(found)
    except (pickle.PickleError, EOFError, AttributeError, ImportError):  # stale or damaged
        return _MISS


def _save(store: Any, key: str, value: Any, ttl: float | None) -> None:
    with contextlib.suppress(pickle.PickleError, TypeError, AttributeError):  # unpicklable
        store.set(key, pickle.dumps(value), ttl)


async def _shared(store: Any, key: str, ttl: float | None,
                  produce: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
    """(value, True) from the store or from an identical call under way; else produce it.
    The upstream call runs in a task of its own, so one caller's cancellation is its own."""
    found = _lookup(store, key)
    if found is not _MISS:
        return found, True
    slot = (asyncio.get_running_loop(), key)
    task, joined = _inflight.get(slot), slot in _inflight
    if task is None:
        task = _inflight[slot] = asyncio.ensure_future(produce())
        task.add_done_callback(lambda done: _settle(store, key, ttl, slot, done))
    return await asyncio.shield(task), joined


def _settle(store: Any, key: str, ttl: float | None, slot: Any, done: asyncio.Future[Any]) -> None:
    del _inflight[slot]
    if not done.cancelled() and done.exception() is None:  # errors are shared, never stored
        _save(store, key, done.result(), ttl)


async def through(req: Request, send: Callable[[Request], Awaitable[Response]]) -> Response:
    """A model call through its store: a hit costs nothing and says so."""
    from . import providers

    url, _, body = providers.module(req.provider).encode(req)
    key = "models:" + hashlib.sha256(
        json.dumps([req.provider, url, body], sort_keys=True, default=str).encode()
    ).hexdigest()
    start = time.perf_counter()
    ttl = getattr(req.cache, "ttl", None)
    response, hit = await _shared(req.cache, key, ttl, lambda: send(req))
    if not hit:
        return response
    return dataclasses.replace(response, cached=True, cost=0.0,
                               latency=time.perf_counter() - start)


def _plain(value: Any) -> Any:
    """`value` as JSON that keeps types apart (a tuple is not a list, {1: x} is not {"1": x},
    dicts in any order are equal); a TypeError for anything that is not plain data."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [type(value).__name__, *map(_plain, value)]
    if isinstance(value, dict):
        pairs = ([_plain(name), _plain(item)] for name, item in value.items())
        return ["dict", *sorted(pairs, key=json.dumps)]
    raise TypeError(type(value).__name__)


def _key(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The function's qualified name and its arguments in canonical JSON. (Two functions
    with one qualified name, made by one factory, share entries: name them apart.)"""
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except TypeError:
        fn(*args, **kwargs)  # let Python raise its own error, with the function's name
        raise
    bound.apply_defaults()
    parts = []
    for name, value in bound.arguments.items():
        try:
            parts.append(json.dumps(_plain(value)))
        except (TypeError, ValueError) as kind:
            raise TypeError(
                f"@cache cannot key argument {name!r} of {fn.__qualname__}(): a {kind} is not "
                "plain data (str, number, bool, None, list, tuple, dict)") from None
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    return f"fn:{fn.__module__}.{fn.__qualname__}:{digest}"


def cache(ttl: float | None = None, store: Any = None) -> Callable[[Callable[..., T]],
                                                                  Callable[..., T]]:
    """Cache a sync or async function's results by its arguments (`ttl` in seconds).
    The default store is SQLite in the ember home folder; `store=MemoryStore()` keeps
    results in memory only."""
    chosen = store_for(True if store is None else store)
    ttl = ttl if ttl is not None else getattr(chosen, "ttl", None)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def cached_async(*args: Any, **kwargs: Any) -> Any:
                key = _key(fn, args, kwargs)
                value, _ = await _shared(chosen, key, ttl, lambda: fn(*args, **kwargs))
                return value
            return cached_async

        @functools.wraps(fn)
        def cached(*args: Any, **kwargs: Any) -> Any:
            key = _key(fn, args, kwargs)
            found = _lookup(chosen, key)
            if found is _MISS:
                found = fn(*args, **kwargs)
                _save(chosen, key, found, ttl)
            return found
        return cached

    return decorate
