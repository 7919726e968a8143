"""Anthropic Messages API: `x-api-key`, `anthropic-version`, a top-level `system`."""


from typing import Any

from .._http import events, post
from .._types import Finish, Request, Usage, finish

__all__ = ["decode", "decode_event", "encode", "events", "post"]

VERSION = "2023-06-01"
MAX_TOKENS = 4096  # the API requires max_tokens; this default fits every current model
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",  # pause_turn: other
          "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "refused"}
OBJECT_ROOT = True  # structured outputs constrain the answer to a JSON object: schemas go boxed


def encode(req: Request) -> tuple[str, dict[str, str], dict[str, Any]]:
    body = {"model": req.model, "messages": req.messages, "max_tokens": MAX_TOKENS, **req.params}
    if "stop" in body:
        stop = body.pop("stop")
        body["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    if req.system:
        body["system"] = req.system
    if req.stream:
        body["stream"] = True
    if req.schema is not None:  # structured outputs (JSON outputs): the text block is the JSON
        shape = {"type": "json_schema", "schema": req.schema.boxed}
        body["output_config"] = {**body.get("output_config", {}), "format": shape}
    headers = {"x-api-key": req.api_key or "", "anthropic-version": VERSION}
    return f"{req.base_url}/v1/messages", headers, body


def _usage(usage: dict[str, Any] | None) -> Usage | None:
    """Anthropic's input_tokens leave out the cache reads and writes: ember's count them."""
    if not usage:
        return None
    read, write = (usage.get(f"cache_{kind}_input_tokens") or 0 for kind in ("read", "creation"))
    return Usage((usage.get("input_tokens") or 0) + read + write, usage.get("output_tokens") or 0,
                 read, write)


def decode(data: dict[str, Any]) -> tuple[str, Usage | None, Finish | None]:
    text = "".join(block.get("text", "") for block in data["content"] if block["type"] == "text")
    return text, _usage(data.get("usage")), finish(data.get("stop_reason"), FINISH)


def decode_event(data: dict[str, Any]) -> tuple[str, Usage | None, Finish | None]:
    kind = data.get("type")
    if kind == "content_block_delta":
        return data["delta"].get("text", ""), None, None
    if kind == "message_start":
        return "", _usage(data["message"].get("usage")), None
    if kind == "message_delta":  # the usage so far (output_tokens at least) and the stop reason
        return "", _usage(data.get("usage")), finish(data["delta"].get("stop_reason"), FINISH)
    return "", None, None
