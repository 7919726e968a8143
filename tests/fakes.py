"""Fake OpenAI, Anthropic and Gemini servers for tests: real wire formats, faults, recording.

Each server listens on 127.0.0.1 only, on a random port, in a background thread with its own
event loop::

    with openai_server(reply_text="hi") as srv:
        srv.fail(429, "hang")  # the next request gets a 429; the one after, no answer at all
        ...  # point the client at srv.base_url, then inspect srv.requests

Wire facts checked against public copies of the sources named here (Nov 2025):

OpenAI (base ``url + "/v1"``)
  * Chunks are ``chat.completion.chunk``. The first has ``delta.role``, the last an empty delta
    and ``finish_reason``. With ``stream_options.include_usage`` a final chunk has
    ``"choices": []`` and the usage, and all other chunks have ``"usage": null``. Then
    ``data: [DONE]`` (OpenAPI text in docs.rs/openai-struct ChatCompletionStreamOptions).
  * Errors: ``{"error": {message, type, param, code}}``. With no key the message is "You didn't
    provide an API key..." (code null); "Incorrect API key provided" (code invalid_api_key) is
    for a wrong key (openai/openai-python#1434). A 429 has type ``requests`` and code
    ``rate_limit_exceeded``. A mid-stream error is ``data: {"error": {...}}``
    (openai-python src/openai/_streaming.py raises on it).
  * ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` give resets as "1s" or "6m0s"
    (rate-limits guide); ``retry-after`` and ``retry-after-ms`` come on a 429 (wrtnlabs/autobe#136).
  * Embeddings: ``{object: "list", data: [{object: "embedding", index, embedding}], model,
    usage: {prompt_tokens, total_tokens}}`` (developers.openai.com reference). With
    ``encoding_format="base64"``, the SDK's default, vectors come as base64 float32 LE.
Anthropic (base ``url``)
  * A stream runs message_start, content_block_start, ping, content_block_delta (text_delta)...,
    content_block_stop, message_delta (stop_reason, usage.output_tokens), message_stop. Each
    ``event:`` name equals the data's ``type``. An in-stream error is ``event: error`` with
    overloaded_error, which is 529 outside a stream (docs.anthropic.com api/messages-streaming).
  * Errors: ``{type: "error", error: {type, message}, request_id}``. The types are 400
    invalid_request_error, 401 authentication_error, 403 permission_error, 404 not_found_error,
    413 request_too_large, 429 rate_limit_error, 500 api_error and 529 overloaded_error (API
    errors page). "x-api-key header is required" is a 401 (n8n-io/n8n#37930).
    "anthropic-version: header is required" is a 400 (Pasta-Devs/Marinara-Engine#120).
  * ``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`` give resets in RFC 3339.
    ``retry-after`` is in seconds (docs.anthropic.com api/rate-limits). Replies carry ``request-id``.
Gemini (base ``url``; paths ``/v1beta/models/{model}:{method}``)
  * Replies have candidates[{content: {role: "model", parts: [{text}]}, finishReason, index}],
    usageMetadata{promptTokenCount, candidatesTokenCount, totalTokenCount}, modelVersion and
    responseId (generativelanguage v1beta GenerateContentResponse). ``?alt=sse`` streams
    ``data: {GenerateContentResponse}``. Only the last event has finishReason and the full
    counts. Without ``alt=sse`` the chunks come as one JSON array (discuss.google.dev #146282).
    Events end in CRLF CRLF. This is not documented, but Google's JS SDK parser accepts it.
  * Errors: ``{error: {code, message, status}}``. The statuses are 400 INVALID_ARGUMENT, 403
    PERMISSION_DENIED, 404 NOT_FOUND, 429 RESOURCE_EXHAUSTED, 500 INTERNAL, 503 UNAVAILABLE and
    504 DEADLINE_EXCEEDED (ai.google.dev gemini-api/docs/troubleshooting). No key gives a 403
    "Method doesn't allow unregistered callers..." (PublicAffairs/openai-gemini#92). A wrong key
    gives a 400 "API key not valid..." with ErrorInfo API_KEY_INVALID (continuedev/continue#10290).
    There are no rate-limit headers. A real 429 may add a RetryInfo ``retryDelay`` detail; it
    is left out here, so use ``Fault(body=...)``. batchEmbedContents returns
    ``{embeddings: [{values}]}``.
Structured output (schemas checked as each provider documents them; the error texts are close,
not verbatim)
  * OpenAI ``response_format: {type: "json_schema", json_schema: {name, schema, strict}}``; the
    name matches ``[a-zA-Z0-9_-]{1,64}``. With ``strict: true`` the root is an object, every
    object has ``additionalProperties: false`` and lists every property in ``required``, and
    ``default`` is not permitted (Structured Outputs guide "Supported schemas";
    567-labs/instructor#1074). The answer is the JSON, in ``message.content``.
  * Anthropic ``output_config: {format: {type: "json_schema", schema}}``, generally available
    with no beta header (the beta ``output_format`` moved there); every object needs
    ``additionalProperties: false`` (platform.claude.com structured-outputs). The JSON comes as
    the text block.
  * Gemini ``generationConfig.responseJsonSchema`` (standard JSON Schema, any root) needs
    ``responseMimeType: "application/json"`` and excludes ``responseSchema`` (google-genai
    GenerateContentConfig). The JSON comes as the part's text.
Plain int faults add no ``retry-after``. Recorded header names are lower-cased.

Usage, finish reasons, quota (checked against openai-python, anthropic-sdk-python and
googleapis/python-genai types, Aug 2026, and the issues named):
  * OpenAI ``usage`` has ``prompt_tokens_details.cached_tokens`` (included in prompt_tokens) and
    ``completion_tokens_details.reasoning_tokens`` (included in completion_tokens). A refusal
    is ``message.refusal`` (``delta.refusal`` in a stream) with content null and finish_reason
    "stop"; finish reasons are stop, length, tool_calls, content_filter, function_call.
    Reasoning models (o1, o3, o4, gpt-5) answer 400 ``unsupported_parameter`` to ``max_tokens``.
    An exhausted quota is a 429 ``insufficient_quota`` (QUOTA_EXHAUSTED). llama-cpp-python's
    server ignores ``stream_options``: its streams carry no usage (``stream_usage = False``).
  * Anthropic ``usage.input_tokens`` leaves out ``cache_read_input_tokens`` and
    ``cache_creation_input_tokens``; message_delta's usage is cumulative. stop_reason is
    end_turn, max_tokens, stop_sequence, tool_use, pause_turn, refusal or
    model_context_window_exceeded.
  * Gemini ``usageMetadata.promptTokenCount`` includes ``cachedContentTokenCount``;
    ``candidatesTokenCount`` leaves out ``thoughtsTokenCount``. A candidate stopped for SAFETY
    (and the like) has no ``content``; a blocked prompt gets no candidates and
    ``promptFeedback.blockReason``. A 429 RESOURCE_EXHAUSTED carries a RetryInfo ``retryDelay``
    such as "22s" in ``error.details`` (Roo-Code #8012; ``gemini_retry_body``).
Set ``cached = (read, write)``, ``reasoning`` (both parts of ``usage``) and ``finish`` (the
provider's own reason) on any server to answer with them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

__all__ = [
    "QUOTA_EXHAUSTED",
    "AnthropicServer",
    "FakeProvider",
    "Fault",
    "GeminiServer",
    "OpenAIServer",
    "Recorded",
    "anthropic_server",
    "gemini_retry_body",
    "gemini_server",
    "openai_server",
]

HANG_LIMIT = 120.0  # a "hang" drops the connection after this long even if close() never comes
_KINDS = ("truncate", "hang", "disconnect", "stream-error")


@dataclass(frozen=True)
class Recorded:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    json: Any | None  # parsed body, or None when empty or not JSON
    body: bytes
    at: float  # time.monotonic() on arrival


@dataclass(frozen=True)
class Fault:
    """A custom failure: ``body`` None uses the provider's own error body for ``status``;
    a dict or list is sent as JSON, a str or bytes as is."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None


