"""Many calls at once: `gather`, `parallel`, `batch`, and `vote` over their answers.

Results come back in input order. A failed item never throws away the others: every
item runs to its end, then one PartialFailure carries every finished result and each
failure with its index (`errors="return"` puts the exceptions in place instead).
Cancelling (Ctrl-C) stops scheduling new items at once. Async functions run on the event
loop, sync ones on worker threads, under the same `concurrency` bound. parallel and
batch show a progress bar on stderr (tqdm: done/total, rate, failures, cost so far), by
default only when stderr is a terminal; `progress=True/False` forces it.
"""

import asyncio
import contextvars
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


async def _each(fn: Callable[[Any], Awaitable[Any]], items: list[Any], concurrency: int | None,
                errors: str, done: Callable[[Any], None] = lambda result: None) -> list[Any]:
    """`await fn(item)` for every item, at most `concurrency` at once, results in order."""
    if errors not in ("raise", "return"):
        raise ConfigError(f"errors= takes 'raise' or 'return', not {errors!r}")
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


def _outcome(results: list[Any], errors: str) -> list[Any]:
    failures = {index: out for index, out in enumerate(results) if isinstance(out, Exception)}
    if failures and errors == "raise":
        raise PartialFailure(results, failures)
    return results


async def gather(*awaitables: Awaitable[Any], concurrency: int | None = None,
                 errors: str = "raise") -> list[Any]:
    """Await every awaitable, at most `concurrency` at once; their results in order."""

    async def wait(awaitable: Awaitable[Any]) -> Any:
        return await awaitable

    return await _each(wait, list(awaitables), concurrency, errors)


class _Run(Tracker):
    """One run of parallel() or batch(): a tracker of its usage (tagged with the function's
    name in the usage log), its worker threads and its progress bar."""

    def __init__(self, fn: Callable[[Any], Any], total: int, concurrency: int,
                 progress: bool | None) -> None:
        super().__init__(tag=getattr(fn, "__qualname__", None))
        self.fn, self.failed, self.bar = fn, 0, None
        self.threads = ThreadPoolExecutor(concurrency, thread_name_prefix="ember-parallel")
        if progress or (progress is None and sys.stderr.isatty()):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.tag, file=sys.stderr)

    async def call(self, item: Any) -> Any:
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(item)
        context = contextvars.copy_context()  # the thread sees this task's track and budget
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.threads, context.run, self.fn, item)
        return await result if inspect.isawaitable(result) else result  # a lambda: coroutine

    def step(self, result: Any) -> None:
        self.failed += isinstance(result, Exception)
        if self.bar is not None:
            self.bar.set_postfix(failed=self.failed, cost=f"${self.cost:.4f}", refresh=False)
            self.bar.update()

    def __exit__(self, *exc: object) -> None:
        super().__exit__()
        self.threads.shutdown(wait=False, cancel_futures=True)  # when cancelled: no waiting
        if self.bar is not None:
            self.bar.close()


async def aparallel(fn: Callable[[Any], Any], items: Iterable[Any], concurrency: int = 16,
                    progress: bool | None = None, errors: str = "raise") -> list[Any]:
    """Async twin of parallel()."""
    items = list(items)
    with _Run(fn, len(items), concurrency, progress) as work:
        return await _each(work.call, items, concurrency, errors, work.step)


def parallel(fn: Callable[[Any], Any], items: Iterable[Any], concurrency: int = 16,
             progress: bool | None = None, errors: str = "raise") -> list[Any]:
    """`[fn(item) for item in items]`, `concurrency` calls at a time, results in order."""
    return run(aparallel(fn, items, concurrency, progress, errors))


async def abatch(fn: Callable[[list[Any]], Any], items: Iterable[Any], size: int = 32,
                 concurrency: int = 16, progress: bool | None = None,
                 errors: str = "raise") -> list[Any]:
    """Async twin of batch()."""
    if errors not in ("raise", "return"):
        raise ConfigError(f"errors= takes 'raise' or 'return', not {errors!r}")
    items = list(items)
    chunks = [items[start:start + size] for start in range(0, len(items), size)]
    with _Run(fn, len(chunks), concurrency, progress) as work:  # progress counts batches

        async def one(chunk: list[Any]) -> list[Any]:
            out = await work.call(chunk)
            if not isinstance(out, list) or len(out) != len(chunk):
                raise TypeError(f"{work.tag} got {len(chunk)} items and returned {out!r:.60}: "
                                "a batch function must return a list, one result per item")
            return out

        done = await _each(one, chunks, concurrency, "return", work.step)
    flat = [result for chunk, out in zip(chunks, done, strict=True)
            for result in (out if isinstance(out, list) else [out] * len(chunk))]
    return _outcome(flat, errors)


def batch(fn: Callable[[list[Any]], Any], items: Iterable[Any], size: int = 32,
          concurrency: int = 16, progress: bool | None = None, errors: str = "raise") -> list[Any]:
    """Call `fn` with consecutive lists of at most `size` items, `concurrency` lists at a
    time; `fn` returns one result per item. The flat results, in order."""
    return run(abatch(fn, items, size, concurrency, progress, errors))


def vote(answers: Iterable[Any]) -> str:
    """The majority answer. Answers (strings, or Responses: their text) are compared stripped
    and case-folded; a tie goes to the answer seen first. Returns its first spelling, stripped.
    """
    spelled = [str(answer).strip() for answer in answers]
    if not spelled:
        raise ValueError("vote() needs at least one answer")
    counts = Counter(answer.casefold() for answer in spelled)
    return max(spelled, key=lambda answer: counts[answer.casefold()])  # max keeps the first
