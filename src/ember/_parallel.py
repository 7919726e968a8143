"""Many calls at once: `gather`, `parallel`, `batch` (and `@batch`), `vote` over answers.

Results come back in input order. A failed item never throws away the others: every
item runs to its end, then one PartialFailure carries every finished result and each
failure with its index (`errors="return"` puts the exceptions in place instead).
Cancelling (Ctrl-C) stops scheduling new items at once, and cancels the calls in flight:
those of a sync function too, which its worker threads started on ember's loop (see
_loop.Scope). Async functions run on the event loop, sync ones on worker threads, under
the same `concurrency` bound (None: all at once). parallel shows a progress bar (tqdm:
done/total, rate, failures, cost so far), by default on stderr when it is a terminal and
as the notebook's widget in Jupyter; `progress=True/False` forces it.

`batch(fn, items, size=32)` calls a function that takes a list with consecutive lists of
`size` items, under the same rules (a failed batch fails each of its items). `@batch(size=,
wait_ms=)` groups concurrent single-item calls of an async function into calls of a list.
Left out: `@batch` on a sync function (its callers would block a thread each while they
wait for company), and splitting a group by anything but its count (tokens, bytes).
"""

import contextlib
import contextvars
import functools
import inspect  # loaded by `import ember` already (see _cache)
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ._loop import Scope, run, scope
from ._spend import Tracker, active_tag
from ._types import number
from .errors import ConfigError, PartialFailure

__all__ = ["abatch", "aparallel", "batch", "gather", "parallel", "vote"]


async def _each(fn: Callable[[Any], Awaitable[Any]], items: list[Any], concurrency: int | None,
                errors: str, done: Callable[[Any], None] = lambda result: None) -> list[Any]:
    """`await fn(item)` for every item, at most `concurrency` at once, results in order."""
    import asyncio  # on first use: `import ember` stays light

    _check(concurrency, errors)
    results: list[Any] = [None] * len(items)
    todo = iter(enumerate(items))

    async def worker() -> None:  # each worker takes the next item: nothing waits in a queue
        for index, item in todo:
            try:
                results[index] = await fn(item)
            except Exception as error:
                results[index] = error
            done(results[index])

    await asyncio.gather(*(worker() for _ in range(min(concurrency or len(items), len(items)))))
    return _outcome(results, errors)


def _check(concurrency: int | None, errors: str) -> None:
    ConfigError.check(errors in ("raise", "return"), "errors", errors, "'raise' or 'return'")
    ConfigError.check(concurrency is None or number(concurrency, 1, whole=True), "concurrency",
                      concurrency, "a whole number >= 1, or None")


def _outcome(results: list[Any], errors: str) -> list[Any]:
    """The results; with errors="raise", a PartialFailure when some are exceptions."""
    failures = {index: out for index, out in enumerate(results) if isinstance(out, Exception)}
    if failures and errors == "raise":
        raise PartialFailure(results, failures)
    return results


async def gather(*awaitables: Awaitable[Any], concurrency: int | None = None,
                 errors: str = "raise") -> list[Any]:
    """Await every awaitable, at most `concurrency` at once; their results in order."""
    return await _each(lambda awaitable: awaitable, list(awaitables), concurrency, errors)


class _Run(Tracker):
    """One run of parallel(): a tracker of its usage (tagged with the function's
    name in the usage log), its worker threads and its progress bar."""

    def __init__(self, fn: Callable[[Any], Any], total: int, concurrency: int | None,
                 progress: bool | None) -> None:
        super().__init__(tag=active_tag() or getattr(fn, "__qualname__", None))  # yours first
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        from tqdm.auto import tqdm  # in Jupyter, a subclass of the notebook's progress widget

        self.fn, self.failed, self.loop = fn, 0, asyncio.get_running_loop()
        self.call = fn if inspect.iscoroutinefunction(fn) else self._threaded
        self.threads = ThreadPoolExecutor(concurrency or max(total, 1),  # None: all at once
                                          thread_name_prefix="ember-parallel")
        notebook = any(base.__module__ == "tqdm.notebook" for base in tqdm.__mro__)
        shown = progress or (progress is None and (notebook or sys.stderr.isatty()))
        self.bar = tqdm(total=total, desc=self.tag, file=sys.stderr, disable=not shown)
        self.sent = Scope()  # the calls its worker threads start: cancelled with the run

    async def _threaded(self, item: Any) -> Any:
        """A sync function's call, on a worker thread."""
        context = contextvars.copy_context()  # the thread sees this task's track and budget
        context.run(scope.set, self.sent)
        result = await self.loop.run_in_executor(self.threads, context.run, self.fn, item)
        return await result if hasattr(result, "__await__") else result  # a lambda's coroutine

    def step(self, result: Any) -> None:
        self.failed += isinstance(result, Exception)
        if not self.bar.disable:  # a hidden bar's postfix would still cost 3 µs an item
            self.bar.set_postfix(failed=self.failed, cost=f"${self.cost:.4f}", refresh=False)
            self.bar.update()

    def __exit__(self, *exc: object) -> None:
        super().__exit__()
        self.sent.cancel()
        self.threads.shutdown(wait=False, cancel_futures=True)  # when cancelled: no waiting
        self.bar.close()


async def aparallel(fn: Callable[[Any], Any], items: Iterable[Any], concurrency: int | None = 16,
                    progress: bool | None = None, errors: str = "raise") -> list[Any]:
    """Async twin of parallel()."""
    items = list(items)
    _check(concurrency, errors)
    with _Run(fn, len(items), concurrency, progress) as work:
        return await _each(work.call, items, concurrency, errors, work.step)