Step = int | Fault | str


class FakeProvider:
    """One server on 127.0.0.1:<random port>, run by aiohttp in a background thread."""

    name = "fake"
    _frames_before_error = 1  # a "stream-error" sends this many frames, then the error event
    cached: tuple[int, int] = (0, 0)  # of usage's input tokens: read from, written to the cache
    reasoning = 0  # of usage's output tokens: spent on reasoning
    finish: str | None = None  # the provider's own stop reason, in place of its normal one

    def __init__(
        self,
        *,
        reply_text: str = "Hello from fake",
        usage: tuple[int, int] = (12, 5),
        latency: float = 0.0,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
        stream_delay: float = 0.0,
        embedding_dim: int = 8,
    ) -> None:
        self.reply_text, self.usage, self.latency = reply_text, usage, latency
        self.headers: dict[str, str] = dict(headers or {})
        self.api_key = api_key  # when set, any other key is refused like a wrong key
        self.stream_delay = stream_delay  # seconds between streamed events
        self.embedding_dim = embedding_dim
        self.requests: list[Recorded] = []
        self._faults: deque[Step] = deque()
        self._replies: deque[str] = deque()
        self._lock = threading.Condition()
        self._closed = False
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"fake-{self.name}", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._start_error is not None:
            raise RuntimeError(f"fake {self.name} server failed to start") from self._start_error

    # ---- public API -----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return self.url

    def fail(self, *steps: Step) -> None:
        """Queue faults, used one per request (whatever its path) in order; then normal answers resume.

        A step is an int status (that status with the provider's own error body), a Fault,
        "truncate" (200, application/json, the normal JSON answer cut in half, even for a stream
        request), "hang" (no answer until close(), or HANG_LIMIT seconds), "disconnect" (the
        connection closed with no response), or "stream-error" (a stream request gets its first
        text chunk, then the provider's in-stream error event; a non-stream request gets the
        matching status instead: OpenAI 500, Anthropic 529, Gemini 503).
        """
        for step in steps:
            if not (isinstance(step, (int, Fault)) or step in _KINDS):
                raise ValueError(
                    f"unknown fault {step!r}; use an int status, a Fault or one of {_KINDS}"
                )
        with self._lock:
            self._faults.extend(steps)

    def replies(self, *texts: str) -> None:
        """The next answers say these texts, one per answer in order; the last one stays."""
        with self._lock:
            self._replies.extend(texts)

    @property
    def pending(self) -> int:
        """How many queued faults have not been used yet."""
        with self._lock:
            return len(self._faults)

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        """Block until at least ``count`` requests have arrived; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self.requests) >= count, timeout)

    def ratelimit_headers(
        self,
        requests: tuple[int, int] = (100, 99),
        tokens: tuple[int, int] = (10_000, 9_000),
        reset: float = 1.0,
    ) -> dict[str, str]:
        """Realistic rate-limit headers, (limit, remaining) each, for ``headers`` or a Fault."""
        return {}

    def close(self) -> None:
        """Stop the server: hanging requests are dropped, and the thread is joined."""
        if self._closed:
            return
        self._closed = True
        if self._loop.is_running():
            with contextlib.suppress(Exception):  # closing must not fail a test
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> FakeProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- server lifecycle ------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as exc:  # reported by __init__
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.close()

    async def _start(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        self._sock.listen(128)
        await web.SockSite(self._runner, self._sock).start()

    async def _shutdown(self) -> None:
        self._stop.set()
        await self._runner.cleanup()

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the server stops."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), seconds)

    # ---- request handling ------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        rec = Recorded(
            request.method,
            request.path,
            dict(request.query),
            {k.lower(): v for k, v in request.headers.items()},
            body,
            raw,
            time.monotonic(),
        )
        with self._lock:
            self.requests.append(rec)
            self._lock.notify_all()
            step = self._faults.popleft() if self._faults else None
            if step is None and self._replies:
                self.reply_text = self._replies.popleft()
        await self._pause(self.latency)
        route = self._route(request)
        model = (route[1] if route else "") or (
            str(body.get("model", "")) if isinstance(body, dict) else ""
        )
        if step == "hang":
            await self._pause(HANG_LIMIT)
            return self._drop(request)
        if step == "disconnect":
            return self._drop(request)
        if isinstance(step, (int, Fault)):
            return self._fault(step if isinstance(step, Fault) else Fault(step), model)
        if route is None:
            return self._error(404, self._unknown_path(request), model)
        refused = self._auth(request)
        if refused is not None:
            return refused
        problem = self._check(route[0], body, raw)
        if problem is not None:
            return self._error(400, problem, model)
        assert isinstance(body, dict)
        stream = self._is_stream(route[0], body, request)
        if step == "truncate":
            text = json.dumps(self._answer(route[0], model, body))
            return web.Response(
                body=text[: len(text) // 2].encode(), content_type="application/json"
            )
        if step == "stream-error" and not stream:
            return self._error(self._stream_error_status, None, model)
        if not stream:
            return web.json_response(
                self._answer(route[0], model, body), headers=self._ok_headers()
            )
        frames = self._chat_frames(model, body, request)
        cut = self._frames_before_error if step == "stream-error" else None
        return await self._stream(request, frames, cut, self._error_frame(request))

    def _drop(self, request: web.Request) -> web.StreamResponse:
        """Close the connection without a response."""
        if request.transport is not None:
            request.transport.close()
        raise asyncio.CancelledError  # aiohttp treats this as a client gone: nothing is logged or sent

    def _fault(self, fault: Fault, model: str) -> web.Response:
        if fault.body is None:
            resp = self._error(fault.status, None, model)
            resp.headers.update(fault.headers)
            return resp
        data = fault.body if isinstance(fault.body, (str, bytes)) else json.dumps(fault.body)
        data = data.encode() if isinstance(data, str) else data
        headers = {"Content-Type": "application/json", **fault.headers}
        return web.Response(status=fault.status, body=data, headers=headers)

    def _error(self, status: int, message: str | None, model: str = "") -> web.Response:
        return web.json_response(
            self._error_body(status, message, model), status=status, headers=self._id_headers()
        )

    async def _stream(
        self, request: web.Request, frames: list[bytes], cut: int | None, error: bytes
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": self._stream_type(request),
                "Cache-Control": "no-cache",
                **self._ok_headers(),
            }
        )
        try:
            await resp.prepare(request)
            for i, frame in enumerate(frames):
                if i == cut:
                    await resp.write(error)
                    break
                if i:
                    await self._pause(self.stream_delay)
                await resp.write(frame)
            await resp.write_eof()
        except ConnectionError:  # the client went away mid-stream
            pass
        return resp

    def _ok_headers(self) -> dict[str, str]:
        return {**self._id_headers(), **self.headers}

    def _vector(self, text: str) -> list[float]:
        digest = hashlib.sha256(text.encode()).digest()
        while len(digest) < self.embedding_dim:
            digest += hashlib.sha256(digest).digest()
        return [round(b / 127.5 - 1.0, 6) for b in digest[: self.embedding_dim]]

    # ---- per provider ------------------------------------------------------------------------
    _stream_error_status = 500

    def _route(self, request: web.Request) -> tuple[str, str] | None:
        raise NotImplementedError

    def _auth(self, request: web.Request) -> web.Response | None:
        raise NotImplementedError

    def _check(self, kind: str, body: Any, raw: bytes) -> str | None:
        raise NotImplementedError

    def _is_stream(self, kind: str, body: dict[str, Any], request: web.Request) -> bool:
        return kind == "chat" and body.get("stream") is True

    def _answer(self, kind: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _chat_frames(self, model: str, body: dict[str, Any], request: web.Request) -> list[bytes]:
        raise NotImplementedError

    def _error_frame(self, request: web.Request) -> bytes:
        raise NotImplementedError

    def _error_body(self, status: int, message: str | None, model: str) -> dict[str, Any]:
        raise NotImplementedError

    def _unknown_path(self, request: web.Request) -> str:
        return "Not Found"

    def _id_headers(self) -> dict[str, str]:
        return {}

    def _stream_type(self, request: web.Request) -> str:
        return "text/event-stream; charset=utf-8"


def _split3(text: str) -> list[str]:
    """Split text into about three pieces, at spaces where possible; they join back to text."""
    n, pieces, start = len(text), [], 0
    for cut in (n // 3, 2 * n // 3):
        space = text.find(" ", cut)
        cut = space if start < space < n else max(cut, start)
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return [p for p in pieces if p] or [""]


def _schema_problem(schema: Any, all_required: bool, context: tuple[str, ...] = ()) -> str | None:
    """The first breach of strict structured-output rules in a JSON schema, else None: every
    object closed (both providers), every property required and no ``default`` (OpenAI)."""
    if not isinstance(schema, dict):
        return None
    if all_required and "default" in schema:
        return f"In context={context}, 'default' is not permitted."
    if schema.get("type") == "object":
        if schema.get("additionalProperties") is not False:
            return f"In context={context}, 'additionalProperties' is required to be supplied and to be false."
        missing = [k for k in schema.get("properties", {}) if k not in schema.get("required", [])]
        if all_required and missing:
            return (
                f"In context={context}, 'required' is required to be supplied and to be an "
                f"array including every key in properties. Missing '{missing[0]}'."
            )
    parts = [
        (f"{key}", name, sub)
        for key in ("properties", "$defs")
        for name, sub in (schema.get(key) or {}).items()
    ]
    parts += [
        (key, str(n), sub)
        for key in ("anyOf", "allOf")
        for n, sub in enumerate(schema.get(key) or [])
    ]
    parts += [("items", "", schema["items"])] if isinstance(schema.get("items"), dict) else []
    for key, name, sub in parts:
        found = _schema_problem(
            sub, all_required, (*context, key, name) if name else (*context, key)
        )
        if found:
            return found
    return None


def _data(obj: Any, event: str | None = None, end: str = "\n\n") -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(obj)}{end}".encode()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}m{secs:g}s" if minutes else f"{secs:g}s"


_OPENAI_ERRORS = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided: sk-fake***. "
        "You can find your API key at https://platform.openai.com/account/api-keys.",
    ),
    403: (
        "request_forbidden",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model `{model}` does not exist or you do not have access to it.",
    ),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for {model} in organization "
        "org-fake on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field "
    "(with blank username) if you're accessing the API from your browser and are prompted for "
    "a username and password. You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)


_UNSUPPORTED = (
    "Unsupported parameter: 'max_tokens' is not supported with this model. "
    "Use 'max_completion_tokens' instead."
)
QUOTA_EXHAUSTED = {  # OpenAI's 429 when the account has no credit left
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details. "
        "For more information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
}


def gemini_retry_body(delay: str) -> dict[str, Any]:
    """Gemini's 429 RESOURCE_EXHAUSTED, with its wait in a RetryInfo detail (e.g. "22s")."""
    return {
        "error": {
            "code": 429,
            "message": "You exceeded your current quota, please check your plan and billing "
            "details. For more information on this error, head to: "
            "https://ai.google.dev/gemini-api/docs/rate-limits.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": "generativelanguage.googleapis.com/"
                            "generate_content_free_tier_requests",
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                            "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                            "quotaValue": "10",
                        }
                    ],
                },
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [
                        {
                            "description": "Learn more about Gemini API quotas",
                            "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                        }
                    ],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
            ],
        }
    }


