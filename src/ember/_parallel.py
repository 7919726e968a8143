"""Many calls at once: `gather`, `parallel`, `batch` (and `@batch`), `vote`.

Results always come back in input order. A failed item never throws away the others:
every item runs to the end, then one PartialFailure carries every finished result and
each failure with its index (`errors="return"` puts the exceptions in place instead).
Cancelling (Ctrl-C) stops scheduling new items at once. Async functions run on the
event loop; sync ones on worker threads, under the same `concurrency` bound.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ._loop import run
from ._spend import Tracker
from .errors import ConfigError, PartialFailure

__all__ = ["abatch", "aparallel", "batch", "gather", "parallel", "vote"]

Each = Callable[[Any], Awaitable[Any]]


async def _each(fn: Each, items: list[Any], concurrency: int | None, errors: str,
                done: Callable[[Any, Any], None] = lambda item, result: None) -> list[Any]:
    """`await fn(item)` for every item, at most `concurrency` at once, results in order."""
    if errors not in ("raise", "return"):
        raise ConfigError(f"errors= takes 'raise' or 'return', not {errors!r}")
    results: list[Any] = [None] * len(items)
    failures: dict[int, Exception] = {}
    todo = iter(enumerate(items))

    async def worker() -> None:  # a few workers take the next item: nothing waits in a queue
        for index, item in todo:
            try:
                results[index] = await fn(item)
            except Exception as error:
                results[index] = failures[index] = error
            done(item, results[index])

    await asyncio.gather(*(worker() for _ in range(min(concurrency or len(items), len(items)))))
    if failures and errors == "raise":
        raise PartialFailure(results, failures)
    return results


async def gather(*awaitables: Awaitable[Any], concurrency: int | None = None,
                 errors: str = "raise") -> list[Any]:
    """Await every awaitable (at most `concurrency` at once); their results in order."""

    async def wait(awaitable: Awaitable[Any]) -> Any:
        return await awaitable

    return await _each(wait, list(awaitables), concurrency, errors)


class _Run(Tracker):
    """One run of parallel() or batch(): the usage of its calls (a tracker, whose tag names
    the function in the usage log), its worker threads, and a tqdm progress bar on stderr
    (done/total, rate, failures, cost so far), shown by default only on a terminal."""

    def __init__(self, fn: Callable[..., Any], total: int, concurrency: int,
                 show: bool | None) -> None:
        super().__init__(tag=getattr(fn, "__qualname__", None))
        self.fn, self.failed, self.bar = fn, 0, None
        self.threads = ThreadPoolExecutor(concurrency, thread_name_prefix="ember-parallel")
        if show or (show is None and sys.stderr.isatty()):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.tag, unit="item", file=sys.stderr)

    def call(self) -> Each:
        """The function as an async one: awaited if async, else run on a worker thread."""
        if inspect.iscoroutinefunction(self.fn):
            return self.fn

        async def call(item: Any) -> Any:
            context = contextvars.copy_context()  # the thread sees this task's track/budget
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self.threads, context.run, self.fn, item)
            return await result if inspect.isawaitable(result) else result

        return call

    def step(self, size: int, result: Any) -> None:
        self.failed += size if isinstance(result, Exception) else 0
        if self.bar is not None:
            self.bar.set_postfix(failed=self.failed, cost=f"${self.cost:.4f}", refresh=False)
            self.bar.update(size)

    def __exit__(self, *exc: object) -> None:
        super().__exit__()
        self.threads.shutdown(wait=False, cancel_futures=True)  # a cancelled run: no waiting
        if self.bar is not None:
            self.bar.close()


async def aparallel(fn: Callable[[Any], Any], items: Iterable[Any], concurrency: int = 16,
                    progress: bool | None = None, errors: str = "raise") -> list[Any]:
    """`[fn(item) for item in items]`, `concurrency` at a time, in order (async twin)."""
    items = list(items)
    with _Run(fn, len(items), concurrency, progress) as work:
        return await _each(work.call(), items, concurrency, errors,
                           lambda item, result: work.step(1, result))


def parallel(fn: Callable[[Any], Any], items: Iterable[Any], concurrency: int = 16,
             progress: bool | None = None, errors: str = "raise") -> list[Any]:
    """`[fn(item) for item in items]`, run `concurrency` at a time; results in input order.
    `fn` may be sync or async. See the module docstring for errors and cancelling."""
    return run(aparallel(fn, items, concurrency, progress, errors))


def _checked(fn: Callable[..., Any], size: int, results: Any) -> list[Any]:
    if not isinstance(results, list) or len(results) != size:
        got = f"{len(results)} results" if isinstance(results, list) else repr(results)[:60]
        raise TypeError(f"{getattr(fn, '__qualname__', fn)} got a batch of {size} items and "
                        f"returned {got}: a batch function must return a list, one per item")
    return results


async def abatch(fn: Callable[[list[Any]], Any], items: Iterable[Any], size: int = 32,
                 concurrency: int = 16, progress: bool | None = None,
                 errors: str = "raise") -> list[Any]:
    """Async twin of batch(fn, items)."""
    items = list(items)
    chunks = [items[start:start + size] for start in range(0, len(items), size)]
    with _Run(fn, len(items), concurrency, progress) as work:
        call = work.call()

        async def one(chunk: list[Any]) -> list[Any]:
            return _checked(fn, len(chunk), await call(chunk))

        done = await _each(one, chunks, concurrency, "return",
                           lambda chunk, result: work.step(len(chunk), result))
    flat = [item for chunk, out in zip(chunks, done, strict=True)
            for item in (out if isinstance(out, list) else [out] * len(chunk))]
    failures = {index: out for index, out in enumerate(flat) if isinstance(out, Exception)}
    if failures and errors == "raise":
        raise PartialFailure(flat, failures)
    return flat


def batch(fn: Callable[[list[Any]], Any] | None = None, items: Iterable[Any] | None = None, *,
          size: int = 32, wait_ms: float = 10, concurrency: int = 16,
          progress: bool | None = None, errors: str = "raise") -> Any:
    """`batch(fn, items, size=32)`: call `fn` with consecutive lists of at most `size`
    items (it must return one result per item) and return the flat results in order.

    `@batch(size=32, wait_ms=10)` on an async function that takes a list: callers await it
    with one item each; concurrent callers within `wait_ms` are grouped into one call of
    up to `size` items (dynamic batching), and each gets its own result or exception."""
    if fn is None:
        return functools.partial(_grouping, size=size, wait_ms=wait_ms)
    if items is None:
        return _grouping(fn, size, wait_ms)
    return run(abatch(fn, items, size, concurrency, progress, errors))


def _grouping(fn: Callable[[list[Any]], Awaitable[list[Any]]], size: int = 32,
              wait_ms: float = 10) -> Callable[[Any], Awaitable[Any]]:
    """Dynamic batching for `@batch`. A result that is an Exception is raised to its caller
    only; an exception from `fn` itself goes to every caller of that group."""
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"@batch needs an async function that takes a list, not {fn!r}")
    waiting: dict[asyncio.AbstractEventLoop, tuple[list[Any], asyncio.TimerHandle]] = {}
    running: set[asyncio.Task[None]] = set()

    async def call(group: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        try:
            results = _checked(fn, len(group), await fn([item for item, _ in group]))
        except Exception as error:
            results = [error] * len(group)
        for (_, future), result in zip(group, results, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    def send(loop: asyncio.AbstractEventLoop) -> None:
        group, timer = waiting.pop(loop)
        timer.cancel()
        task = loop.create_task(call(group))
        running.add(task)
        task.add_done_callback(running.discard)

    @functools.wraps(fn)
    async def grouped(item: Any) -> Any:
        loop = asyncio.get_running_loop()
        if loop not in waiting:
            waiting[loop] = ([], loop.call_later(wait_ms / 1000, send, loop))
        group = waiting[loop][0]
        group.append((item, future := loop.create_future()))
        if len(group) >= size:
            send(loop)
        return await future

    return grouped


def vote(answers: Iterable[Any]) -> str:
    """The majority answer. Answers (strings, or Responses: their text) are compared stripped
    and case-folded; a tie goes to the answer seen first. Returns its first spelling, stripped.
    """
    spelled = [str(answer).strip() for answer in answers]
    if not spelled:
        raise ValueError("vote() needs at least one answer")
    counts = Counter(answer.casefold() for answer in spelled)
    return max(spelled, key=lambda answer: counts[answer.casefold()])  # max keeps the first
