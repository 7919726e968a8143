"""OpenAI Chat Completions, and every server that speaks it (Ollama, vLLM, llama.cpp...)."""


from typing import Any

from .._http import events, post
from .._types import Request, Usage

__all__ = ["decode", "decode_embed", "decode_event", "encode", "encode_embed", "events",
           "messages", "post", "usage"]


def messages(req: Request) -> list[dict[str, Any]]:
    """The chat messages with the system prompt first, as OpenAI-style servers take them."""
    system = [{"role": "system", "content": req.system}] if req.system else []
    return system + req.messages


def _headers(req: Request) -> dict[str, str]:
    return {"Authorization": f"Bearer {req.api_key}"} if req.api_key else {}


def encode(req: Request) -> tuple[str, dict[str, str], dict[str, Any]]:
    body = {"model": req.model, "messages": messages(req), **req.params}
    if req.stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return f"{req.base_url}/chat/completions", _headers(req), body


def encode_embed(req: Request) -> tuple[str, dict[str, str], dict[str, Any]]:
    """POST /embeddings: the texts (the request's messages) as `input`. Vectors come back
    as JSON floats, the API's default `encoding_format`."""
    body = {"model": req.model, "input": [m["content"] for m in req.messages], **req.params}
    return f"{req.base_url}/embeddings", _headers(req), body


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


def decode_embed(data: dict[str, Any]) -> tuple[list[list[float]], Usage | None]:
    """The vectors in input order (each item names its `index`), and the usage."""
    ordered = sorted(data["data"], key=lambda item: item["index"])
    return [item["embedding"] for item in ordered], usage(data)
