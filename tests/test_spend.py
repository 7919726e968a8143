"""Know and cap what you spend: trackers, budgets counted at the server, the process-wide
usage, the SQLite usage log (read straight from the file) and `ember usage` / `ember models`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import KEYS
from fakes import AnthropicServer, Fault, GeminiServer, OpenAIServer

from ember import Response, _log, _spend, budget, models, track, usage
from ember._types import Call, Request, Usage
from ember.errors import BudgetExceeded, ConfigError, EmberError, ProviderError

GPT = "openai/gpt-4o-mini"  # $0.15 in, $0.60 out per million tokens
CLI = [sys.executable, "-c", "import sys, ember.cli; sys.exit(ember.cli.main())"]


def log_path() -> Path:
    return Path(os.environ["EMBER_HOME"]) / "usage.sqlite"


def log_rows(columns: str) -> list[tuple[Any, ...]]:
    """The usage log's rows, once the background writer has caught up."""
    _log.flush()
    if not log_path().exists():
        return []
    with contextlib.closing(sqlite3.connect(log_path())) as db:
        return db.execute(f"SELECT {columns} FROM calls ORDER BY rowid").fetchall()


def ember_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ), check=False)


def worst_case(srv: OpenAIServer, max_tokens: int) -> float:
    """Make every `Hi` call cost exactly its budget reservation: the server reports input
    tokens = the bytes of the text plus one message's framing, and output tokens =
    max_tokens. Returns that cost."""
    size = len(b"Hi") + _spend.FRAMING
    srv.usage = (size, max_tokens)
    return (size * 0.15 + max_tokens * 0.60) / 1e6


def numbers(text: str) -> list[float]:
    return [float(n) for n in re.findall(r"\d+(?:\.\d+)?(?:e-?\d+)?", text)]


# ---- budgets ---------------------------------------------------------------------------------

