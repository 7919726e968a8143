"""Batching: batch/abatch over lists, @batch grouping concurrent callers, and models.embed.

Grouping is proved by counting requests at the fake servers (and calls of the function),
never by timing; exceptions by injecting faults at the server."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from fakes import Fault, GeminiServer, OpenAIServer

from ember import _log, _loop, abatch, batch, budget, models, parallel, track
from ember.errors import BudgetExceeded, ConfigError, PartialFailure, ProviderError

EMBED = "text-embedding-3-small"  # $0.02 per million input tokens
GEMINI = "gemini-embedding-001"  # $0.15 per million input tokens


# ---- batch(fn, items) -----------------------------------------------------------------------

def test_batch_passes_lists_of_at_most_size_and_flattens_in_order():
    seen: list[list[int]] = []

    def tens(chunk: list[int]) -> list[int]:
        seen.append(chunk)
        return [n * 10 for n in chunk]

    assert batch(tens, range(10), size=4, concurrency=1) == [n * 10 for n in range(10)]
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert batch(tens, [], size=3) == []


async def test_abatch_keeps_order_when_later_lists_finish_first():
    done = {start: asyncio.Event() for start in (0, 3, 6, 9)}
    done[9].set()
    finished: list[list[int]] = []

    async def negate(chunk: list[int]) -> list[int]:
        async with asyncio.timeout(5):
            await done[chunk[0] + 3].wait()  # each list waits for the one after it
        finished.append(chunk)
        done[chunk[0]].set()
        return [-n for n in chunk]

    assert await abatch(negate, range(9), size=3) == [-n for n in range(9)]
    assert finished == [[6, 7, 8], [3, 4, 5], [0, 1, 2]]


def test_a_wrong_number_of_results_fails_that_list_only_with_an_error_naming_fn():
    def shout(chunk: list[str]) -> list[str] | None:
        if chunk == ["g"]:
            return None  # forgot to return
        loud = [s.upper() for s in chunk]
        return loud[:-1] if "e" in chunk else loud

    with pytest.raises(PartialFailure) as caught:
        batch(shout, "abcdefg", size=3)
    failure = caught.value
    assert sorted(failure.failures) == [3, 4, 5, 6]
    assert failure.results[:3] == ["A", "B", "C"]
    short = failure.results[3]
    assert isinstance(short, TypeError) and failure.results[5] is short
    assert "shout returned 2 results for a batch of 3 items" in str(short)
    assert "shout returned a NoneType for a batch of 1 items" in str(failure.results[6])


async def test_a_failed_list_puts_its_exception_at_each_of_its_items():
    async def check(chunk: list[int]) -> list[int]:
        if 5 in chunk:
            raise RuntimeError("list down")
        return chunk

    out = await abatch(check, range(8), size=2, errors="return")
    assert isinstance(out[4], RuntimeError) and out[5] is out[4]
    assert out[:4] == [0, 1, 2, 3] and out[6:] == [6, 7]
    with pytest.raises(PartialFailure) as caught:
        await abatch(check, range(8), size=2)
    assert sorted(caught.value.failures) == [4, 5]


def test_bad_settings_are_refused_before_anything_runs():
    calls: list[Any] = []
    for settings, named in [({"size": 0}, "size"), ({"size": 1.5}, "size"),
                            ({"errors": "ignore"}, "errors")]:
        with pytest.raises(ConfigError, match=named):
            batch(calls.append, [1, 2], **settings)
    with pytest.raises(ConfigError, match="wait_ms"):
        batch(size=4, wait_ms=-1)
    with pytest.raises(TypeError, match="async function"):
        batch(size=4)(lambda texts: texts)
    assert calls == []


def test_batch_of_a_sync_function_that_embeds(openai_srv: OpenAIServer):
    texts = [f"text {n}" for n in range(7)]

    def embed_many(chunk: list[str]) -> list[list[float]]:
        return models.embed(EMBED, chunk).vectors

    assert batch(embed_many, texts, size=3) == [openai_srv._vector(t) for t in texts]
    sent = sorted(r.json["input"] for r in openai_srv.requests)
    assert sent == [texts[:3], texts[3:6], texts[6:]]


# ---- @batch ---------------------------------------------------------------------------------

def embedder(size: int, calls: list[list[str]] | None = None) -> Any:
    @batch(size=size)
    async def embed(texts: list[str]) -> list[list[float]]:
        """Embed texts."""
        if calls is not None:
            calls.append(texts)
        return (await models.aembed(EMBED, texts)).vectors
    return embed


async def test_concurrent_callers_are_grouped_into_requests_of_at_most_size(
        openai_srv: OpenAIServer):
    embed = embedder(size=10)
    texts = [f"review {n}" for n in range(25)]
    with track() as t:
        vectors = await asyncio.gather(*(embed(text) for text in texts))
    assert vectors == [openai_srv._vector(text) for text in texts]  # each caller its own
    assert sorted(len(r.json["input"]) for r in openai_srv.requests) == [5, 10, 10]
    assert t.calls == 3  # the callers' own track sees the grouped requests


async def test_a_failed_request_goes_to_the_callers_of_its_group_only(openai_srv: OpenAIServer):
    openai_srv.fail(400)
    embed = embedder(size=10)
    texts = [f"review {n}" for n in range(25)]
    out = await asyncio.gather(*(embed(text) for text in texts), return_exceptions=True)
    failed = [n for n, result in enumerate(out) if isinstance(result, Exception)]
    assert all(isinstance(out[n], ProviderError) for n in failed)
    assert [texts[n] for n in failed] == openai_srv.requests[0].json["input"]  # the refused one
    assert all(out[n] == openai_srv._vector(texts[n]) for n in range(25) if n not in failed)


async def test_each_caller_gets_its_own_result_or_exception():
    @batch(size=4)
    async def parse(texts: list[str]) -> list[Any]:
        if "crash" in texts:
            raise RuntimeError("the whole call failed")
        if "short" in texts:
            return texts[1:]
        return [ValueError(t) if t.startswith("bad") else int(t) for t in texts]

    out = await asyncio.gather(*(parse(t) for t in ["1", "bad", "3", "4", "crash", "6", "7",
                                                      "8", "short", "9"]),
                               return_exceptions=True)
    assert out[:4] == [1, out[1], 3, 4] and str(out[1]) == "bad"  # its own exception only
    assert isinstance(out[1], ValueError)
    assert all(isinstance(e, RuntimeError) for e in out[4:8])  # the group's: all of it
    assert all(isinstance(e, TypeError) and "parse returned 1 results for a batch of 2" in
               str(e) for e in out[8:])


async def test_a_decorated_function_keeps_its_name_and_pythons_own_type_error():
    embed = embedder(size=10)
    assert embed.__name__ == "embed" and embed.__doc__ == "Embed texts."
    assert list(inspect.signature(embed).parameters) == ["texts"]
    assert inspect.iscoroutinefunction(embed)
    with pytest.raises(TypeError, match=r"embedder.<locals>.embed\(\) takes 1 positional"):
        await embed("a", "b")


async def test_on_a_method_self_is_not_an_item_and_groups_are_per_instance():
    class Labeller:
        def __init__(self, name: str) -> None:
            self.name, self.calls = name, []

        @batch(size=3)
        async def label(self, texts: list[str]) -> list[str]:
            self.calls.append(texts)
            return [f"{self.name}:{t}" for t in texts]

    a, b = Labeller("a"), Labeller("b")
    out = await asyncio.gather(a.label("x"), b.label("y"), a.label("z"), b.label("w"))
    assert out == ["a:x", "b:y", "a:z", "b:w"]
    assert (a.calls, b.calls) == ([["x", "z"]], [["y", "w"]])
    with pytest.raises(TypeError, match=r"label\(\) takes 2 positional arguments but 3"):
        await a.label("x", "y")


async def test_groups_are_per_event_loop():
    calls: list[tuple[str, list[str]]] = []

    @batch(size=2, wait_ms=60_000)  # a group goes only when full
    async def tag(texts: list[str]) -> list[str]:
        calls.append((threading.current_thread().name, texts))
        return [t.upper() for t in texts]

    background = _loop._background()
    first = asyncio.run_coroutine_threadsafe(tag("a1"), background)
    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(asyncio.sleep(0), background))
    assert await asyncio.gather(tag("b1"), tag("b2")) == ["B1", "B2"]  # not joined to a1
    second = asyncio.run_coroutine_threadsafe(tag("a2"), background)
    assert (first.result(5), second.result(5)) == ("A1", "A2")
    assert calls == [("MainThread", ["b1", "b2"]), ("ember-loop", ["a1", "a2"])]


def test_sync_callers_through_parallel_are_grouped_on_embers_loop(openai_srv: OpenAIServer):
    embed = embedder(size=10)
    texts = [f"t{n}" for n in range(25)]
    assert parallel(embed, texts, concurrency=25) == [openai_srv._vector(t) for t in texts]
    assert sorted(len(r.json["input"]) for r in openai_srv.requests) == [5, 10, 10]


# ---- models.embed ---------------------------------------------------------------------------

async def test_openai_embeddings_in_order_with_usage_cost_and_track(openai_srv: OpenAIServer):
    texts = ["alpha", "beta", "gamma"]
    with track() as t:
        r = await models.aembed(EMBED, texts, dimensions=8)
    sent = openai_srv.requests[0]
    assert sent.path == "/v1/embeddings"
    assert sent.json == {"model": EMBED, "input": texts, "dimensions": 8}
    assert sent.headers["authorization"] == "Bearer sk-test-openai-secret"
    assert r.vectors == [openai_srv._vector(text) for text in texts]
    assert (r.usage.input_tokens, r.usage.output_tokens) == (12, 0)
    assert r.cost == pytest.approx(12 * 0.02 / 1e6) and r.text == ""
    assert (t.calls, t.input_tokens, t.cost) == (1, 12, r.cost)
    _log.flush()
    with contextlib.closing(sqlite3.connect(Path(os.environ["EMBER_HOME"]) / _log.LOG)) as db:
        logged = db.execute("SELECT model, input_tokens, output_tokens, cost FROM calls").fetchall()
    assert logged == [(EMBED, 12, 0, r.cost)]


def test_openai_vectors_follow_their_index_not_their_place(openai_srv: OpenAIServer):
    body = {"object": "list", "model": EMBED, "usage": {"prompt_tokens": 3, "total_tokens": 3},
            "data": [{"object": "embedding", "index": 1, "embedding": [1.0]},
                     {"object": "embedding", "index": 0, "embedding": [0.0]}]}
    openai_srv.fail(Fault(200, body=body))
    assert models.embed(EMBED, ["first", "second"]).vectors == [[0.0], [1.0]]


def test_gemini_batch_embed_contents_with_its_reported_usage(gemini_srv: GeminiServer):
    texts = ["Bonjour", "Hello"]
    r = models.embed(GEMINI, texts, taskType="CLUSTERING")
    sent = gemini_srv.requests[0]
    assert sent.path == f"/v1beta/models/{GEMINI}:batchEmbedContents"
    assert sent.json == {"requests": [
        {"model": f"models/{GEMINI}", "content": {"parts": [{"text": text}]},
         "taskType": "CLUSTERING"} for text in texts]}
    assert sent.headers["x-goog-api-key"] == "gm-test-secret"
    assert r.vectors == [gemini_srv._vector(text) for text in texts]
    gemini_srv.fail(Fault(200, body={"embeddings": [{"values": [0.5]}],
                                     "usageMetadata": {"promptTokenCount": 40}}))
    reported = models.embed(GEMINI, ["x"])
    assert reported.usage.input_tokens == 40 and reported.cost == pytest.approx(40 * 0.15 / 1e6)


def test_gemini_without_usage_is_charged_a_token_per_4_bytes(gemini_srv: GeminiServer):
    texts = ["abcd", "abcde", "é"]  # 4 bytes: 1 token; 5 bytes: 2; 2 bytes: 1
    with budget(usd=1.0) as cap, track() as t:
        r = models.embed(GEMINI, texts)
    assert r.usage.input_tokens == 4 and t.input_tokens == 4
    assert r.cost == pytest.approx(4 * 0.15 / 1e6) and cap.spent == r.cost  # never None


def test_embeddings_under_a_budget_need_no_max_tokens_and_respect_the_cap(
        openai_srv: OpenAIServer):
    with budget(usd=0.01) as cap:
        r = models.embed(EMBED, ["a", "b"])
    assert cap.spent == r.cost and cap.reserved == 0
    with budget(tokens=10), pytest.raises(BudgetExceeded):
        models.embed(EMBED, ["a long text that cannot fit in ten tokens of budget"])
    assert len(openai_srv.requests) == 1  # the refused call was never sent


def test_embed_refuses_what_it_cannot_do_before_sending(openai_srv: OpenAIServer):
    with pytest.raises(ConfigError, match="openai, ollama or google"):
        models.embed("claude-sonnet-4-5", ["a"])
    with pytest.raises(ConfigError, match="cache"):
        models.embed(EMBED, ["a"], cache=True)
    for texts in ["one text", [], ["a", 1]]:
        with pytest.raises(TypeError, match="non-empty list of strings"):
            models.embed(EMBED, texts)  # type: ignore[arg-type]
    assert openai_srv.requests == []