class OpenAIServer(FakeProvider):
    name = "openai"
    _frames_before_error = 2  # the role chunk and the first text chunk
    stream_usage = True  # False: ignore stream_options, as llama-cpp-python's server does

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def ratelimit_headers(
        self,
        requests: tuple[int, int] = (100, 99),
        tokens: tuple[int, int] = (10_000, 9_000),
        reset: float = 1.0,
    ) -> dict[str, str]:
        out: dict[str, str] = {}
        for kind, (limit, left) in (("requests", requests), ("tokens", tokens)):
            out |= {
                f"x-ratelimit-limit-{kind}": str(limit),
                f"x-ratelimit-remaining-{kind}": str(left),
                f"x-ratelimit-reset-{kind}": _duration(reset),
            }
        return out

    def _route(self, request: web.Request) -> tuple[str, str] | None:
        kinds = {"/v1/chat/completions": "chat", "/v1/embeddings": "embed"}
        kind = kinds.get(request.path) if request.method == "POST" else None
        return (kind, "") if kind else None

    def _auth(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.startswith("Bearer ") else ""
        if not token:
            return web.json_response(
                {
                    "error": {
                        "message": _NO_KEY,
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
                status=401,
                headers=self._id_headers(),
            )
        if self.api_key is not None and token != self.api_key:
            return self._error(
                401,
                f"Incorrect API key provided: {token[:3]}***{token[-4:]}. You can "
                "find your API key at https://platform.openai.com/account/api-keys.",
            )
        return None

    def _check(self, kind: str, body: Any, raw: bytes) -> str | None:
        if not isinstance(body, dict):
            return (
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
            )
        if not body.get("model"):
            return "you must provide a model parameter"
        if kind == "chat" and "max_tokens" in body and re.match(r"o\d|gpt-5", body["model"]):
            return _UNSUPPORTED
        need = "messages" if kind == "chat" else "input"
        if need not in body:
            return f"Missing required parameter: '{need}'."
        shape = body.get("response_format") or {}
        if shape.get("type") != "json_schema":
            return None
        spec = shape.get("json_schema") or {}
        if not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", str(spec.get("name", ""))):
            return "Invalid 'response_format.json_schema.name': string does not match pattern."
        schema = spec.get("schema") or {}
        problem = None
        if spec.get("strict") and schema.get("type") != "object":
            problem = f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{schema.get('type')}\"'."
        elif spec.get("strict"):
            problem = _schema_problem(schema, all_required=True)
        return (
            f"Invalid schema for response_format '{spec['name']}': {problem}" if problem else None
        )

    def _answer(self, kind: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
        model, i = body["model"], self.usage[0]
        if kind == "embed":
            raw = body["input"]
            items = (
                [raw] if isinstance(raw, str) or (raw and isinstance(raw[0], int)) else list(raw)
            )
            b64 = body.get("encoding_format") == "base64"
            data = []
            for n, item in enumerate(items):
                vec: Any = self._vector(item if isinstance(item, str) else json.dumps(item))
                if b64:
                    vec = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
                data.append({"object": "embedding", "index": n, "embedding": vec})
            return {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": i, "total_tokens": i},
            }
        message = {"role": "assistant", "content": self.reply_text, "refusal": None}
        if self.finish == "refusal":  # not a finish reason: the refusal replaces the content
            message.update(content=None, refusal=self.reply_text)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self._finish_reason(),
                }
            ],
            "usage": self._usage(),
        }

    def _finish_reason(self) -> str:
        return "stop" if self.finish in (None, "refusal") else str(self.finish)

    def _usage(self) -> dict[str, Any]:
        (i, o), (read, _) = self.usage, self.cached
        return {
            "prompt_tokens": i,
            "completion_tokens": o,
            "total_tokens": i + o,
            "prompt_tokens_details": {"cached_tokens": read, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _chat_frames(self, model: str, body: dict[str, Any], request: web.Request) -> list[bytes]:
        asked = bool((body.get("stream_options") or {}).get("include_usage"))
        with_usage = asked and self.stream_usage
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body["model"],
            "system_fingerprint": None,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            out = {
                **base,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            return _data(out | {"usage": None} if with_usage else out)

        said = "refusal" if self.finish == "refusal" else "content"
        frames = [chunk({"role": "assistant", "content": "", "refusal": None})]
        frames += [chunk({said: part}) for part in _split3(self.reply_text)]
        frames.append(chunk({}, self._finish_reason()))
        if with_usage:
            frames.append(_data({**base, "choices": [], "usage": self._usage()}))
        return [*frames, b"data: [DONE]\n\n"]

    def _error_frame(self, request: web.Request) -> bytes:
        return _data({"error": self._error_body(500, None, "")["error"]})

    def _error_body(self, status: int, message: str | None, model: str) -> dict[str, Any]:
        kind, code, default = _OPENAI_ERRORS.get(status, ("api_error", None, f"HTTP {status}"))
        param = None
        if message == _UNSUPPORTED:
            param, code = "max_tokens", "unsupported_parameter"
        return {
            "error": {
                "message": message or default.format(model=model or "gpt-4o-mini"),
                "type": kind,
                "param": param,
                "code": code,
            }
        }

    def _unknown_path(self, request: web.Request) -> str:
        return f"Invalid URL ({request.method} {request.path})"

    def _id_headers(self) -> dict[str, str]:
        return {"x-request-id": f"req_{uuid.uuid4().hex}"}


_ANTHROPIC_ERRORS = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "model: {model}"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


class AnthropicServer(FakeProvider):
    name = "anthropic"
    _frames_before_error = 4  # message_start, content_block_start, ping, first text delta
    _stream_error_status = 529

    def ratelimit_headers(
        self,
        requests: tuple[int, int] = (100, 99),
        tokens: tuple[int, int] = (10_000, 9_000),
        reset: float = 1.0,
    ) -> dict[str, str]:
        at = (datetime.now(UTC) + timedelta(seconds=reset)).strftime("%Y-%m-%dT%H:%M:%SZ")
        out: dict[str, str] = {}
        for kind, (limit, left) in (("requests", requests), ("tokens", tokens)):
            out |= {
                f"anthropic-ratelimit-{kind}-limit": str(limit),
                f"anthropic-ratelimit-{kind}-remaining": str(left),
                f"anthropic-ratelimit-{kind}-reset": at,
            }
        return out

    def _route(self, request: web.Request) -> tuple[str, str] | None:
        return ("chat", "") if request.method == "POST" and request.path == "/v1/messages" else None

    def _auth(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("x-api-key")
        if not key:
            return self._error(401, "x-api-key header is required")
        if self.api_key is not None and key != self.api_key:
            return self._error(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self._error(400, "anthropic-version: header is required")
        return None

    def _check(self, kind: str, body: Any, raw: bytes) -> str | None:
        if not isinstance(body, dict):
            return "There was an error parsing the body of your request."
        missing = [f for f in ("model", "max_tokens", "messages") if f not in body]
        if missing:
            return f"{missing[0]}: Field required"
        shape = (body.get("output_config") or {}).get("format")
        if shape is None:
            return None
        if shape.get("type") != "json_schema" or not isinstance(shape.get("schema"), dict):
            return "output_config.format: Input tag does not match the expected tag 'json_schema'"
        problem = _schema_problem(shape["schema"], all_required=False)
        return f"output_config.format.schema: {problem}" if problem else None

    def _message(
        self, model: str, content: list[Any], stop: str | None, out_tokens: int
    ) -> dict[str, Any]:
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {
                "input_tokens": self.usage[0] - sum(self.cached),  # the cache is not in here
                "cache_creation_input_tokens": self.cached[1],
                "cache_read_input_tokens": self.cached[0],
                "output_tokens": out_tokens,
            },
        }

    def _answer(self, kind: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._message(
            body["model"],
            [{"type": "text", "text": self.reply_text}],
            self.finish or "end_turn",
            self.usage[1],
        )

    def _chat_frames(self, model: str, body: dict[str, Any], request: web.Request) -> list[bytes]:
        def event(obj: dict[str, Any]) -> bytes:
            return _data(obj, event=obj["type"])

        frames = [
            event({"type": "message_start", "message": self._message(body["model"], [], None, 1)}),
            event(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                }
            ),
            event({"type": "ping"}),
        ]
        frames += [
            event(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": part},
                }
            )
            for part in _split3(self.reply_text)
        ]
        return [
            *frames,
            event({"type": "content_block_stop", "index": 0}),
            event(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self.finish or "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": self.usage[1]},
                }
            ),
            event({"type": "message_stop"}),
        ]

    def _error_frame(self, request: web.Request) -> bytes:
        return _data(
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            event="error",
        )

    def _error_body(self, status: int, message: str | None, model: str) -> dict[str, Any]:
        fallback = (
            ("api_error", "Internal server error")
            if status >= 500
            else ("invalid_request_error", "Error")
        )
        kind, default = _ANTHROPIC_ERRORS.get(status, fallback)
        return {
            "type": "error",
            "error": {"type": kind, "message": message or default.format(model=model)},
            "request_id": f"req_{uuid.uuid4().hex[:24]}",
        }

    def _id_headers(self) -> dict[str, str]:
        return {"request-id": f"req_{uuid.uuid4().hex[:24]}"}


_GEMINI_ERRORS = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: (
        "NOT_FOUND",
        "models/{model} is not found for API version v1beta, or is not supported for "
        "generateContent. Call ListModels to see the list of available models and their supported methods.",
    ),
    429: (
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    500: (
        "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}
_GEMINI_PATH = re.compile(r"^/v1(?:beta)?/models/([^/:]+):(\w+)$")
_GEMINI_METHODS = {
    "generateContent": "chat",
    "streamGenerateContent": "stream",
    "batchEmbedContents": "embed",
}


class GeminiServer(FakeProvider):
    name = "gemini"
    _stream_error_status = 503
    block_prompt: str | None = None  # a blockReason: the prompt is refused, with no candidates

    def _route(self, request: web.Request) -> tuple[str, str] | None:
        match = _GEMINI_PATH.match(request.path) if request.method == "POST" else None
        kind = _GEMINI_METHODS.get(match.group(2)) if match else None
        return (kind, match.group(1)) if kind and match else None

    def _auth(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return self._error(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call this API.",
            )
        if self.api_key is not None and key != self.api_key:
            resp = self._error_body(400, "API key not valid. Please pass a valid API key.", "")
            resp["error"]["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ]
            return web.json_response(resp, status=400)
        return None

    def _check(self, kind: str, body: Any, raw: bytes) -> str | None:
        if not isinstance(body, dict):
            return f"Invalid JSON payload received. Unexpected token.\n{raw[:40]!r}"
        need = "requests" if kind == "embed" else "contents"
        if not body.get(need):
            return f"* GenerateContentRequest.{need}: {need} is not specified\n"
        config = body.get("generationConfig") or {}
        if "responseJsonSchema" in config and "responseSchema" in config:
            return "responseJsonSchema and responseSchema cannot both be set."
        if "responseJsonSchema" in config and config.get("responseMimeType") != "application/json":
            return "* GenerateContentRequest.generation_config.response_mime_type: must be application/json when response_json_schema is set\n"
        return None

    def _is_stream(self, kind: str, body: dict[str, Any], request: web.Request) -> bool:
        return kind == "stream"

    def _answer(self, kind: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
        def text(content: Mapping[str, Any]) -> str:
            return "".join(p.get("text", "") for p in content.get("parts", []))

        if kind == "embed":
            return {
                "embeddings": [
                    {"values": self._vector(text(r.get("content", {})))} for r in body["requests"]
                ]
            }
        return self._chunk(model, self.reply_text, True, f"{uuid.uuid4().hex[:22]}")

    def _chunk(self, model: str, text: str, last: bool, rid: str) -> dict[str, Any]:
        (i, o), (read, _) = self.usage, self.cached
        candidate: dict[str, Any] = {
            "content": {"role": "model", "parts": [{"text": text}]},
            "index": 0,
        }
        usage = {"promptTokenCount": i, "candidatesTokenCount": o - self.reasoning}
        usage |= {"totalTokenCount": i + o, "thoughtsTokenCount": self.reasoning}
        usage |= {"cachedContentTokenCount": read} if read else {}
        if not self.reasoning:  # proto3 JSON leaves out zero counts
            del usage["thoughtsTokenCount"]
        if last:
            candidate["finishReason"] = self.finish or "STOP"
            if self.finish not in (None, "STOP", "MAX_TOKENS"):  # stopped by a filter: no content
                del candidate["content"]
                candidate["safetyRatings"] = [
                    {
                        "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                        "probability": "HIGH",
                        "blocked": True,
                    }
                ]
        else:
            usage = {"promptTokenCount": i, "totalTokenCount": i}
        answer = {"candidates": [candidate]}
        if self.block_prompt:
            answer = {"promptFeedback": {"blockReason": self.block_prompt}}
            usage = {"promptTokenCount": i, "totalTokenCount": i}
        return {**answer, "usageMetadata": usage, "modelVersion": model, "responseId": rid}

    def _chat_frames(self, model: str, body: dict[str, Any], request: web.Request) -> list[bytes]:
        parts, rid = _split3(self.reply_text), uuid.uuid4().hex[:22]
        if self.block_prompt:
            parts = [""]
        chunks = [self._chunk(model, p, n == len(parts) - 1, rid) for n, p in enumerate(parts)]
        if request.query.get("alt") == "sse":
            return [_data(c, end="\r\n\r\n") for c in chunks]
        texts = [("[" if n == 0 else ",\r\n") + json.dumps(c) for n, c in enumerate(chunks)]
        return [t.encode() for t in texts] + [b"]"]

    def _error_frame(self, request: web.Request) -> bytes:
        error = self._error_body(503, None, "")
        if request.query.get("alt") == "sse":
            return _data(error, end="\r\n\r\n")
        return f",\r\n{json.dumps(error)}]".encode()

    def _stream_type(self, request: web.Request) -> str:
        return (
            "text/event-stream"
            if request.query.get("alt") == "sse"
            else "application/json; charset=UTF-8"
        )

    def _error_body(self, status: int, message: str | None, model: str) -> dict[str, Any]:
        fallback = (
            ("INTERNAL", "Internal error") if status >= 500 else ("FAILED_PRECONDITION", "Error")
        )
        kind, default = _GEMINI_ERRORS.get(status, fallback)
        return {
            "error": {
                "code": status,
                "message": message or default.format(model=model or "unknown"),
                "status": kind,
            }
        }


def openai_server(**kw: Any) -> OpenAIServer:
    return OpenAIServer(**kw)


def anthropic_server(**kw: Any) -> AnthropicServer:
    return AnthropicServer(**kw)


def gemini_server(**kw: Any) -> GeminiServer:
    return GeminiServer(**kw)