async def test_1000_concurrent_calls_never_overshoot_the_cap(openai_srv: OpenAIServer):
    worst = worst_case(openai_srv, max_tokens=100)
    openai_srv.latency = 0.05  # every admitted call is still under way when the others ask
    with budget(usd=worst * 40.5) as cap:
        results = await asyncio.gather(
            *(models.acall(GPT, "Hi", max_tokens=100) for _ in range(1000)),
            return_exceptions=True)
    sent = [r for r in results if isinstance(r, Response)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(sent) == 40 and len(refused) == 960  # and nothing else went wrong
    assert len(openai_srv.requests) == 40  # counted at the server: refused calls never left
    assert cap.spent == pytest.approx(40 * worst) and cap.spent <= cap.usd
    assert cap.reserved == pytest.approx(0, abs=1e-12)
    message = str(refused[0])
    assert "spent" in message and "reserved" in message
    assert any(n == pytest.approx(cap.usd, rel=1e-2) for n in numbers(message))  # the cap
    assert any(n == pytest.approx(worst, rel=1e-2) for n in numbers(message))  # this call


def test_a_failed_call_releases_its_reservation(openai_srv: OpenAIServer):
    worst = worst_case(openai_srv, max_tokens=100)
    openai_srv.fail(500, 500, 500, 500)
    with budget(usd=worst * 1.5) as cap, track() as t:
        with pytest.raises(ProviderError):
            models(GPT, "Hi", max_tokens=100, retries=3)
        assert (cap.spent, cap.tokens_used) == (0, 0)
        assert cap.reserved == pytest.approx(0, abs=1e-12) and cap.tokens_reserved == 0
        assert models(GPT, "Hi", max_tokens=100).cost == pytest.approx(worst)  # room again
    assert (t.calls, t.errors, t.retries, len(openai_srv.requests)) == (2, 1, 3, 5)


def test_a_retried_call_is_paid_once_at_its_actual_cost(openai_srv: OpenAIServer):
    openai_srv.fail(429)
    with budget(usd=0.01) as cap, track() as t:
        r = models(GPT, "Hi", max_tokens=100)
    assert len(openai_srv.requests) == 2 and t.retries == 1 and t.errors == 0
    assert r.cost == pytest.approx((12 * 0.15 + 5 * 0.60) / 1e6)  # the server's usage: 12+5
    assert cap.spent == pytest.approx(r.cost) and cap.reserved == pytest.approx(0, abs=1e-12)


def test_nested_budgets_each_hold(openai_srv: OpenAIServer):
    worst = worst_case(openai_srv, max_tokens=100)
    with budget(usd=1.0) as outer:
        with budget(usd=worst * 2.5):  # the inner cap refuses while the outer has room
            models(GPT, "Hi", max_tokens=100)
            models(GPT, "Hi", max_tokens=100)
            with pytest.raises(BudgetExceeded):
                models(GPT, "Hi", max_tokens=100)
        models(GPT, "Hi", max_tokens=100)
    assert outer.spent == pytest.approx(3 * worst) and len(openai_srv.requests) == 3
    with budget(usd=worst * 1.5), budget(usd=1.0) as generous:  # the outer cap refuses
        models(GPT, "Hi", max_tokens=100)
        with pytest.raises(BudgetExceeded):
            models(GPT, "Hi", max_tokens=100)
    assert generous.spent == pytest.approx(worst) and len(openai_srv.requests) == 4


def test_a_tokens_budget_counts_text_bytes_and_framing_plus_max_tokens(openai_srv: OpenAIServer):
    with budget(tokens=1000) as cap:
        with pytest.raises(BudgetExceeded, match="1000"):
            models(GPT, "Hi", max_tokens=991)  # 2 bytes + 8 of framing + 991 > 1000
        assert openai_srv.requests == []
        models(GPT, "Hi", max_tokens=990)  # exactly 1000: admitted
        assert openai_srv.requests[0].json["max_completion_tokens"] == 990
        with pytest.raises(BudgetExceeded):  # a tool's schema is input the model reads
            models(GPT, "Hi", max_tokens=10, tools=[{"type": "function", "function": {
                "name": "f", "description": "x" * 1000}}])
        assert len(openai_srv.requests) == 1
    assert cap.tokens_used == 12 + 5 and cap.tokens_reserved == 0  # settled to the actual


@pytest.mark.filterwarnings("ignore::ember.errors.UnknownPrice")
def test_an_unknown_price_is_refused_under_a_usd_budget_not_under_a_tokens_one(
        openai_srv: OpenAIServer):
    own = dict(base_url=openai_srv.base_url, max_tokens=10)
    with budget(usd=1.0), pytest.raises(EmberError) as caught:
        models("openai/my-own-model", "Hi", **own)
    assert "my-own-model" in str(caught.value) and "tokens" in str(caught.value)
    assert openai_srv.requests == []
    with budget(tokens=10_000) as cap:
        assert models("openai/my-own-model", "Hi", **own).cost is None
    assert cap.tokens_used == 17


def test_under_a_budget_a_call_needs_max_tokens(
        openai_srv: OpenAIServer, gemini_srv: GeminiServer, anthropic_srv: AnthropicServer):
    with budget(usd=1.0) as cap:
        for model in (GPT, "gemini-2.5-flash"):
            with pytest.raises(ConfigError, match="max_tokens"):
                models(model, "Hi")
        assert openai_srv.requests == gemini_srv.requests == []
        models("claude-haiku-4-5", "Hi")  # Anthropic calls always carry one
    assert cap.spent > 0 and len(anthropic_srv.requests) == 1


async def test_one_budget_and_tracker_can_be_entered_by_several_concurrent_tasks(
        openai_srv: OpenAIServer):
    openai_srv.latency = 0.05
    cap, t = budget(usd=1.0), track()

    async def worker(i: int) -> Response:
        async with cap, t:
            return await models.acall(GPT, f"Hi {i}", max_tokens=5)

    results = await asyncio.gather(*(worker(i) for i in range(4)), return_exceptions=True)
    assert all(isinstance(r, Response) for r in results), results
    assert t.calls == 4 and cap.spent > 0


async def test_a_stream_abandoned_after_text_arrived_still_counts_against_the_budget(
        openai_srv: OpenAIServer):
    openai_srv.reply_text = "one two three four five six"
    with budget(usd=1.0) as cap:
        chunks: Any = aiter(models.astream(GPT, "Hi", max_tokens=50))  # an async generator
        async with contextlib.aclosing(chunks):
            assert await anext(chunks)  # text has arrived; then the caller stops reading
    assert len(openai_srv.requests) == 1 and cap.reserved == pytest.approx(0, abs=1e-12)
    assert cap.spent > 0


# ---- trackers and usage() --------------------------------------------------------------------

async def test_concurrent_tasks_each_track_only_their_own_calls(openai_srv: OpenAIServer):
    openai_srv.latency = 0.05

    async def job(name: str, calls: int) -> Any:
        async with track(tag=name) as t:
            for i in range(calls):
                await models.acall(GPT, f"{name} {i}")
        return t

    with track(tag="batch") as everything:  # the innermost tag labels a call
        a, b = await asyncio.gather(job("a", 2), job("b", 3))
    first_two = {r.json["messages"][0]["content"] for r in openai_srv.requests[:2]}
    assert first_two == {"a 0", "b 0"}  # the jobs overlapped at the server
    assert (a.calls, b.calls, everything.calls) == (2, 3, 5)
    assert (a.input_tokens, b.output_tokens, everything.input_tokens) == (24, 15, 60)
    assert log_rows("tag") == [("a",), ("b",), ("a",), ("b",), ("b",)]


def test_sync_calls_in_threads_each_track_their_own(openai_srv: OpenAIServer):
    def work(calls: int) -> int:
        with track() as t:
            for _ in range(calls):
                models(GPT, "Hi")
        return t.calls

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(work, [1, 2, 3, 4])) == [1, 2, 3, 4]


