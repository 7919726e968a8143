"""Explicit caching: `@cache` on any function, and `models(..., cache=True)`.

Nothing is cached unless asked. A model call's key is a hash of the whole request as it
would be sent (provider, URL with base and model, every message and parameter), never
its credentials; a hit is a Response with cached=True and cost 0, recorded as saved in
`track()`, `usage()` and the usage log, and never charged to a budget. A function's key is
its qualified name and its arguments as pickled (a value that cannot be pickled, such as
a method's `self` holding a connection, is a TypeError).

Identical calls in flight at once share one call, across the threads and event loops of
the process: the first runs it, the others wait for its result (an error is shared, never
stored). The shared call runs in a task of its own, so one caller's cancellation is its
own; when the event loop it runs in ends first, the callers waiting in other loops retry.

A store is any object with get(key) -> bytes | None, set(key, value, ttl),
clear(older_than=None) -> int and stats() -> dict; values are pickled. A store that fails
(corrupt, locked, unwritable) warns once and calls go on uncached: never a crash, never a
wrong answer. Left out: a size limit and eviction (expired entries stay until
`ember cache clear`). Stores shared by machines: RedisStore (see _redis), named by its URL;
identical calls in flight in two processes at once are both sent (waiting on another
process's call would hold this one on a lock that a process that dies leaves behind, and the
store's interface is synchronous); once one has stored its answer, every process hits it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from . import _redis, _spend, providers
from ._types import Call, Request, Response, number
from .errors import ConfigError

if TYPE_CHECKING:
    import sqlite3
    from concurrent.futures import Future

__all__ = ["MemoryStore", "SQLiteStore", "cache", "store_for", "through"]

T = TypeVar("T")
_MISS = object()
_inflight: dict[tuple[int, str], Future[Any]] = {}  # (id(store), key): the call under way
_lock = threading.Lock()
_warned: set[int] = set()  # id() of the stores that have warned


class MemoryStore:
    """Entries in this process's memory; gone when it ends."""

    def __init__(self, ttl: float | None = None) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[bytes, float, float]] = {}  # value, expires, created

    def get(self, key: str) -> bytes | None:
        value, expires, _ = self._entries.get(key, (None, 0.0, 0.0))
        return value if expires > time.time() else None

    def set(self, key: str, value: bytes, ttl: float | None) -> None:
        self._entries[key] = (value, time.time() + (ttl or float("inf")), time.time())

    def clear(self, older_than: float | None = None) -> int:
        cutoff = time.time() - (older_than or 0)
        old = [key for key, entry in list(self._entries.items()) if entry[2] <= cutoff]
        for key in old:
            self._entries.pop(key, None)
        return len(old)

    def stats(self) -> dict[str, Any]:
        values = [entry[0] for entry in list(self._entries.values())]
        return {"entries": len(values), "bytes": sum(map(len, values)), "path": "memory"}


class SQLiteStore:
    """Entries in a SQLite file (default: cache.sqlite in the ember home folder), shared by
    every process that opens it: WAL mode, owner-only, each write committed on its own."""

    MIGRATIONS: ClassVar = [("001_cache", "CREATE TABLE cache (key TEXT PRIMARY KEY, "
                                          "value BLOB, expires REAL, created REAL)")]

    def __init__(self, path: str | Path | None = None, ttl: float | None = None) -> None:
        self.path, self.ttl = path, ttl
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _run(self, sql: str, *args: Any) -> list[Any]:
        with self._lock:
            if self._db is None:
                from ._sqlite import connect, home  # sqlite3 on first use

                self.path = self.path or home() / "cache.sqlite"
                self._db = connect(self.path, self.MIGRATIONS)
            return self._db.execute(sql, args).fetchall()

    def get(self, key: str) -> bytes | None:
        rows = self._run("SELECT value FROM cache WHERE key = ? AND expires > ?", key, time.time())
        return bytes(rows[0][0]) if rows else None

    def set(self, key: str, value: bytes, ttl: float | None) -> None:
        self._run("INSERT OR REPLACE INTO cache VALUES (?, ?, ?, ?)", key, value,
                  time.time() + (ttl or float("inf")), time.time())

    def clear(self, older_than: float | None = None) -> int:
        """Remove every entry, or those written more than `older_than` seconds ago, and the
        expired ones: how many were removed."""
        return len(self._run("DELETE FROM cache WHERE created <= ? OR expires <= ? RETURNING 1",
                             time.time() - (older_than or 0), time.time()))

    def stats(self) -> dict[str, Any]:
        [(entries, size)] = self._run("SELECT count(*), total(length(value)) FROM cache")
        return {"entries": entries, "bytes": int(size), "path": str(self.path)}

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path) if self.path else None!r})"


@functools.cache
def _default(home: str | None, ttl: float | None) -> SQLiteStore:
    """The default store of one ember home folder ($EMBER_HOME when the call was made)."""
    return SQLiteStore(ttl=ttl)


def store_for(cache: Any, stream: bool = False) -> Any:
    """What `cache=` names: None/False for no cache, True for the default store, a number of
    seconds for the default store with that ttl, a Redis URL (see _redis.RedisStore), or a
    store."""
    if cache is None or cache is False:
        return None
    if stream:
        raise ConfigError("a stream is never cached: drop cache=, or call without streaming")
    if cache is True or (isinstance(cache, (int, float)) and cache > 0):
        return _default(os.environ.get("EMBER_HOME"), None if cache is True else float(cache))
    if isinstance(cache, str) and cache.startswith(_redis.SCHEMES):
        return _redis.store(cache)
    if all(hasattr(cache, name) for name in ("get", "set", "clear", "stats")):
        return cache
    raise ConfigError("cache= takes True, a number of seconds to keep entries, a Redis URL or a "
                      f"store such as MemoryStore(), not {cache!r}")


