"""The call: `models(model, prompt)`, its async twin, bound instances and streams.

A request flows one way: request() checks it; send() reserves budget, sends it through
the provider module and the transport, decodes the answer (and validates it, given a
schema=) and records what it cost.
"""


import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from . import _cache, _pace, _schema, _spend, providers
from ._loop import iterate, run
from ._prices import cost
from ._types import Call, Request, Response, Usage
from .errors import ConfigError, InvalidOutput

__all__ = ["Model", "Stream", "models"]

TIMEOUT = 30.0  # seconds without a byte from the server before an attempt is abandoned
RETRIES = 3
Prompt = str | list[dict[str, Any]]


def request(model: str, prompt: Prompt, *, system: str | None = None, api_key: str | None = None,
            base_url: str | None = None, timeout: float = TIMEOUT, retries: int = RETRIES,
            stream: bool = False, cache: Any = None, schema: Any = None, **params: Any) -> Request:
    """Check and normalise one call into a Request (no I/O)."""
    provider, name = providers.resolve(model)
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m
                                                 for m in messages):
        raise TypeError(f"prompt must be a str or a list of {{'role', 'content'}} dicts, "
                        f"not {prompt!r:.60}")
    systems = [system] if system else []  # system= first, then any system messages
    systems += [m["content"] for m in messages if m["role"] == "system"]
    url = providers.base_url(provider, base_url)
    chat = [m for m in messages if m["role"] != "system"]
    store = _cache.store_for(cache, stream)
    if schema is not None and stream:
        raise ConfigError("schema= needs the whole answer: call without streaming")
    return Request(provider, name, chat, params, "\n\n".join(systems) or None, url,
                   providers.key(provider, api_key, url), timeout, retries, stream, store,
                   None if schema is None else _schema.prepare(schema))


async def send(req: Request) -> Response:
    """Send one Request: through its cache when it has one, else straight to the provider."""
    if req.cache is not None:
        return await _cache.through(req, _answer)
    return await _answer(req)


async def _answer(req: Request) -> Response:
    """The answer; one that does not fit the call's schema= is asked for again, up to
    `retries` times (each try is a call of its own in track() and the usage log)."""
    for _ in range(req.retries if req.schema is not None else 0):
        with contextlib.suppress(InvalidOutput):
            return await _send(req)
    return await _send(req)


async def _send(req: Request) -> Response:
    """Reserve budget, wait for a turn, send through the provider, settle and record."""
    provider = providers.module(req.provider)
    url, headers, body = provider.encode(req)
    with _spend.spending(req, body) as call:
        async with _pace.turn(call, body):
            data = await provider.post(call, url, headers, body)
        text, usage = provider.decode(data)
        call.response = _response(call, text, usage, data)
        if req.schema is not None:  # an answer that does not fit raises, recorded as failed
            call.response.parsed = _schema.parse(req.schema, text, req.provider, provider)
    return call.response


def _response(call: Call, text: str, usage: Usage, raw: dict[str, Any]) -> Response:
    """The Response; its latency runs from the first byte sent, not from one-time imports."""
    req, latency = call.request, time.perf_counter() - call.start
    return Response(text, req.model, req.provider, usage, cost(req.provider, req.model, usage),
                    latency, raw)


class Stream:
    """The text of one call as it arrives: iterate it (sync or async) for chunks of text;
    once it ends, `.response` holds the whole Response, usage and cost included."""

    def __init__(self, req: Request) -> None:
        self.request = req
        self.response: Response | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        req, provider = self.request, providers.module(self.request.provider)
        url, headers, body = provider.encode(req)
        parts: list[str] = []
        usage, last = Usage(), {}
        with _spend.spending(req, body) as call:
            async with _pace.turn(call, body):
                try:
                    async for last in provider.events(call, url, headers, body):
                        text, seen = provider.decode_event(last)
                        if seen:  # providers report usage in pieces: keep the latest of each
                            usage = Usage(seen.input_tokens or usage.input_tokens,
                                          seen.output_tokens or usage.output_tokens)
                        if text:
                            parts.append(text)
                            yield text
                finally:  # also when the reader stops early: the provider bills it all the same
                    self.response = call.response = _response(call, "".join(parts), usage, last)
                    if not usage.output_tokens and call.hold:  # usage unknown: the worst case
                        self.response.cost = call.hold[1]

    def __iter__(self) -> Iterator[str]:
        return iterate(self.__aiter__())


class Model:
    """A model with bound settings: `gpt = models.instance("gpt-4o", temperature=0)`,
    then `gpt("hi")`, `await gpt.acall("hi")`, `gpt.stream("hi")`. A call's own settings win.
    """

    def __init__(self, model: str, **defaults: Any) -> None:
        providers.resolve(model)  # fail now, not at the first call
        self.model, self.defaults = model, defaults

    def __call__(self, prompt: Prompt, **params: Any) -> Response:
        return run(self.acall(prompt, **params))

    async def acall(self, prompt: Prompt, **params: Any) -> Response:
        return await send(request(self.model, prompt, **{**self.defaults, **params}))

    def stream(self, prompt: Prompt, **params: Any) -> Stream:
        return Stream(request(self.model, prompt, stream=True, **{**self.defaults, **params}))

    astream = stream  # one Stream serves both: iterate it with `for` or `async for`

    def __repr__(self) -> str:
        settings = "".join(f", {k}={v!r}" for k, v in self.defaults.items() if k != "api_key")
        return f"Model({self.model!r}{settings})"


class Models:
    """`models(model, prompt, **params)` calls a model and returns its Response.

    `model` is 'provider/model' or a well-known bare name (gpt-*, o1/o3/o4*, chatgpt-*,
    claude-*, gemini-*); `prompt` a string or a list of {'role', 'content'} messages.
    Common params: system, temperature, max_tokens, stop. ember's own: api_key, base_url,
    timeout (seconds of silence per attempt, default 30), retries (default 3) and schema
    (a type or JSON-schema dict the answer must fit: the Response's .parsed holds it).
    Every other parameter goes to the provider as it is.
    """

    def __call__(self, model: str, prompt: Prompt, **params: Any) -> Response:
        return run(self.acall(model, prompt, **params))

    async def acall(self, model: str, prompt: Prompt, **params: Any) -> Response:
        return await send(request(model, prompt, **params))

    def stream(self, model: str, prompt: Prompt, **params: Any) -> Stream:
        return Stream(request(model, prompt, stream=True, **params))

    astream = stream

    def instance(self, model: str, **defaults: Any) -> Model:
        return Model(model, **defaults)


models = Models()