def test_a_tracker_breaks_down_by_model_with_latency_percentiles(
        openai_srv: OpenAIServer, anthropic_srv: AnthropicServer):
    anthropic_srv.latency = 0.3
    with track() as t:
        gpt = [models(GPT, "Hi") for _ in range(2)]
        streamed = models.stream(GPT, "Hi")
        assert "".join(streamed) == "Hello from fake"
        claude = models("claude-haiku-4-5", "Hi")
    assert streamed.response is not None
    assert set(t.by_model) == {GPT, "anthropic/claude-haiku-4-5"}
    mini = t.by_model[GPT]
    assert (mini.calls, mini.input_tokens, mini.output_tokens) == (3, 36, 15)
    assert mini.cost == pytest.approx(sum(r.cost or 0 for r in [*gpt, streamed.response]))
    assert t.cost == pytest.approx(mini.cost + (claude.cost or 0)) and t.calls == 4
    assert t.percentile(50) < 0.3 <= t.percentile(95) == t.percentile(100)  # 3 fast, 1 slow
    assert t.by_model["anthropic/claude-haiku-4-5"].percentile(50) >= 0.3


def record_hit(first: Response) -> Response:
    """What a cache does on a hit: record the stored answer, which cost nothing this time."""
    hit = dataclasses.replace(first, cached=True, cost=0.0)
    _spend.record(Call(Request(first.provider, first.model, [], {}), response=hit))
    return hit


def test_a_cache_hit_is_counted_as_saved_not_spent(openai_srv: OpenAIServer):
    openai_srv.usage = (1000, 500)
    with budget(usd=1.0) as cap, track() as t:
        first = models(GPT, "Hi", max_tokens=600)
        again = record_hit(first)
    assert again.cached and again.cost == 0 and len(openai_srv.requests) == 1
    assert (t.calls, t.cached) == (2, 1) and first.cost == pytest.approx(0.00045)
    assert (t.input_tokens, t.output_tokens) == (1000, 500)  # only the call that was sent
    assert t.cost == t.saved == pytest.approx(0.00045) and cap.spent == pytest.approx(0.00045)


