"""The values every call passes along: Request in, Usage and Response out, Call between."""


from dataclasses import dataclass, field
from typing import Any

__all__ = ["Call", "Finish", "Json", "Request", "Response", "Usage", "finish", "number"]

Json = dict[str, Any]  # a decoded JSON object: a request body or an answer
Finish = tuple[str, str]  # why an answer ended: (ember's word for it, the provider's own)


def number(value: object, low: float, whole: bool = False) -> bool:
    """Whether a setting is a number from `low` to 1e308, which a float can hold (an int if
    `whole`; never nan, inf or a bool)."""
    return isinstance(value, int if whole else (int, float)) and not isinstance(value, bool) \
        and low <= value <= 1e308


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one call, as the provider counted and billed them, the same for every provider.

    `input_tokens` counts every input token, cached or not (OpenAI's prompt_tokens, Gemini's
    promptTokenCount; for Anthropic, its input_tokens plus its cache reads and writes).
    `cache_read_tokens` and `cache_write_tokens` are the parts of them read from and written
    to the provider's prompt cache, each billed at its own price (a 1-hour Anthropic cache
    write is priced as a 5-minute one). `output_tokens` counts every output token billed,
    reasoning ("thinking") tokens included.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


def finish(said: str | None, words: dict[str, str]) -> Finish | None:
    """Why an answer ended, from the provider's reason and its table of ember's words: "stop",
    "length" (max_tokens reached), "tool_calls", "refused" (by the model), "blocked" (by the
    provider's filters); "other" for a reason not in the table."""
    return (words.get(said, "other"), said) if said else None


@dataclass(slots=True)  # not frozen: that would cost a call about 2 µs (object.__setattr__ a field)
class Request:
    """One call as ember will send it; providers turn it into their wire format."""

    provider: str
    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    system: str | None = None
    base_url: str = ""
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 600.0  # seconds of silence before an attempt is abandoned
    retries: int = 3
    stream: bool = False
    cache: Any = field(default=None, repr=False)  # the store a call is cached in (see _cache)
    deadline: float | None = None  # seconds for the whole call: attempts, waits and stream
    schema: Any = field(default=None, repr=False)  # the _schema.Schema its answer must fit


@dataclass(slots=True)
class Response:
    """What a call returns: `text`, `usage` (None when the provider did not report it, as
    some servers do not in a stream), and `cost` in USD (None when the usage or the model's
    price is unknown). `cached` marks an answer that cost nothing because it was stored.
    `finish_reason` says why it ended, in the same words for every provider (see `finish`;
    None if the provider did not say), `finish_raw` in the provider's own; `request_id` is
    the provider's id of the request (OpenAI's x-request-id, Anthropic's request-id; Gemini
    sends none), for support tickets. `vectors`, one per text in order, is set by
    models.embed and empty otherwise; `parsed` holds the validated value of a call made
    with schema=."""

    text: str
    model: str
    provider: str
    usage: Usage | None
    cost: float | None
    latency: float
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    cached: bool = False
    vectors: list[list[float]] = field(default_factory=list, repr=False)
    finish_reason: str | None = None
    finish_raw: str | None = None
    request_id: str | None = None
    parsed: Any = None

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        short = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        cost = "unknown" if self.cost is None else f"${self.cost:.6f}"
        tokens = f"{u.input_tokens}+{u.output_tokens}" if (u := self.usage) else "unknown"
        return (f"Response({short!r}, model='{self.provider}/{self.model}', tokens={tokens}, "
                f"cost={cost}, latency={self.latency:.3f}s{', cached' if self.cached else ''})")


@dataclass(slots=True)
class Call:
    """What ember learns while one request is under way (filled by the transport)."""

    request: Request
    retries: int = 0
    response: Response | None = None
    hold: Any = None  # the budget reservation, if any
    start: float = 0.0  # time.perf_counter() when the first attempt was sent
    waited: float = 0.0  # seconds spent waiting for a turn under pacing (see _pace)
    request_id: str | None = None  # the provider's id of the request, from its answer's headers
    rate_limited: int = 0  # answers with HTTP 429 among its attempts
    first_token: float | None = None  # a stream's seconds from the first byte sent to its text