def _failed(store: Any, problem: Exception) -> None:
    if id(store) not in _warned:
        _warned.add(id(store))
        warnings.warn(f"ember: cache {store!r} failed ({problem}); calls go uncached", stacklevel=4)


def _lookup(store: Any, key: str) -> Any:
    import pickle

    try:
        found = store.get(key)
        return _MISS if found is None else pickle.loads(found)
    except Exception as problem:  # a broken store, or an entry an older program wrote
        _failed(store, problem)
        return _MISS


def _save(store: Any, key: str, value: Any, ttl: float | None) -> None:
    import pickle

    try:
        store.set(key, pickle.dumps(value), ttl)
    except Exception as problem:  # a broken store, or a value that cannot be pickled
        _failed(store, problem)


def _claim(store: Any, key: str) -> tuple[Future[Any], bool]:
    """The Future of this key's value, and whether this caller must produce it: when an
    identical call is under way, its Future; when one ended since the caller looked, done."""
    from concurrent.futures import Future

    with _lock:
        if (slot := (id(store), key)) in _inflight:
            return _inflight[slot], False
        future = _inflight[slot] = Future()
    found = _lookup(store, key)
    if found is not _MISS:
        _finish(store, key, future, lambda: found)
    return future, found is _MISS


def _finish(store: Any, key: str, future: Future[Any], outcome: Callable[[], Any],
            ttl: float | None = None, save: bool = False) -> None:
    """Store the outcome's value if asked (an error, never), free the key, wake the callers."""
    try:
        value, error = outcome(), None
    except BaseException as caught:  # an error, or the shared task cancelled with its loop
        value, error = None, caught
    if save and error is None:
        _save(store, key, value, ttl)
    with _lock:
        del _inflight[id(store), key]
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)


async def _shared(store: Any, key: str, ttl: float | None,
                  produce: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
    """(value, True) from the store or from an identical call under way; else produce it."""
    import asyncio

    found = _lookup(store, key)
    if found is not _MISS:
        return found, True
    future, owner = _claim(store, key)
    if owner:  # a task of its own: a caller's cancellation is its own
        task = asyncio.ensure_future(produce())
        task.add_done_callback(lambda done: _finish(store, key, future, done.result, ttl, True))
    try:
        return await asyncio.shield(asyncio.wrap_future(future)), not owner
    except asyncio.CancelledError:
        if owner or not future.done():  # this caller's own cancellation
            raise
    return await _shared(store, key, ttl, produce)  # the shared call's event loop ended


async def through(req: Request, send: Callable[[Request], Awaitable[Response]]) -> Response:
    """A model call through its store: a hit costs nothing, says so and is recorded as saved."""
    import hashlib

    url, _, body = providers.module(req.provider).encode(req)
    wire = json.dumps([req.provider, url, body], sort_keys=True, default=str)
    key, start = "models:" + hashlib.sha256(wire.encode()).hexdigest(), time.perf_counter()
    response, hit = await _shared(req.cache, key, getattr(req.cache, "ttl", None),
                                  lambda: send(req))
    if hit:
        response = dataclasses.replace(response, cached=True, cost=0.0,
                                       latency=time.perf_counter() - start)
        _spend.record(Call(req, response=response))
    return response


def _key(fn: Callable[..., Any], signature: inspect.Signature, args: tuple[Any, ...],
         kwargs: dict[str, Any]) -> str | None:
    """The function's qualified name and its arguments, as pickled (equal values spell one
    key however they are passed); None when the arguments do not fit the signature. (Two
    functions with one qualified name, made by one factory, share entries: name them apart.)"""
    import hashlib
    import pickle

    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    try:
        digest = hashlib.sha256(pickle.dumps(list(bound.arguments.values()), 4)).hexdigest()
    except Exception as problem:  # e.g. a lock, a connection, a lambda
        raise TypeError(f"@cache on {fn.__qualname__}(): an argument cannot be pickled, so it "
                        f"cannot be part of the key ({problem})") from None
    return f"fn:{fn.__module__}.{fn.__qualname__}:{digest}"


def cache(ttl: float | None = None, store: Any = None) -> Callable[[Callable[..., T]],
                                                                  Callable[..., T]]:
    """Cache a sync or async function's results by its arguments, for `ttl` seconds (None:
    the store's own ttl, else until cleared). The default store is SQLite in the ember home
    folder; `store=` takes another, such as MemoryStore()."""
    ConfigError.check(ttl is None or (number(ttl, 0) and ttl > 0), "ttl", ttl,
                      "a number of seconds or None (write @cache() with its parentheses)")
    chosen = store_for(True if store is None else store)
    ttl = ttl if ttl is not None else getattr(chosen, "ttl", None)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def cached_async(*args: Any, **kwargs: Any) -> Any:
                key = _key(fn, signature, args, kwargs)
                if key is None:  # Python's own TypeError, naming the function
                    return await fn(*args, **kwargs)
                return (await _shared(chosen, key, ttl, lambda: fn(*args, **kwargs)))[0]
            return cached_async

        @functools.wraps(fn)
        def cached(*args: Any, **kwargs: Any) -> Any:
            key = _key(fn, signature, args, kwargs)
            if key is None:  # Python's own TypeError, naming the function
                return fn(*args, **kwargs)
            found = _lookup(chosen, key)
            if found is _MISS:
                future, owner = _claim(chosen, key)
                if owner:
                    _finish(chosen, key, future, lambda: fn(*args, **kwargs), ttl, True)
                found = future.result()
            return found
        return cached

    return decorate
