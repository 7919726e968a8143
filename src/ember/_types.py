"""The three values every call passes along: Request in, Usage and Response out."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Request", "Response", "Usage"]


@dataclass(frozen=True)
class Usage:
    """Tokens of one call, as the provider counted them."""

    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
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


@dataclass
class Response:
    """What a call returns. `cost` is in USD, None when the model's price is unknown.

    The cost is worked out when first read (pricing costs ~50 us, a quarter of a call).
    """

    text: str
    model: str
    provider: str
    usage: Usage
    latency: float
    raw: dict[str, Any] = field(default_factory=dict)
    cached: bool = False

    @functools.cached_property
    def cost(self) -> float | None:
        from ._prices import cost

        return 0.0 if self.cached else cost(self.provider, self.model, self.usage)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        short = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        cost = "unknown" if self.cost is None else f"${self.cost:.6f}"
        return (
            f"Response({short!r}, model='{self.provider}/{self.model}', "
            f"tokens={self.usage.input_tokens}+{self.usage.output_tokens}, cost={cost}, "
            f"latency={self.latency:.3f}s{', cached' if self.cached else ''})"
        )