def test_usage_grows_by_every_call_in_the_process(openai_srv: OpenAIServer):
    before = (usage().calls, usage().errors, usage().cost)
    r = models(GPT, "Hi")
    list(models.stream(GPT, "Hi"))
    openai_srv.fail(404)
    with pytest.raises(ProviderError):
        models(GPT, "Hi")
    after = usage()
    assert (after.calls, after.errors) == (before[0] + 3, before[1] + 1)
    assert after.cost == pytest.approx(before[2] + 2 * (r.cost or 0))


def test_the_process_usage_breaks_down_by_model_too(openai_srv: OpenAIServer):
    models(GPT, "Hi")
    assert usage().by_model[GPT].calls >= 1


# ---- the usage log ---------------------------------------------------------------------------

COLUMNS = "provider, model, tag, input_tokens, output_tokens, cost, cached, retries, error"


def test_the_log_has_a_row_per_call_success_error_and_cache_hit(openai_srv: OpenAIServer):
    openai_srv.usage = (1000, 500)
    with track(tag="nightly"):
        record_hit(models(GPT, "Hi"))
        openai_srv.fail(500, 500)
        with pytest.raises(ProviderError):
            models(GPT, "Boom", retries=1)
    openai_srv.fail(429)
    with pytest.raises(ProviderError):
        models(GPT, "Slow down", retries=0)
    rows = log_rows(COLUMNS)
    assert rows[0] == ("openai", "gpt-4o-mini", "nightly", 1000, 500, pytest.approx(0.00045),
                       0, 0, None)
    assert rows[1][2:] == ("nightly", 1000, 500, 0, 1, 0, None)  # the cache hit cost nothing
    assert [row[6:] for row in rows[2:]] == [(0, 1, "ProviderError"), (0, 0, "RateLimited")]
    assert [row[5] or 0 for row in rows[2:]] == [0, 0]  # a failed call is not billed
    assert log_rows("prompt, response") == [(None, None)] * 4  # not stored unless asked
    (latency,) = log_rows("latency")[0]
    assert 0 < latency < 5


def test_the_log_keeps_429s_pacing_waits_time_to_first_token_and_savings(
        openai_srv: OpenAIServer):
    openai_srv.usage = (1000, 500)
    openai_srv.fail(429)
    first = models(GPT, "Hi")  # a 429, then the answer
    assert "".join(models.stream(GPT, "Tell me a story")) == "Hello from fake"
    record_hit(first)
    _spend.record(Call(Request("openai", "gpt-4o-mini", [], {}), waited=0.25))  # paced, failed
    rows = log_rows("rate_limited, retries, waited, first_token, latency, cached, saved")
    assert [row[:3] for row in rows] == [(1, 1, 0.0), (0, 0, 0.0), (0, 0, 0.0), (0, 0, 0.25)]
    first_token, latency = rows[1][3:5]
    assert 0 < first_token <= latency and [row[3] for row in rows[::2]] == [None, None]
    assert [row[5:] for row in rows] == [(0, 0.0), (0, 0.0), (1, pytest.approx(first.cost)),
                                         (0, 0.0)]  # a cache hit saved what the call had cost


def test_a_batch_of_many_rows_is_written_whole_in_order_and_exact():
    n = 3 * _log.CHUNK + 7  # one batch (written within BATCH seconds): several INSERTs
    for i in range(n):
        call = Call(Request("openai", "gpt-4o-mini", [], {}), retries=i)
        call.response = Response("ok", "gpt-4o-mini", "openai", Usage(i, 2 * i),
                                 0.1 + i / 3, 0.5, cached=i % 2 == 1)
        _log.write(call, None, f"t{i}")
    assert log_rows("retries, tag, input_tokens, output_tokens, cost, cached") == [
        (i, f"t{i}", i, 2 * i, 0.1 + i / 3, i % 2) for i in range(n)]  # the very floats


