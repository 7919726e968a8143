"""Every error ember raises, in one small hierarchy::

    EmberError                  anything ember itself raises
    ├── ConfigError             the call cannot be made as written: fix the code or environment
    │   ├── MissingKey          no API key: names the variable to set and the parameter to pass
    │   └── UnknownModel        no such model or provider: suggests the closest known names
    ├── BudgetExceeded          refused before sending: the call could cross a budget's cap
    ├── PartialFailure          some items of gather, parallel or batch failed (an ExceptionGroup):
    │                           .results keeps every finished result, .failures {index: error}
    └── ProviderError           the provider refused or failed, after retries: .provider,
        │                       .status (None without an HTTP answer), .message, .request_id
        ├── RateLimited         429 (or an overloaded 529) still there after retries (not a
        │                       429 for an exhausted quota: a billing matter, never retried)
        ├── ProviderTimeout     no answer within `timeout` seconds of silence, or within
        │                       `deadline` (also a TimeoutError); says what was tried
        ├── Refused             the model refused, or the provider's filters blocked, the
        │                       answer: .response (billed, finish_reason "refused"/"blocked")
        └── InvalidOutput       the answer did not fit the call's schema=, after retries:
                                .text is the last answer as the model wrote it

    UnknownPrice                a warning (UserWarning), once per model of unknown price:
                                its calls have cost=None

A mistake in the user's own code (a wrong argument to a decorated function, say) is never
wrapped: it stays Python's own error. No message ever contains an API key.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BudgetExceeded", "ConfigError", "EmberError", "InvalidOutput", "MissingKey",
           "PartialFailure", "ProviderError", "ProviderTimeout", "RateLimited", "Refused",
           "UnknownModel", "UnknownPrice"]


class EmberError(Exception):
    """Base class of every error ember raises."""


class ConfigError(EmberError, ValueError):
    """The call cannot be made as written; the message says what to change."""

    @classmethod
    def check(cls, ok: bool, name: str, value: object, accepted: str) -> None:
        """Unless `ok`, raise one that names the parameter and the values it accepts."""
        if not ok:
            raise cls(f"{name}= takes {accepted}, not {value!r:.60}")


class MissingKey(ConfigError):
    """No API key was found for a provider; `.variables` can hold one."""

    def __init__(self, provider: str, variables: tuple[str, ...]) -> None:
        self.provider, self.variables, wanted = provider, variables, " or ".join(variables)
        super().__init__(f"No API key for {provider}: set {wanted} in the environment, or pass "
                         "api_key=...")


class UnknownModel(ConfigError):
    """The model string names no known model or provider."""

    def __init__(self, message: str, suggestions: list[str]) -> None:
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(message + hint)
        self.suggestions = suggestions


class UnknownPrice(UserWarning):
    """Warned once per model whose price is unknown: its calls have cost=None."""


class BudgetExceeded(EmberError):
    """A call was refused, unsent, because its worst case could cross a budget's cap."""


class PartialFailure(EmberError, ExceptionGroup):
    """Some items failed and the others finished. `.results` holds every item's result in
    input order, with the exception in place of each failed one; `.failures` maps each
    failed index to its exception (`.exceptions` lists them, as in any ExceptionGroup)."""

    results: list[Any]
    failures: dict[int, Exception]

    def __new__(cls, results: list[Any], failures: dict[int, Exception]) -> PartialFailure:
        first = min(failures)
        message = f"{len(failures)} of {len(results)} items failed; item {first}: {failures[first]}"
        self = super().__new__(cls, message, list(failures.values()))
        self.results, self.failures = results, failures
        return self


class ProviderError(EmberError):
    """A provider answered with an error, or could not be reached, after retries. The
    provider's id of the request, if it gave one, is in the message and in `.request_id`."""

    def __init__(self, provider: str, status: int | None, message: str,
                 request_id: str | None = None) -> None:
        where = f"{provider} returned HTTP {status}" if status else f"{provider} failed"
        ticket = f" (request id {request_id})" if request_id else ""
        super().__init__(f"{where}: {message}{ticket}")
        self.provider, self.status, self.message = provider, status, message
        self.request_id = request_id


class RateLimited(ProviderError):
    """The provider kept refusing for rate or capacity (429, 529) after every retry."""


class ProviderTimeout(ProviderError, TimeoutError):
    """The provider did not answer within the timeout, after every retry."""


class Refused(ProviderError):
    """The model refused to answer, or the provider's filters blocked the prompt or the
    answer. `.response` is the Response (billed all the same), whose finish_reason is
    "refused" or "blocked" and whose finish_raw is the provider's own reason."""

    def __init__(self, response: Any) -> None:
        said = f": {response.text[:200]!r}" if response.text else ""
        super().__init__(response.provider, None, f"the answer was {response.finish_reason} "
                         f"({response.finish_raw}){said}", response.request_id)
        self.response = response


class InvalidOutput(ProviderError):
    """The answer did not fit the call's schema=, after every retry: `.text` is the last
    answer as the model wrote it, `.message` says what was wrong with it."""

    def __init__(self, provider: str, text: str, problem: str) -> None:
        super().__init__(provider, None, f"the answer does not fit the schema: {problem}")
        self.text = text
