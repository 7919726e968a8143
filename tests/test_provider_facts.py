"""What the providers' documentation and their users' bug reports say they do, beyond the
happy path: prompt-cache tokens and their prices, reasoning models, why an answer ended,
quota errors, streams without usage and request ids (issue 16). The shapes are in fakes.py."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fakes import QUOTA_EXHAUSTED, Fault, GeminiServer, OpenAIServer, gemini_retry_body
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from ember import Usage, _log, _spend, budget, models, track
from ember.errors import BudgetExceeded, ProviderError, RateLimited, Refused

SERVERS = {"gpt-4o-mini": "openai_srv", "claude-sonnet-4-5": "anthropic_srv",
           "gemini-2.5-flash": "gemini_srv"}
PROVIDERS = {"gpt-4o-mini": "openai", "o3-mini": "openai", "claude-sonnet-4-5": "anthropic",
             "gemini-2.5-flash": "google"}


def serve(model: str, request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(SERVERS[model])


def price(model: str, **tokens: int) -> float:
    """The price genai-prices itself gives: the oracle for ember's own arithmetic."""
    found = calc_price(PriceUsage(**tokens), model, provider_id=PROVIDERS[model])
    return float(Decimal(found.total_price))


def answer(model: str, stream: bool, **params: Any) -> Any:
    if not stream:
        return models(model, "Hi", **params)
    streamed = models.stream(model, "Hi", **params)
    assert "".join(streamed)
    return streamed.response


def log_rows(columns: str) -> list[tuple[Any, ...]]:
    _log.flush()
    path = Path(os.environ["EMBER_HOME"]) / "usage.sqlite"
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT {columns} FROM calls ORDER BY rowid").fetchall()


def ember_usage() -> dict[str, Any]:
    cli = "import sys, ember.cli; sys.exit(ember.cli.main(['usage', '--json']))"
    out = subprocess.run([sys.executable, "-c", cli], capture_output=True, text=True,
                         env=dict(os.environ), timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


# ---- 1. prompt-cache tokens --------------------------------------------------------------------

def test_the_issues_example_gpt_4o_mini_with_8000_of_10000_input_tokens_cached(
        openai_srv: OpenAIServer):
    openai_srv.usage, openai_srv.cached = (10_000, 100), (8_000, 0)
    r = models("gpt-4o-mini", "Summarise the long document")
    assert r.usage == Usage(input_tokens=10_000, output_tokens=100, cache_read_tokens=8_000)
    assert r.cost == pytest.approx(0.00096)  # not $0.00156: the cached 8,000 at half price
    assert r.cost == pytest.approx(price("gpt-4o-mini", input_tokens=10_000, output_tokens=100,
                                         cache_read_tokens=8_000))


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model, read, write", [
    ("gpt-4o-mini", 6_000, 0),  # OpenAI reports no cache writes
    ("claude-sonnet-4-5", 6_000, 3_000),  # reads x0.1, writes x1.25 the input price
    ("gemini-2.5-flash", 6_000, 0)])
def test_cache_reads_and_writes_are_counted_the_same_way_and_priced_by_genai_prices(
        model: str, read: int, write: int, stream: bool, request: pytest.FixtureRequest):
    server = serve(model, request)
    server.usage, server.cached = (10_000, 200), (read, write)
    r = answer(model, stream)
    # every provider: input_tokens counts every input token, cached or not
    assert r.usage == Usage(10_000, 200, read, write)
    assert r.cost == pytest.approx(price(model, input_tokens=10_000, output_tokens=200,
                                         cache_read_tokens=read, cache_write_tokens=write))


def test_cache_tokens_show_in_track_the_log_and_ember_usage(anthropic_srv: Any):
    anthropic_srv.usage, anthropic_srv.cached = (5_000, 100), (4_000, 500)
    with track() as t:
        models("claude-sonnet-4-5", "Hi")
        models("claude-sonnet-4-5", "Hi again")
    assert (t.input_tokens, t.cache_read_tokens, t.cache_write_tokens) == (10_000, 8_000, 1_000)
    assert "cache read 8000, write 1000" in repr(t)
    assert log_rows("input_tokens, cache_read_tokens, cache_write_tokens") == [
        (5_000, 4_000, 500)] * 2
    (row,) = ember_usage()["by_model"]
    assert (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]) == (
        10_000, 8_000, 1_000)


def test_the_log_migration_keeps_old_rows(tmp_path: Path):
    from ember._sqlite import connect

    path = tmp_path / "old.sqlite"
    with connect(path, _log.MIGRATIONS[:2]) as db:  # a log written before the cache columns
        db.execute("INSERT INTO calls (time, provider, model, input_tokens, output_tokens) "
                   "VALUES (1, 'openai', 'gpt-4o', 7, 8)")
    db = connect(path, _log.MIGRATIONS)
    assert db.execute("SELECT input_tokens, cache_read_tokens FROM calls").fetchall() == [(7, None)]
    db.close()