def parallel(fn: Callable[[Any], Any], items: Iterable[Any], concurrency: int | None = 16,
             progress: bool | None = None, errors: str = "raise") -> list[Any]:
    """`[fn(item) for item in items]`, `concurrency` calls at a time (None: all at once),
    results in order."""
    return run(aparallel(fn, items, concurrency, progress, errors))


def _checked(fn: Callable[..., Any], size: int, out: Any) -> list[Any]:
    """One result per item, from what `fn` gave for a batch of `size` items: its results, or
    its exception in place of each; a TypeError in place of each when it gave anything else
    (a batch function returns one result per item)."""
    if isinstance(out, Exception):
        return [out] * size
    if isinstance(out, (list, tuple)) and len(out) == size:
        return list(out)
    got = f"{len(out)} results" if isinstance(out, (list, tuple)) else f"a {type(out).__name__}"
    return [TypeError(f"{getattr(fn, '__qualname__', fn)} returned {got} for a batch of {size} "
                      "items: a batch function returns a list with one result per item")] * size


def _sized(size: int, wait_ms: float) -> None:
    ConfigError.check(number(size, 1, whole=True), "size", size, "a whole number >= 1")
    ConfigError.check(number(wait_ms, 0), "wait_ms", wait_ms, "a number of milliseconds >= 0")


async def abatch(fn: Callable[[list[Any]], Any], items: Iterable[Any], size: int = 32,
                 concurrency: int = 16, progress: bool | None = None,
                 errors: str = "raise") -> list[Any]:
    """Async twin of batch(fn, items)."""
    _sized(size, 0)
    _check(concurrency, errors)
    items = list(items)
    chunks = [items[start:start + size] for start in range(0, len(items), size)]
    outs = await aparallel(fn, chunks, concurrency, progress, errors="return")
    results: list[Any] = []
    for chunk, out in zip(chunks, outs, strict=True):
        results += _checked(fn, len(chunk), out)  # a failed batch fails each of its items
    return _outcome(results, errors)


def batch(fn: Callable[..., Any] | None = None, items: Iterable[Any] | None = None,
          size: int = 32, *, wait_ms: float = 10, concurrency: int = 16,
          progress: bool | None = None, errors: str = "raise") -> Any:
    """`batch(fn, items, size=32)`: call `fn` (sync or async) with consecutive lists of at
    most `size` items, `concurrency` lists at a time, like parallel(); `fn` returns one result
    per item. Returns the flat results in input order; a failed list fails each of its items.

    Without items, the decorator: `@batch(size=32, wait_ms=10)` on an async function that
    takes a list (after `self`, on a method). Callers await it with one item each:
    concurrent callers are grouped into one call of at most `size` items, sent when full or
    `wait_ms` after the first. Each caller gets its own result; an exception from the call
    goes to every caller of its group, and a result that is an exception to its caller only.
    Groups are per event loop, and per instance on a method (a first parameter named self);
    the call runs in the context (track, budget) of its group's first caller.
    """
    if items is not None and fn is not None:
        return run(abatch(fn, items, size, concurrency, progress, errors))
    _sized(size, wait_ms)
    decorate = functools.partial(_grouping, size=size, wait_ms=wait_ms)
    return decorate if fn is None else decorate(fn)


def _grouping(fn: Callable[..., Any], size: int, wait_ms: float) -> Callable[..., Any]:
    """`@batch`: single-item calls of `fn`, grouped into calls of a list (see batch)."""
    import asyncio

    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"@batch goes on an async function that takes a list, not {fn!r}")
    groups: dict[tuple[Any, ...], tuple[list[Any], asyncio.Event, asyncio.Task[Any]]] = {}

    async def send(key: tuple[Any, ...], owner: tuple[Any, ...], items: list[Any],
                   full: asyncio.Event) -> list[Any]:
        """Wait until the group is full or wait_ms has passed, then one call for all of it."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(full.wait(), wait_ms / 1000)
        if not full.is_set():  # the time is up: later callers start a new group
            del groups[key]
        return _checked(fn, len(items), await fn(*owner, items))

    async def join(owner: tuple[Any, ...], item: Any) -> Any:
        key = (asyncio.get_running_loop(), *map(id, owner))  # its owner, held: an id not reused
        if key not in groups:  # the first caller starts the group, in its own context
            items, full = list[Any](), asyncio.Event()
            groups[key] = items, full, asyncio.create_task(send(key, owner, items, full))
        items, full, task = groups[key]
        items.append(item)
        index = len(items) - 1
        if len(items) == size:
            del groups[key]
            full.set()
        result = (await asyncio.shield(task))[index]  # a caller's cancellation is its own
        # an exception fn returned for this item, or the TypeError of a wrong answer (see _checked)
        if isinstance(result, Exception):
            raise result
        return result

    async def grouped(item: Any) -> Any:
        return await join((), item)

    async def grouped_method(self: Any, item: Any) -> Any:
        return await join((self,), item)

    method = next(iter(inspect.signature(fn).parameters), None) == "self"  # groups per instance
    return functools.wraps(fn)(grouped_method if method else grouped)  # Python's own TypeError


def vote(answers: Iterable[Any]) -> str:
    """The majority answer. Answers (strings, or Responses: their text) are compared stripped
    and case-folded; a tie goes to the answer seen first. Returns its first spelling, stripped.
    Exceptions (from errors="return") are skipped; with no answer left, the first is raised.
    """
    answers = list(answers)
    spelled = [str(answer).strip() for answer in answers if not isinstance(answer, Exception)]
    if not spelled:
        raise next((a for a in answers if isinstance(a, Exception)),
                   ValueError("vote() needs at least one answer"))
    counts = Counter(answer.casefold() for answer in spelled)
    return max(spelled, key=lambda answer: counts[answer.casefold()])  # max keeps the first
