"""`@retry`: call a function again when it fails, with the transport's jittered backoff.

For failures ember's own transport cannot see: an answer that does not parse, a check of
your own that fails. Provider errors are already retried inside each call. Never retried:
a call that does not fit the function's signature (Python's own TypeError, at once), and
ember's permanent refusals (ConfigError, BudgetExceeded), which no retry can change.
"""

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import BudgetExceeded, ConfigError

__all__ = ["retry"]

F = TypeVar("F", bound=Callable[..., Any])
NEVER = (ConfigError, BudgetExceeded)


def retry(max_attempts: int = 3, on: type[BaseException] | tuple[type[BaseException], ...]
          = Exception, backoff: float = 0.5) -> Callable[[F], F]:
    """Decorate a sync or async function: on an exception of a type in `on`, wait (full
    jitter, up to `backoff` seconds, doubling each time) and call it again, `max_attempts`
    times in all; then the last exception is raised as it was."""
    if not isinstance(max_attempts, int) or max_attempts < 1 or backoff < 0:
        raise ConfigError(f"retry() takes max_attempts >= 1 and backoff >= 0 seconds, not "
                          f"max_attempts={max_attempts!r}, backoff={backoff!r}")

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        def again(error: BaseException, attempt: int, args: Any, kwargs: Any) -> float:
            """Seconds to wait before the next attempt; raises `error` when there is none:
            its type is not retried, the attempts are spent, or the call does not fit the
            signature (Python's own TypeError, naming the function, at once)."""
            from ._http import retry_delay

            try:
                signature.bind(*args, **kwargs)
            except TypeError:
                raise error from None
            if attempt == max_attempts - 1 or isinstance(error, NEVER) or not isinstance(error, on):
                raise error
            return retry_delay(attempt, None, backoff)

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def retried_async(*args: Any, **kwargs: Any) -> Any:
                import asyncio

                for attempt in range(max_attempts):
                    try:
                        return await fn(*args, **kwargs)
                    except BaseException as error:
                        wait = again(error, attempt, args, kwargs)
                    await asyncio.sleep(wait)
            return retried_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def retried(*args: Any, **kwargs: Any) -> Any:
            import time

            for attempt in range(max_attempts):
                try:
                    return fn(*args, **kwargs)
                except BaseException as error:
                    wait = again(error, attempt, args, kwargs)
                time.sleep(wait)
        return retried  # type: ignore[return-value]

    return decorate