def test_ember_log_0_writes_no_row(openai_srv: OpenAIServer, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EMBER_LOG", "0")
    models(GPT, "Hi")
    assert log_rows("model") == []
    monkeypatch.delenv("EMBER_LOG")
    models(GPT, "Hi")
    assert log_rows("model") == [("gpt-4o-mini",)]


def test_prompts_and_answers_are_logged_only_when_asked(
        openai_srv: OpenAIServer, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EMBER_LOG_PROMPTS", "1")
    openai_srv.reply_text = "Blue."
    models(GPT, "Name a colour.", system="Be terse.")
    ((prompt, answer),) = log_rows("prompt, response")
    assert "Name a colour." in prompt and "Be terse." in prompt and answer == "Blue."


def test_no_key_in_the_log_file_or_any_repr(
        openai_srv: OpenAIServer, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EMBER_LOG_PROMPTS", "1")  # even with everything logged
    secrets = [KEYS["OPENAI_API_KEY"], "sk-passed-secret-42"]
    with budget(usd=1.0) as cap, track() as t:
        models(GPT, "Hi", max_tokens=5)
        models(GPT, "Hi", max_tokens=5, api_key=secrets[1])
        openai_srv.fail(Fault(500, body={"error": {"message": f"bad {secrets[0]}"}}))
        with pytest.raises(ProviderError):
            models(GPT, "Hi", max_tokens=5, retries=0)
    assert len(log_rows("model")) == 3
    files = list(log_path().parent.glob("usage.sqlite*"))  # with -wal and -shm, if any
    shown = b"".join(path.read_bytes() for path in files) + \
        f"{cap!r}{t!r}{t.by_model!r}{usage()!r}".encode()
    assert not [secret for secret in secrets if secret.encode() in shown]


def test_the_log_is_readable_by_its_owner_only(openai_srv: OpenAIServer):
    models(GPT, "Hi")
    assert len(log_rows("model")) == 1
    assert stat.S_IMODE(log_path().parent.stat().st_mode) == 0o700
    for path in log_path().parent.glob("usage.sqlite*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_an_older_log_is_migrated_and_keeps_its_rows(openai_srv: OpenAIServer):
    log_path().parent.mkdir(mode=0o700, parents=True)
    with contextlib.closing(sqlite3.connect(log_path())) as db, db:  # as version 001 left it
        db.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied REAL)")
        db.execute("INSERT INTO migrations VALUES ('001_calls', julianday('now'))")
        db.execute("CREATE TABLE calls (time REAL, provider TEXT, model TEXT, tag TEXT, "
                   "input_tokens INT, output_tokens INT, cost REAL, latency REAL, cached INT, "
                   "retries INT, error TEXT, prompt TEXT, response TEXT)")
        db.execute("INSERT INTO calls VALUES (?, 'openai', 'gpt-4o', 'old', 7, 3, 0.5, 0.1, 0, "
                   "0, NULL, NULL, NULL)", (time.time() - 60,))
    models(GPT, "Hi")
    assert log_rows("model, tag") == [("gpt-4o", "old"), ("gpt-4o-mini", None)]
    with contextlib.closing(sqlite3.connect(log_path())) as db:
        applied = [name for (name,) in db.execute("SELECT name FROM migrations ORDER BY name")]
    assert applied == [name for name, _ in _log.MIGRATIONS]
    assert applied[:2] == ["001_calls", "002_calls_time_index"]


def test_an_unwritable_log_warns_once_and_calls_still_succeed(
        openai_srv: OpenAIServer, tmp_path: Path):
    (tmp_path / "a-file").write_text("not a folder")
    script = ("from ember import _log, models\n"
              "for _ in range(3):\n    print(models('gpt-4o-mini', 'Hi').text)\n"
              "    _log.flush()\n")  # each call's row fails in a batch of its own
    out = subprocess.run([sys.executable, "-W", "always", "-c", script], capture_output=True,
                         text=True, timeout=60, check=False,
                         env={**os.environ, "EMBER_HOME": str(tmp_path / "a-file" / "home")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["Hello from fake"] * 3
    assert out.stderr.count("Warning: ember: usage log not written") == 1, out.stderr
    assert len(openai_srv.requests) == 3


# ---- the command line ------------------------------------------------------------------------

def test_ember_usage_reports_by_model_tag_and_day(openai_srv: OpenAIServer):
    openai_srv.usage = (1000, 500)
    with track(tag="batch"):
        record_hit(models(GPT, "Hi"))
    openai_srv.fail(404)
    with pytest.raises(ProviderError):
        models(GPT, "Oops")
    log_rows("model")
    with contextlib.closing(sqlite3.connect(log_path())) as db, db:  # a call from last month
        db.execute("INSERT INTO calls (time, provider, model, input_tokens, output_tokens, cost, "
                   "cached, retries) VALUES (?, 'openai', 'gpt-4o', 1, 1, 1.0, 0, 0)",
                   (time.time() - 30 * 86400,))
    out = ember_cli("usage", "--since", "7d", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    (row,) = report["by_model"]
    assert row == {"model": GPT, "calls": 3, "cached": 1, "input_tokens": 1000,
                   "output_tokens": 500, "cache_read_tokens": 0, "cache_write_tokens": 0,
                   "unknown": 0, "cost": pytest.approx(0.00045, abs=1e-6),
                   "saved": pytest.approx(0.00045, abs=1e-6), "errors": 1, "retries": 0,
                   "rate_limited": 0, "waited": 0.0, "p50": row["p50"], "p95": row["p95"]}
    assert 0 < row["p50"] <= row["p95"] < 5
    assert report["totals"] == {key: value for key, value in row.items() if key not in (
        "model", "p50", "p95")}
    assert [(row["tag"], row["calls"]) for row in report["by_tag"]] == [("-", 1), ("batch", 2)]
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    assert [(row["time"], row["calls"]) for row in report["by_time"]] == [(today, 3)]
    table = ember_cli("usage").stdout  # every day: last month's call is back
    assert re.search(r"^openai/gpt-4o +1 ", table, re.M)
    assert re.search(r"^openai/gpt-4o-mini +3 +1 +1000 +500 ", table, re.M)
    assert re.search(r"^batch +2 ", table, re.M) and re.search(rf"^{today} +3 ", table, re.M)


def test_ember_models_names_the_embedded_model_as_the_readme_does_and_explains_tiers():
    out = ember_cli("models").stdout
    assert re.search(r"^local/smollm2 +0 +0$", out, re.M) and "smollm2-135m" not in out
    sonnet = re.search(r"^anthropic/claude-sonnet-4-5 +(.+?)  +(.+)$", out, re.M)
    assert sonnet is not None and sonnet.groups() == ("3 (6 if prompt > 200k)",
                                                      "15 (22.5 if prompt > 200k)")
    assert "tiered" not in out and "/ft:" not in re.sub(r"^openai/ft:.*$", "", out, flags=re.M)


def test_ember_models_with_an_unknown_provider_says_which_are_known():
    out = ember_cli("models", "--provider", "nope")
    assert out.returncode == 2 and out.stdout == ""
    assert "invalid choice: 'nope'" in out.stderr and "'anthropic'" in out.stderr


def test_an_unknown_price_warns_once_without_a_line_of_embers_own(openai_srv: OpenAIServer):
    script = ("from ember import models\nfor _ in range(2):\n"
              "    print(models('openai/my-own-model', 'Hi').cost)\n")
    out = subprocess.run([sys.executable, "-W", "default", "-c", script], capture_output=True,
                         text=True, timeout=60, check=True, env=dict(os.environ))
    assert out.stdout.splitlines() == ["None", "None"]
    assert out.stderr.splitlines() == [
        "ember:0: UnknownPrice: no price known for openai/my-own-model: its calls have cost=None"]


def test_ember_models_lists_claude_with_its_prices():
    out = ember_cli("models", "--provider", "anthropic")
    assert out.returncode == 0, out.stderr
    haiku = re.search(r"^anthropic/claude-haiku-4-5 +(\S+) +(\S+)$", out.stdout, re.M)
    assert haiku is not None and (float(haiku[1]), float(haiku[2])) == (1.0, 5.0)
    assert "openai/" not in out.stdout and "google/" not in out.stdout


def test_ember_models_provider_lists_only_that_providers_models():
    lines = ember_cli("models", "--provider", "anthropic").stdout.splitlines()[1:]
    assert lines and all(line.startswith("anthropic/") for line in lines)
