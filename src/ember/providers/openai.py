"""OpenAI Chat Completions, and every server that speaks it (Ollama, vLLM, llama.cpp...).

`max_tokens` is sent as `max_completion_tokens`, which every current OpenAI chat model takes
(its reasoning models refuse `max_tokens`) and so do vLLM and llama.cpp's server; Ollama
knows only `max_tokens`, so the `ollama` provider sends that (the embedded model's llama.cpp
takes either). A refusal comes in the message's `refusal` field, not as a finish reason:
it is reported as the reason "refusal".
"""


from typing import Any

from .._http import events, post
from .._types import Finish, Request, Usage, finish

__all__ = ["decode", "decode_embed", "decode_event", "encode", "encode_embed", "events", "post"]

FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls",
          "function_call": "tool_calls", "content_filter": "blocked", "refusal": "refused"}

OBJECT_ROOT = True  # strict json_schema takes only an object at the root: schemas go boxed


def _headers(req: Request) -> dict[str, str]:
    return {"Authorization": f"Bearer {req.api_key}"} if req.api_key else {}


def encode(req: Request) -> tuple[str, dict[str, str], dict[str, Any]]:
    system = [{"role": "system", "content": req.system}] if req.system else []
    body = {"model": req.model, "messages": system + req.messages, **req.params}
    if req.provider == "openai" and "max_tokens" in body:
        body["max_completion_tokens"] = body.pop("max_tokens")
    if req.stream:
        body.update(stream=True, stream_options={"include_usage": True})
    if req.schema is not None:  # Structured Outputs, strict: the answer is the JSON
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "output", "schema": req.schema.boxed, "strict": True}}
    return f"{req.base_url}/chat/completions", _headers(req), body


def encode_embed(req: Request) -> tuple[str, dict[str, str], dict[str, Any]]:
    """POST /embeddings: the texts (the request's messages) as `input`. Vectors come back
    as JSON floats, the API's default `encoding_format`."""
    body = {"model": req.model, "input": [m["content"] for m in req.messages], **req.params}
    return f"{req.base_url}/embeddings", _headers(req), body


def _usage(data: dict[str, Any]) -> Usage | None:
    if not (usage := data.get("usage")):
        return None
    cache = usage.get("prompt_tokens_details") or {}  # prompt_tokens includes these
    return Usage(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0,
                 cache.get("cached_tokens") or 0, cache.get("cache_write_tokens") or 0)


def decode_event(data: dict[str, Any]) -> tuple[str, Usage | None, Finish | None]:
    """Text, usage and why it ended, of one streamed chunk or of an answer: a chat delta or
    message, or a plain completion (llama.cpp's); a `refusal` is the model's refusal."""
    choice = (data.get("choices") or [{}])[0]
    said = choice.get("message") or choice.get("delta") or {}
    text = choice.get("text") or said.get("content") or said.get("refusal") or ""
    reason = "refusal" if said.get("refusal") else choice.get("finish_reason")
    return str(text), _usage(data), finish(reason, FINISH)


def decode(data: dict[str, Any]) -> tuple[str, Usage | None, Finish | None]:
    """A whole answer, which has a choice (a KeyError if not: an answer of the wrong shape)."""
    data["choices"][0]
    return decode_event(data)


def decode_embed(data: dict[str, Any]) -> tuple[list[list[float]], Usage | None]:
    """The vectors in input order (each item names its `index`), and the usage."""
    ordered = sorted(data["data"], key=lambda item: item["index"])
    return [item["embedding"] for item in ordered], _usage(data)
