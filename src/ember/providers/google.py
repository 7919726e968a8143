"""Google Gemini `generateContent`: `contents`/`parts`, `systemInstruction`, `usageMetadata`."""


from typing import Any

from .._http import events, post
from .._types import Request, Usage

__all__ = ["decode", "decode_event", "encode", "events", "post"]

CONFIG = {"temperature": "temperature", "max_tokens": "maxOutputTokens", "top_p": "topP",
          "top_k": "topK", "stop": "stopSequences", "seed": "seed"}


def encode(req: Request) -> tuple[str, dict[str, str], dict[str, Any]]:
    headers = {"x-goog-api-key": req.api_key or ""}
    url = f"{req.base_url}/v1beta/models/{req.model}"
    contents = [{"role": "model" if m["role"] == "assistant" else "user",
                 "parts": [{"text": m["content"]}]} for m in req.messages]
    params = dict(req.params)
    config = {CONFIG[name]: params.pop(name) for name in list(params) if name in CONFIG}
    if isinstance(config.get("stopSequences"), str):
        config["stopSequences"] = [config["stopSequences"]]
    if req.schema is not None:  # standard JSON Schema, any root (responseSchema is OpenAPI's)
        config.update(responseMimeType="application/json", responseJsonSchema=req.schema.json)
    body: dict[str, Any] = {"contents": contents, **params}
    if config:
        body["generationConfig"] = {**body.get("generationConfig", {}), **config}
    if req.system:
        body["systemInstruction"] = {"parts": [{"text": req.system}]}
    action = "streamGenerateContent?alt=sse" if req.stream else "generateContent"
    return f"{url}:{action}", headers, body


def decode_event(data: dict[str, Any]) -> tuple[str, Usage | None]:
    candidate = (data.get("candidates") or [{}])[0]
    parts = candidate.get("content", {}).get("parts", [])
    text = "".join(part.get("text", "") for part in parts if not part.get("thought"))
    meta = data.get("usageMetadata")
    usage = None
    if meta:
        output = (meta.get("candidatesTokenCount") or 0) + (meta.get("thoughtsTokenCount") or 0)
        usage = Usage(meta.get("promptTokenCount") or 0, output)
    return text, usage


def decode(data: dict[str, Any]) -> tuple[str, Usage]:
    text, usage = decode_event(data)
    return text, usage or Usage()

