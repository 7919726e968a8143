"""Google Gemini `generateContent`: `contents`/`parts`, `systemInstruction`, `usageMetadata`."""


from typing import Any

from .._http import events, post
from .._types import Finish, Request, Usage, finish

__all__ = ["decode", "decode_embed", "decode_event", "encode", "encode_embed", "events", "post"]

CONFIG = {"temperature": "temperature", "max_tokens": "maxOutputTokens", "top_p": "topP",
          "top_k": "topK", "stop": "stopSequences", "seed": "seed"}
BLOCKED = ("SAFETY RECITATION LANGUAGE OTHER BLOCKLIST PROHIBITED_CONTENT SPII IMAGE_SAFETY "
           "IMAGE_PROHIBITED_CONTENT IMAGE_RECITATION IMAGE_OTHER NO_IMAGE")  # the answer is cut
FINISH = {"STOP": "stop", "MAX_TOKENS": "length", **dict.fromkeys(BLOCKED.split(), "blocked")}


def encode(req: Request) -> tuple[str, dict[str, str], dict[str, Any]]:
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
    url = f"{req.base_url}/v1beta/models/{req.model}:{action}"
    return url, {"x-goog-api-key": req.api_key or ""}, body


def decode_event(data: dict[str, Any]) -> tuple[str, Usage | None, Finish | None]:
    candidate = (data.get("candidates") or [{}])[0]
    parts = candidate.get("content", {}).get("parts", [])
    text = "".join(part.get("text", "") for part in parts if not part.get("thought"))
    # promptTokenCount includes the cached tokens; candidatesTokenCount leaves out the thoughts
    meta = data.get("usageMetadata") or {}
    usage = Usage(meta.get("promptTokenCount") or 0,
                  (meta.get("candidatesTokenCount") or 0) + (meta.get("thoughtsTokenCount") or 0),
                  meta.get("cachedContentTokenCount") or 0) if meta else None
    blocked = (data.get("promptFeedback") or {}).get("blockReason")  # no candidates then
    return text, usage, ("blocked", blocked) if blocked else finish(
        candidate.get("finishReason"), FINISH)


def decode(data: dict[str, Any]) -> tuple[str, Usage | None, Finish | None]:
    """An answer; one whose candidate has no content, for no reason or a STOP, was blocked
    (a MAX_TOKENS with none means the thinking used the whole max_tokens)."""
    text, usage, end = decode_event(data)
    if "content" not in (data.get("candidates") or [{}])[0] and end in (None, ("stop", "STOP")):
        end = ("blocked", end[1] if end else "")
    return text, usage, end


def encode_embed(req: Request) -> tuple[str, dict[str, str], dict[str, Any]]:
    """`batchEmbedContents`: one EmbedContentRequest per text (the request's messages);
    other params (taskType, outputDimensionality...) go into each of them."""
    model = f"models/{req.model}"
    requests = [{"model": model, "content": {"parts": [{"text": m["content"]}]}, **req.params}
                for m in req.messages]
    headers = {"x-goog-api-key": req.api_key or ""}
    return f"{req.base_url}/v1beta/{model}:batchEmbedContents", headers, {"requests": requests}


def decode_embed(data: dict[str, Any]) -> tuple[list[list[float]], Usage | None]:
    """The vectors, in input order; usage only if the answer has the optional usageMetadata."""
    tokens = (data.get("usageMetadata") or {}).get("promptTokenCount")
    return [item["values"] for item in data["embeddings"]], Usage(tokens) if tokens else None
