"""The call: `models(model, prompt)`, its async twin, bound instances and streams.

A request flows one way: request() checks it; send() reserves budget, sends it through
the provider module and the transport, decodes the answer (and validates it, given a
schema=) and records what it cost. An answer the model refused or the provider blocked
raises Refused (it is billed all the same).
models.embed takes the same steps, with the texts as the Request's user messages and the
provider's encode_embed/decode_embed (openai and google have them).
A setting ember cannot use is a ConfigError naming it, before anything is sent.
"""


import contextlib
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import astuple
from typing import Any

from . import _cache, _pace, _schema, _spend, providers
from ._loop import iterate, run
from ._prices import cost
from ._types import Call, Finish, Request, Response, Usage, number
from .errors import ConfigError, InvalidOutput, Refused

__all__ = ["Model", "Stream", "models"]

# The official SDKs wait 600 s for a byte (OpenAI, Anthropic: whose SDK refuses a
# non-streaming call expected to pass 10 minutes), so a long answer is never cut short
TIMEOUT = 600.0  # seconds without a byte from the server before an attempt is abandoned
RETRIES = 3
URL = re.compile(r"https?://[^/?#\s]")  # the start of a base URL ember can send to
Prompt = str | list[dict[str, Any]]


def request(model: str, prompt: Prompt, *, system: str | None = None, api_key: str | None = None,
            base_url: str | None = None, timeout: float = TIMEOUT, retries: int = RETRIES,
            deadline: float | None = None, stream: bool = False, cache: Any = None,
            schema: Any = None, **params: Any) -> Request:
    """Check and normalise one call into a Request (no I/O)."""
    provider, name = providers.resolve(model)
    check = ConfigError.check
    systems = [system] if system else []  # system= first, then any system messages
    if isinstance(prompt, str):  # the usual prompt: one user message, nothing to look into
        chat = [{"role": "user", "content": prompt}]
    elif not isinstance(prompt, list) or not all(isinstance(m, dict) for m in prompt):
        raise TypeError(f"prompt must be a str or a list of {{'role', 'content'}} dicts, "
                        f"not {prompt!r:.60}")
    else:
        check(all("role" in m and "content" in m for m in prompt), "prompt", prompt,
              "a str or a list of messages that each have a 'role' and a 'content'")
        systems += [m["content"] for m in prompt if m["role"] == "system"]
        chat = [m for m in prompt if m["role"] != "system"]
    check(all(isinstance(text, str) for text in systems), "system", systems, "text")
    url = providers.base_url(provider, base_url) if isinstance(base_url, (str, type(None))) else ""
    check(provider == "local" or URL.match(url) is not None, "base_url",
          str(url or base_url).rpartition("@")[2], "an http(s) URL such as http://host:8000/v1")
    check(number(timeout, 0.001), "timeout", timeout, "seconds >= 0.001 (default 600)")
    check(deadline is None or number(deadline, 0.001), "deadline", deadline, "seconds or None")
    check(number(retries, 0, whole=True), "retries", retries, "a whole number >= 0")
    max_tokens = params.get("max_tokens", 1)
    check(number(max_tokens, 1, whole=True), "max_tokens", max_tokens, "a whole number >= 1")
    check(api_key is None or (isinstance(api_key, str) and api_key.isprintable()), "api_key", "***",
          "a str without control characters (a key read from a file may end in a newline)")
    store = _cache.store_for(cache, stream)
    if schema is not None and stream:
        raise ConfigError("schema= needs the whole answer: call without streaming")
    return Request(provider, name, chat, params, "\n\n".join(systems) or None, url,
                   providers.key(provider, api_key, url), timeout, retries, stream, store, deadline,
                   None if schema is None else _schema.prepare(schema))


async def send(req: Request) -> Response:
    """Send one Request: through its cache when it has one, else straight to the provider."""
    answer = _send if req.schema is None else _answer
    return await (answer(req) if req.cache is None else _cache.through(req, answer))


async def _answer(req: Request) -> Response:
    """The answer to a call with a schema=: one that does not fit it is asked for again, up
    to `retries` times (each try is a call of its own in track() and the usage log)."""
    for _ in range(req.retries):
        with contextlib.suppress(InvalidOutput):
            return await _send(req)
    return await _send(req)


async def _send(req: Request) -> Response:
    """Reserve budget, wait for a turn, send through the provider, settle and record."""
    provider = providers.module(req.provider)
    url, headers, body = provider.encode(req)
    async with _spend.spending(req, body) as call:
        async with _pace.turn(call, body):  # ends once the usage is known, for its tpm
            data, (text, usage, end) = await provider.post(  # decoded by the transport: an
                call, url, headers, body, decode=lambda data: (data, provider.decode(data)))
            call.response = _response(call, text, usage, end, data)  # odd shape is retried
        _answered(call.response)
        if req.schema is not None:  # an answer that does not fit raises, recorded as failed
            call.response.parsed = _schema.parse(req.schema, text, req.provider, provider)
    return call.response


