"""Many calls at once: `gather` and `parallel`, and `vote` over their answers.

Results come back in input order. A failed item never throws away the others: every
item runs to its end, then one PartialFailure carries every finished result and each
failure with its index (`errors="return"` puts the exceptions in place instead).
Cancelling (Ctrl-C) stops scheduling new items at once, and cancels the calls in flight:
those of a sync function too, which its worker threads started on ember's loop (see
_loop.Scope). Async functions run on the event loop, sync ones on worker threads, under
the same `concurrency` bound (None: all at once). parallel shows a progress bar on stderr
(tqdm: done/total, rate, failures, cost so far), by default only when stderr is a
terminal; `progress=True/False` forces it.

Left out, for the line budget: `batch`/`@batch` (static and dynamic batching, with
`models.embed`) and `limit` (pacing). They are built and tested, with the cache, on the
branch issues-3-4-over-budget.
"""

import contextvars
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ._loop import Scope, run, scope
from ._spend import Tracker
from ._types import number
from .errors import ConfigError, PartialFailure

__all__ = ["aparallel", "gather", "parallel", "vote"]


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
    failures = {index: out for index, out in enumerate(results) if isinstance(out, Exception)}
    if failures and errors == "raise":
        raise PartialFailure(results, failures)
    return results


def _check(concurrency: int | None, errors: str) -> None:
    counted = concurrency is None or number(concurrency, 1, whole=True)
    if errors not in ("raise", "return") or not counted:
        raise ConfigError(f"errors= takes 'raise' or 'return', and concurrency= a whole number of "
                          f"at least 1: not errors={errors!r}, concurrency={concurrency!r}")


async def gather(*awaitables: Awaitable[Any], concurrency: int | None = None,
                 errors: str = "raise") -> list[Any]:
    """Await every awaitable, at most `concurrency` at once; their results in order."""
    return await _each(lambda awaitable: awaitable, list(awaitables), concurrency, errors)


class _Run(Tracker):
    """One run of parallel(): a tracker of its usage (tagged with the function's
    name in the usage log), its worker threads and its progress bar."""

    def __init__(self, fn: Callable[[Any], Any], total: int, concurrency: int | None,
                 progress: bool | None) -> None:
        super().__init__(tag=getattr(fn, "__qualname__", None))
        import asyncio
        import inspect
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        self.fn, self.failed, self.loop = fn, 0, asyncio.get_running_loop()
        self.call = fn if inspect.iscoroutinefunction(fn) else self._threaded
        self.threads = ThreadPoolExecutor(concurrency or max(total, 1),  # None: all at once
                                          thread_name_prefix="ember-parallel")
        shown = progress or (progress is None and sys.stderr.isatty())
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
    """`[fn(item) for item in items]`, `concurrency` calls at a time, results in order."""
    return run(aparallel(fn, items, concurrency, progress, errors))


def vote(answers: Iterable[Any]) -> str:
    """The majority answer. Answers (strings, or Responses: their text) are compared stripped
    and case-folded; a tie goes to the answer seen first. Returns its first spelling, stripped.
    """
    spelled = [str(answer).strip() for answer in answers]
    if not spelled:
        raise ValueError("vote() needs at least one answer")
    counts = Counter(answer.casefold() for answer in spelled)
    return max(spelled, key=lambda answer: counts[answer.casefold()])  # max keeps the first