def test_a_budget_bounds_a_call_whose_whole_input_could_be_a_cache_write(anthropic_srv: Any):
    size = len(b"Hi") + _spend.FRAMING  # the bound of the input tokens: a byte each, + framing
    worst = price("claude-sonnet-4-5", input_tokens=size, cache_write_tokens=size,
                  output_tokens=50)
    with budget(usd=worst * 0.99), pytest.raises(BudgetExceeded):
        models("claude-sonnet-4-5", "Hi", max_tokens=50)
    assert not anthropic_srv.requests
    anthropic_srv.usage, anthropic_srv.cached = (size, 50), (0, size)  # that worst case, billed
    with budget(usd=worst * 1.01) as cap:
        r = models("claude-sonnet-4-5", "Hi", max_tokens=50)
    assert r.cost == pytest.approx(worst) and cap.spent == pytest.approx(worst)


# ---- 2. reasoning models: max_completion_tokens, reasoning tokens ------------------------------

@pytest.mark.parametrize("model", ["o3-mini", "gpt-5", "gpt-4o-mini"])
def test_openai_gets_max_completion_tokens_which_reasoning_models_require(
        model: str, openai_srv: OpenAIServer):
    r = models(model, "Think", max_tokens=50)  # the fake, like OpenAI, refuses max_tokens on o*
    sent = openai_srv.requests[0].json
    assert sent["max_completion_tokens"] == 50 and "max_tokens" not in sent and r.text


def test_ollama_gets_max_tokens_which_is_all_it_knows(monkeypatch: pytest.MonkeyPatch):
    with OpenAIServer() as server:
        server._auth = lambda request: None  # type: ignore[method-assign]
        monkeypatch.setenv("OLLAMA_BASE_URL", server.base_url)
        models("ollama/llama3.2", "Hi", max_tokens=5)
        sent = server.requests[0].json
        assert sent["max_tokens"] == 5 and "max_completion_tokens" not in sent


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["o3-mini", "claude-sonnet-4-5", "gemini-2.5-flash"])
def test_reasoning_tokens_are_billed_as_output_and_bounded_by_max_tokens(
        model: str, stream: bool, openai_srv: OpenAIServer, anthropic_srv: Any,
        gemini_srv: GeminiServer):
    for server in (openai_srv, anthropic_srv, gemini_srv):
        server.usage, server.reasoning = (100, 50), 45  # 45 of the 50 output tokens thought
    with budget(usd=1.0) as cap, track() as t:
        r = answer(model, stream, max_tokens=50)
    assert r.usage.output_tokens == 50 and t.output_tokens == 50
    assert r.cost == pytest.approx(price(model, input_tokens=100, output_tokens=50))
    assert cap.spent == pytest.approx(r.cost)


# ---- 3. why an answer ended ----------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model, said, reason", [
    ("gpt-4o-mini", None, ("stop", "stop")), ("gpt-4o-mini", "length", ("length", "length")),
    ("claude-sonnet-4-5", None, ("stop", "end_turn")),
    ("claude-sonnet-4-5", "max_tokens", ("length", "max_tokens")),
    ("claude-sonnet-4-5", "pause_turn", ("other", "pause_turn")),
    ("gemini-2.5-flash", None, ("stop", "STOP")),
    ("gemini-2.5-flash", "MAX_TOKENS", ("length", "MAX_TOKENS"))])
def test_finish_reason_is_in_the_same_words_for_every_provider_with_the_raw_one_kept(
        model: str, said: str | None, reason: tuple[str, str], stream: bool,
        request: pytest.FixtureRequest):
    serve(model, request).finish = said
    r = answer(model, stream)
    assert (r.finish_reason, r.finish_raw) == reason and r.text == "Hello from fake"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model, said, reason", [
    ("gpt-4o-mini", "refusal", "refused"),  # message.refusal, finish_reason "stop"
    ("gpt-4o-mini", "content_filter", "blocked"),
    ("claude-sonnet-4-5", "refusal", "refused"),
    ("gemini-2.5-flash", "SAFETY", "blocked"),  # a candidate with no content
    ("gemini-2.5-flash", "PROHIBITED_CONTENT", "blocked"),
    ("gemini-2.5-flash", "OTHER", "blocked")])
def test_a_refused_or_blocked_answer_raises_refused_not_an_empty_text(
        model: str, said: str, reason: str, stream: bool, request: pytest.FixtureRequest):
    server = serve(model, request)
    server.finish, server.reply_text = said, "I can't help with that."
    with track() as t, pytest.raises(Refused) as caught:
        answer(model, stream)
    error = caught.value
    assert isinstance(error, ProviderError) and error.provider == PROVIDERS[model]
    assert (error.response.finish_reason, error.response.finish_raw) == (reason, said)
    assert f"the answer was {reason} ({said})" in str(error)
    assert t.calls == 1 and t.errors == 1 and t.cost > 0  # billed all the same
    assert len(server.requests) == 1  # not retried: it would be refused again