def _response(call: Call, text: str, usage: Usage | None, end: Finish | None,
              raw: dict[str, Any]) -> Response:
    """The Response; its latency runs from the first byte sent, not from one-time imports."""
    req, latency = call.request, time.perf_counter() - call.start
    reason, said = end or (None, None)
    return Response(text, req.model, req.provider, usage, cost(req.provider, req.model, usage),
                    latency, raw, finish_reason=reason, finish_raw=said, request_id=call.request_id)


def _answered(response: Response) -> None:
    if response.finish_reason in ("refused", "blocked"):
        raise Refused(response)


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
        usage: Usage | None = None
        end: Finish | None = None
        last, done = {}, False
        async with _spend.spending(req, body) as call:
            async with _pace.turn(call, body):
                try:
                    async for last in provider.events(call, url, headers, body):
                        text, seen, stop = provider.decode_event(last)
                        if seen:  # reported in pieces, each count growing: keep the largest
                            usage = Usage(*map(max, astuple(usage or seen), astuple(seen)))
                        end = end or stop  # the first reason said (a refusal, then a stop)
                        if text:
                            call.first_token = call.first_token or time.perf_counter() - call.start
                            parts.append(text)
                            yield text
                    done = True
                finally:  # also when the reader stops early: then the usage is unknown
                    self.response = call.response = _response(
                        call, "".join(parts), usage if done else None, end, last)
            _answered(self.response)

    def __iter__(self) -> Iterator[str]:
        return iterate(self.__aiter__())


class _Hidden(str):
    """A key in a Model's settings: sent as it is, but its repr (and so vars()) hides it."""

    def __repr__(self) -> str:
        return "'***'"


class Model:
    """A model with bound settings: `gpt = models.instance("gpt-4o", temperature=0)`,
    then `gpt("hi")`, `await gpt.acall("hi")`, `gpt.stream("hi")`. A call's own settings win.
    """

    def __init__(self, model: str, **defaults: Any) -> None:
        providers.resolve(model)  # fail now, not at the first call
        if isinstance(defaults.get("api_key"), str):
            defaults["api_key"] = _Hidden(defaults["api_key"])
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
    timeout (seconds of silence per attempt, default 600), retries (default 3), deadline
    (seconds for the whole call, default None), cache (True, seconds to keep, or a store;
    off by default) and schema (a type or JSON-schema dict the answer must fit: the
    Response's .parsed holds it). Every other parameter goes to the provider as it is.
    """

    def __call__(self, model: str, prompt: Prompt, **params: Any) -> Response:
        return run(self.acall(model, prompt, **params))

    async def acall(self, model: str, prompt: Prompt, **params: Any) -> Response:
        return await send(request(model, prompt, **params))

    def stream(self, model: str, prompt: Prompt, **params: Any) -> Stream:
        return Stream(request(model, prompt, stream=True, **params))

    astream = stream

    def embed(self, model: str, texts: list[str], **params: Any) -> Response:
        """Embed `texts` in one request: a Response whose `.vectors` are in the order of
        `texts`, with usage and cost (its `.text` is empty). openai and OpenAI-compatible
        servers (`/embeddings`) and google (`batchEmbedContents`) embed; other params go to
        the provider as they are (dimensions=..., taskType=...). A call like any other:
        budget, pacing, track and the usage log see it; it writes no tokens, so it needs no
        max_tokens under a budget. When the provider reports no token count (Gemini's
        batchEmbedContents may not), the input is estimated at a token per 4 bytes of each
        text, rounded up. Not cached by cache=: put @cache on a function of your own.
        For many texts, see batch() and @batch."""
        return run(self.aembed(model, texts, **params))

    async def aembed(self, model: str, texts: list[str], **params: Any) -> Response:
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"texts must be a non-empty list of strings, not {texts!r:.60}")
        provider = providers.module(providers.resolve(model)[0])
        if not hasattr(provider, "encode_embed") or params.get("cache"):
            raise ConfigError("models.embed takes openai, ollama or google models, and no cache=")
        req = request(model, [{"role": "user", "content": text} for text in texts], **params)
        url, headers, body = provider.encode_embed(req)
        async with (_spend.spending(req, {**body, "max_tokens": 0}) as call,  # writes none
                    _pace.turn(call, body)):  # ends once the usage is known, for its tpm
            data, (vectors, usage) = await provider.post(  # an odd shape is retried
                call, url, headers, body, decode=lambda d: (d, provider.decode_embed(d)))
            estimate = sum((len(text.encode()) + 3) // 4 for text in texts)
            call.response = _response(call, "", usage or Usage(estimate), None, data)
            call.response.vectors = vectors
        return call.response

    instance = Model  # models.instance("gpt-4o", temperature=0) makes a Model


models = Models()
