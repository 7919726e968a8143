"""The one background event loop behind every sync twin.

Sync calls run their async implementation on a single long-lived loop in a daemon
thread, so connection pools are reused across calls and a sync call works even where
the caller's thread already runs a loop (Jupyter, an async web handler). A sync call made
inside a `Scope` (parallel() sets one for its worker threads) is cancelled with it.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import asyncio
    from concurrent.futures import Future

__all__ = ["Scope", "iterate", "run", "scope"]

T = TypeVar("T")
_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def _background() -> asyncio.AbstractEventLoop:
    import asyncio  # on first use: `import ember` stays light

    global _loop
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="ember-loop", daemon=True).start()
            atexit.register(_shutdown, _loop)
    return _loop


def _shutdown(loop: asyncio.AbstractEventLoop) -> None:
    """At exit, let open connection pools close cleanly (see _http._close_with_loop)."""
    import asyncio

    with contextlib.suppress(Exception):  # a loop stuck at exit must not stop the exit
        asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(timeout=5)


class Scope(set["Future[Any]"]):
    """The sync calls under way for one run of work: cancelled together when it is; a call
    started after that is cancelled at once, before it sends anything."""

    cancelled = False

    def add(self, future: Future[Any]) -> None:
        super().add(future)  # done ones stay until the run ends: cancelling them does nothing
        if self.cancelled:  # checked after adding: a cancel() running meanwhile sees it
            future.cancel()

    def cancel(self) -> None:
        self.cancelled = True
        for future in list(self):
            future.cancel()


scope: ContextVar[Scope | None] = ContextVar("ember_scope", default=None)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the background loop and wait for its result in this thread."""
    import asyncio

    if threading.current_thread().name == "ember-loop":
        coro.close()
        raise RuntimeError("a sync ember call cannot run inside ember's own loop; await the a-twin")
    future = asyncio.run_coroutine_threadsafe(coro, _background())
    if (within := scope.get()) is not None:
        within.add(future)
    try:
        return future.result()
    except BaseException:  # Ctrl-C or a failure: never leave the call running behind
        future.cancel()
        raise


def iterate(items: AsyncIterator[T]) -> Iterator[T]:
    """Drive an async iterator on the background loop, one item at a time."""

    async def step() -> T:
        return await anext(items)

    while True:
        try:
            yield run(step())
        except StopAsyncIteration:
            return