@pytest.mark.parametrize("stream", [False, True])
def test_a_gemini_prompt_blocked_before_any_answer_raises_refused(stream: bool,
                                                                 gemini_srv: GeminiServer):
    gemini_srv.block_prompt = "PROHIBITED_CONTENT"
    with pytest.raises(Refused) as caught:
        answer("gemini-2.5-flash", stream)
    assert caught.value.response.finish_raw == "PROHIBITED_CONTENT"
    assert caught.value.response.text == "" and caught.value.response.usage.input_tokens == 12


def test_a_gemini_candidate_with_no_content_and_no_reason_to_be_empty_is_blocked(
        gemini_srv: GeminiServer):
    gemini_srv.reply_text = ""
    original = gemini_srv._chunk

    def contentless(*args: Any) -> dict[str, Any]:
        chunk = original(*args)
        del chunk["candidates"][0]["content"]
        return chunk

    gemini_srv._chunk = contentless  # type: ignore[method-assign]
    with pytest.raises(Refused, match=r"blocked \(STOP\)"):
        models("gemini-2.5-flash", "Hi")
    gemini_srv.finish = "MAX_TOKENS"  # thinking used all of max_tokens: empty, and said why
    assert models("gemini-2.5-flash", "Hi").finish_reason == "length"


# ---- 4. quota is not a rate limit ------------------------------------------------------------

def test_openai_insufficient_quota_is_not_retried_and_says_check_billing(openai_srv: OpenAIServer):
    openai_srv.fail(Fault(429, body=QUOTA_EXHAUSTED))
    with pytest.raises(ProviderError) as caught:
        models("gpt-4o-mini", "Hi")
    error = caught.value
    assert not isinstance(error, RateLimited) and error.status == 429
    assert error.message.startswith("quota exhausted: check billing: You exceeded your current")
    assert len(openai_srv.requests) == 1


def test_gemini_retry_delay_in_the_body_is_honoured_like_retry_after(gemini_srv: GeminiServer):
    gemini_srv.fail(Fault(429, body=gemini_retry_body("0.6s")))
    assert models("gemini-2.5-flash", "Hi").text == "Hello from fake"
    first, second = gemini_srv.requests
    assert 0.6 <= second.at - first.at < 3


def test_gemini_retry_delay_beyond_the_cap_is_not_waited_for(gemini_srv: GeminiServer):
    gemini_srv.fail(Fault(429, body=gemini_retry_body("3600s")))
    start = time.monotonic()
    with pytest.raises(RateLimited, match="exceeded your current quota"):
        models("gemini-2.5-flash", "Hi")
    assert len(gemini_srv.requests) == 1 and time.monotonic() - start < 2


# ---- 5. a stream without usage --------------------------------------------------------------

def test_a_stream_without_usage_reads_as_unknown_everywhere_and_the_budget_keeps_its_worst_case(
        openai_srv: OpenAIServer):
    openai_srv.stream_usage = False  # as llama-cpp-python's server: stream_options ignored
    with budget(usd=1.0) as cap, track() as t:
        stream = models.stream("gpt-4o-mini", "Hi", max_tokens=40)
        assert "".join(stream) == "Hello from fake"
    r = stream.response
    assert r is not None and r.usage is None and r.cost is None  # never a silent 0
    assert "tokens=unknown" in repr(r) and "cost=unknown" in repr(r)
    assert (t.calls, t.unknown, t.input_tokens, t.cost) == (1, 1, 0, 0.0)
    assert "1 calls of unknown cost" in repr(t)
    size = len(b"Hi") + _spend.FRAMING  # the reservation: the text's bytes + framing, max_tokens
    worst = price("gpt-4o-mini", input_tokens=size, output_tokens=40)
    assert cap.spent == pytest.approx(worst) and cap.reserved == pytest.approx(0, abs=1e-12)
    assert log_rows("input_tokens, output_tokens, cost") == [(None, None, None)]
    assert ember_usage()["by_model"][0]["unknown"] == 1


# ---- 6. request ids --------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4-5"])
def test_the_providers_request_id_is_on_the_response(model: str, stream: bool,
                                                     request: pytest.FixtureRequest):
    serve(model, request)
    assert answer(model, stream).request_id.startswith("req_")


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4-5"])
def test_the_providers_request_id_is_on_the_error_and_in_its_message(
        model: str, request: pytest.FixtureRequest):
    serve(model, request).fail(400)
    with pytest.raises(ProviderError) as caught:
        models(model, "Hi")
    error = caught.value
    assert error.request_id and error.request_id.startswith("req_")
    assert str(error).endswith(f"(request id {error.request_id})")


def test_gemini_sends_no_request_id(gemini_srv: GeminiServer):
    r = models("gemini-2.5-flash", "Hi")
    assert r.request_id is None and r.raw["responseId"]  # its responseId stays in .raw
