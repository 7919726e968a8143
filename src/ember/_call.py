"""The call: `models(model, prompt)`, its async twin, bound instances and streams."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from . import providers
from ._loop import iterate, run
from ._types import Request, Response, Usage

__all__ = ["Model", "Stream", "models"]

TIMEOUT = 30.0  # seconds without a byte from the server before an attempt is abandoned
RETRIES = 3


def request(model: str, prompt: str | list[dict[str, Any]], *, system: str | None = None,
            api_key: str | None = None, base_url: str | None = None, timeout: float = TIMEOUT,
            retries: int = RETRIES, stream: bool = False, **params: Any) -> Request:
    """Check and normalise one call into a Request (no I/O)."""
    provider, name = providers.resolve(model)
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt):
        messages = list(prompt)
    else:
        raise TypeError(
            f"prompt must be a str or a list of {{'role', 'content'}} dicts, not {prompt!r:.60}"
        )
    systems = [m["content"] for m in messages if m["role"] == "system"]
    system = "\n\n".join([system, *systems] if system else systems) or None
    url = providers.base_url(provider, base_url)
    return Request(
        provider, name, [m for m in messages if m["role"] != "system"], params, system, url,
        providers.key(provider, api_key, url), timeout, retries, stream,
    )


async def send(req: Request) -> Response:
    """Send one Request to its provider and decode the answer."""
    provider = providers.module(req.provider)
    url, headers, body = provider.encode(req)
    start = time.perf_counter()
    data = await provider.post(req, url, headers, body)
    text, usage = provider.decode(data)
    return Response(text, req.model, req.provider, usage, time.perf_counter() - start, data)


class Stream:
    """The text of one call as it arrives: iterate it (sync or async) for chunks of text;
    once it ends, `.response` holds the whole Response, usage and cost included."""

    def __init__(self, req: Request) -> None:
        self.request = req
        self.response: Response | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        req, provider = self.request, providers.module(self.request.provider)
        url, headers, body = provider.encode(req)
        start, parts, usage = time.perf_counter(), [], Usage()
        last: dict[str, Any] = {}
        async for last in provider.events(req, url, headers, body):
            text, seen = provider.decode_event(last)
            if seen:  # providers report usage in pieces: keep the latest of each count
                usage = Usage(seen.input_tokens or usage.input_tokens,
                              seen.output_tokens or usage.output_tokens)
            if text:
                parts.append(text)
                yield text
        elapsed = time.perf_counter() - start
        self.response = Response("".join(parts), req.model, req.provider, usage, elapsed, last)

    def __iter__(self) -> Iterator[str]:
        return iterate(self.__aiter__())


class Model:
    """A model with bound settings: `gpt = models.instance("gpt-4o", temperature=0)`,
    then `gpt("hi")`, `await gpt.acall("hi")`, `gpt.stream("hi")`. Per-call settings win."""

    def __init__(self, model: str, **defaults: Any) -> None:
        providers.resolve(model)  # fail now, not at the first call
        self.model, self.defaults = model, defaults

    def __call__(self, prompt: str | list[dict[str, Any]], **params: Any) -> Response:
        return run(self.acall(prompt, **params))

    async def acall(self, prompt: str | list[dict[str, Any]], **params: Any) -> Response:
        return await send(request(self.model, prompt, **{**self.defaults, **params}))

    def stream(self, prompt: str | list[dict[str, Any]], **params: Any) -> Stream:
        return Stream(request(self.model, prompt, stream=True, **{**self.defaults, **params}))

    astream = stream  # one Stream serves both: iterate it with `for` or `async for`

    def __repr__(self) -> str:
        settings = "".join(f", {k}={v!r}" for k, v in self.defaults.items() if k != "api_key")
        return f"Model({self.model!r}{settings})"


class _Models:
    """`models(model, prompt, **params)` calls a model and returns its Response.

    `model` is 'provider/model' or a well-known bare name (gpt-*, o1/o3/o4*, chatgpt-*,
    claude-*, gemini-*); `prompt` a string or a list of {'role', 'content'} messages.
    Common params: system, temperature, max_tokens, stop; ember's own: api_key, base_url,
    timeout (seconds of silence per attempt, default 30), retries (default 3). Every other
    parameter goes to the provider as it is.
    """

    def __call__(self, model: str, prompt: str | list[dict[str, Any]], **params: Any) -> Response:
        return run(self.acall(model, prompt, **params))

    async def acall(self, model: str, prompt: str | list[dict[str, Any]],
                    **params: Any) -> Response:
        return await send(request(model, prompt, **params))

    def stream(self, model: str, prompt: str | list[dict[str, Any]], **params: Any) -> Stream:
        return Stream(request(model, prompt, stream=True, **params))

    astream = stream

    def instance(self, model: str, **defaults: Any) -> Model:
        return Model(model, **defaults)

    def __repr__(self) -> str:
        return "<ember.models: models(model, prompt, **params) -> Response>"


models = _Models()
