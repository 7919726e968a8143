"""OpenAI Chat Completions, and every server that speaks it (Ollama, vLLM, llama.cpp...)."""


from typing import Any

from .._http import events, post
from .._types import Request, Usage

__all__ = ["decode", "decode_event", "encode", "events", "messages", "post", "usage"]

OBJECT_ROOT = True  # strict json_schema takes only an object at the root: schemas go boxed


def messages(req: Request) -> list[dict[str, Any]]:
    """The chat messages with the system prompt first, as OpenAI-style servers take them."""
    system = [{"role": "system", "content": req.system}] if req.system else []
    return system + req.messages


def encode(req: Request) -> tuple[str, dict[str, str], dict[str, Any]]:
    headers = {"Authorization": f"Bearer {req.api_key}"} if req.api_key else {}
    body = {"model": req.model, "messages": messages(req), **req.params}
    if req.stream:
        body.update(stream=True, stream_options={"include_usage": True})
    if req.schema is not None:  # Structured Outputs, strict: the answer is the JSON
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "output", "schema": req.schema.boxed, "strict": True}}
    return f"{req.base_url}/chat/completions", headers, body


def usage(data: dict[str, Any]) -> Usage | None:
    usage = data.get("usage")
    if not usage:
        return None
    return Usage(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)


def decode(data: dict[str, Any]) -> tuple[str, Usage]:
    text = data["choices"][0]["message"].get("content") or ""
    return text, usage(data) or Usage()


def decode_event(data: dict[str, Any]) -> tuple[str, Usage | None]:
    choices = data.get("choices") or [{}]
    return choices[0].get("delta", {}).get("content") or "", usage(data)

