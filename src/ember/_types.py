"""The values every call passes along: Request in, Usage and Response out, Call between."""


from dataclasses import dataclass, field
from typing import Any

__all__ = ["Call", "Json", "Request", "Response", "Usage"]

Json = dict[str, Any]  # a decoded JSON object: a request body or an answer


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one call, as the provider counted them."""

    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Request:
    """One call as ember will send it; providers turn it into their wire format."""

    provider: str
    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    system: str | None = None
    base_url: str = ""
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    retries: int = 3
    stream: bool = False
    cache: Any = field(default=None, repr=False)  # the store a call is cached in (see _cache)
    schema: Any = field(default=None, repr=False)  # the _schema.Schema its answer must fit


@dataclass(slots=True)
class Response:
    """What a call returns: `text`, usage, and `cost` in USD, None when the model's price
    is unknown. (`cached` marks an answer that cost nothing because it was stored; `parsed`
    holds the validated value of a call made with schema=.)"""

    text: str
    model: str
    provider: str
    usage: Usage
    cost: float | None
    latency: float
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    cached: bool = False
    parsed: Any = None

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        short = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        cost = "unknown" if self.cost is None else f"${self.cost:.6f}"
        return (f"Response({short!r}, model='{self.provider}/{self.model}', "
                f"tokens={self.usage.input_tokens}+{self.usage.output_tokens}, cost={cost}, "
                f"latency={self.latency:.3f}s{', cached' if self.cached else ''})")


@dataclass(slots=True)
class Call:
    """What ember learns while one request is under way (filled by the transport)."""

    request: Request
    retries: int = 0
    response: Response | None = None
    hold: Any = None  # the budget reservation, if any
    start: float = 0.0  # time.perf_counter() when the first attempt was sent
    waited: float = 0.0  # seconds spent waiting for a turn under pacing (see _pace)
