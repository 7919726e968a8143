"""Reliability under real failure (issue 11), proved at the fake servers: a long silent answer
is one request, a dead server fails clearly, deadline= bounds a call, thousands of calls fit a
small file-descriptor limit, Ctrl-C stops parallel(), redirects are not followed, keys never
leak, bad settings are refused unsent, a 200 of the wrong shape is retried, and usage-log rows
outlive a locked database. Long waits are scaled down through the settings that bound them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import KEYS
from fakes import AnthropicServer, Fault, GeminiServer, OpenAIServer

from ember import _http, _log, _sqlite, budget, models
from ember._call import request
from ember.errors import ConfigError, ProviderError, ProviderTimeout

GPT = "gpt-4o-mini"


def log_rows() -> int:
    _log.flush()
    path = Path(os.environ["EMBER_HOME"]) / "usage.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT count(*) FROM calls").fetchone()[0])


def python(script: str, **kw: Any) -> subprocess.Popen[str]:
    """A fresh interpreter running `script` (indented freely), in this test's environment."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


# ---- 1. long answers, dead servers, deadline= ------------------------------------------------

def test_a_long_silent_answer_is_one_request_under_the_defaults(openai_srv: OpenAIServer):
    # a reasoning model silent for 45 s, then answering: the default allows 600 s per attempt
    assert request(GPT, "Hi", api_key="k").timeout == 600 > 45
    openai_srv.latency = 1.5  # the same, run for real at a shorter silence
    assert models(GPT, "Think hard").text == "Hello from fake"
    assert len(openai_srv.requests) == 1


def test_a_server_that_accepts_and_never_answers_fails_saying_what_was_tried(
        openai_srv: OpenAIServer):
    openai_srv.fail("hang", "hang", "hang")
    with pytest.raises(ProviderTimeout) as caught:
        models(GPT, "Hi", timeout=0.3)
    message = str(caught.value)
    assert "no answer within timeout=0.3s of silence (2 attempt(s)" in message
    assert "timeout=" in message and "deadline=" in message  # the settings that change it
    assert len(openai_srv.requests) == 2


def test_a_server_that_never_accepts_fails_fast_saying_so():
    with socket.socket() as listener, contextlib.ExitStack() as queued:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # never accepted: once its queue is full, connections hang
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with_password = url.replace("//", "//me:hunter2@")
        for _ in range(3):
            sock = queued.enter_context(socket.socket())
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(listener.getsockname())
        start = time.monotonic()
        with pytest.raises(ProviderTimeout) as caught:
            models(GPT, "Hi", base_url=f"{with_password}/v1", timeout=0.3)  # no key: no header
        assert time.monotonic() - start < 3
    assert f"could not connect to {url}/v1 within 0.3s (2 attempt(s)" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_deadline_bounds_a_silent_call_without_a_retry(openai_srv: OpenAIServer):
    openai_srv.latency = 3.0
    start = time.monotonic()
    with pytest.raises(ProviderTimeout, match=r"no whole answer within deadline=0.5s \(1 attempt"):
        models(GPT, "Hi", deadline=0.5)
    assert 0.5 <= time.monotonic() - start < 2 and len(openai_srv.requests) == 1


def test_deadline_bounds_a_trickling_stream(openai_srv: OpenAIServer):
    openai_srv.stream_delay = 0.4  # every event comes well within timeout=, but slowly
    openai_srv.reply_text = "one two three four five six"
    start, got = time.monotonic(), []
    with pytest.raises(ProviderTimeout, match=r"deadline=0\.6s"):
        got.extend(models.stream(GPT, "Hi", deadline=0.6))
    assert 0.6 <= time.monotonic() - start < 2 and len(openai_srv.requests) == 1


def test_no_retry_starts_past_the_deadline(openai_srv: OpenAIServer,
                                           monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(_http, "BACKOFF", 30.0)  # any backoff would cross the deadline
    openai_srv.fail(Fault(503, {"retry-after": "5"}))
    start = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        models(GPT, "Hi", deadline=2)
    assert caught.value.status == 503 and time.monotonic() - start < 1.5
    assert len(openai_srv.requests) == 1


# ---- 2. thousands in flight; nothing after the answer can fail -------------------------------

def test_2000_calls_at_once_under_a_256_descriptor_limit_all_succeed_and_are_logged(
        openai_srv: OpenAIServer):
    child = python("""
        import asyncio, resource
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # before ember sizes its pool
        from ember import _log, gather, models

        async def main():
            return await gather(*(models.acall("gpt-4o-mini", f"q{i}") for i in range(2000)))

        print(sum(r.text == "Hello from fake" for r in asyncio.run(main())))
        _log.flush(30)
    """)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0 and out.split() == ["2000"], err[-2000:]
    assert len(openai_srv.requests) == 2000 and log_rows() == 2000


def test_an_answer_arriving_with_no_descriptor_left_is_kept_and_logged_later(
        openai_srv: OpenAIServer):
    openai_srv.latency = 1.0
    child = python("""
        import resource, sys, threading
        from ember import _log, models
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

        def starve():  # once the request is at the server, no file can be opened
            sys.stdin.readline()
            resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))
            print("starved", flush=True)

        threading.Thread(target=starve).start()
        r = models("gpt-4o-mini", "Hi")  # priced, decoded and queued for the log, starved
        _log.flush()  # the writer tries, cannot open the log, and keeps the row
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        print(r.text, r.cost > 0, flush=True)
        _log.flush()
    """)
    assert child.stdin is not None and child.stdout is not None
    assert openai_srv.wait_for(1)
    child.stdin.write("go\n")
    child.stdin.flush()
    assert child.stdout.readline() == "starved\n"
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0 and out == "Hello from fake True\n", err
    assert "usage log not written" in err and "kept and tried again" in err
    assert log_rows() == 1


def test_the_log_writer_survives_any_exception_and_keeps_the_rows(
        openai_srv: OpenAIServer, monkeypatch: pytest.MonkeyPatch):
    real, failures = _sqlite.connect, [RuntimeError("not an OSError at all")]

    def connect(*args: Any) -> sqlite3.Connection:
        if failures:
            raise failures.pop()
        return real(*args)

    monkeypatch.setattr(_sqlite, "connect", connect)
    with pytest.warns(UserWarning, match="not an OSError at all"):
        models(GPT, "Hi")
        _log.flush()
    models(GPT, "Hi again")
    assert log_rows() == 2


# ---- 3. Ctrl-C during parallel(sync_fn, ...) -------------------------------------------------

def test_ctrl_c_stops_parallel_of_a_sync_function_at_once_and_sends_nothing_new(
        openai_srv: OpenAIServer):
    openai_srv.fail(*["hang"] * 200)
    child = python("""
        import signal
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with `&`
        from ember import models, parallel

        def ask(i):  # each attempt times out in 0.5 s and is retried: it sends while it runs
            return models("gpt-4o-mini", f"q{i}", timeout=0.5).text

        parallel(ask, range(40), concurrency=4)
    """)
    assert openai_srv.wait_for(4, timeout=30)
    sent = len(openai_srv.requests)
    start = time.monotonic()
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert time.monotonic() - start < 1.0, err
    assert err.count("Traceback") == 1 and "KeyboardInterrupt" in err, err
    assert not openai_srv.wait_for(sent + 1, timeout=1.0)  # not one request more


# ---- 4, 5. keys go nowhere else and show nowhere ---------------------------------------------

@pytest.mark.parametrize("fixture", ["anthropic_srv", "gemini_srv"])
def test_a_redirect_is_reported_not_followed_with_the_key(fixture: str,
                                                          request: pytest.FixtureRequest):
    srv: AnthropicServer | GeminiServer = request.getfixturevalue(fixture)
    model = "claude-haiku-4-5" if fixture == "anthropic_srv" else "gemini-2.5-flash"
    with OpenAIServer() as elsewhere:
        srv.fail(Fault(307, {"Location": f"{elsewhere.url}/steal"}, body=""))
        with pytest.raises(ProviderError) as caught:
            models(model, "Hi")
        assert elsewhere.requests == []
    assert caught.value.status == 307 and f"{elsewhere.url}/steal" in str(caught.value)
    assert len(srv.requests) == 1


def test_a_key_is_hidden_before_the_message_is_cut_and_in_any_case(openai_srv: OpenAIServer):
    key = KEYS["OPENAI_API_KEY"]
    openai_srv.fail(Fault(500, body="x" * 490 + key),  # the cut at 500 falls inside the key
                    Fault(400, body={"error": {"message": f"bad key {key.upper()}"}}))
    for _ in range(2):
        with pytest.raises(ProviderError) as caught:
            models(GPT, "Hi", retries=0)
        shown = str(caught.value).lower()
        assert key[:6] not in shown and "***" in shown


def test_a_bound_models_key_shows_in_neither_vars_nor_repr(openai_srv: OpenAIServer):
    gpt = models.instance(GPT, api_key="sk-bound-secret-77")
    assert "sk-bound-secret-77" not in f"{vars(gpt)!r}{gpt!r}"
    assert gpt("Hi").text == "Hello from fake"
    assert openai_srv.requests[0].headers["authorization"] == "Bearer sk-bound-secret-77"


# ---- 6. ember's own settings ----------------------------------------------------------------

@pytest.mark.parametrize("settings, named", [
    ({"retries": -1}, "retries"), ({"retries": 1.5}, "retries"), ({"retries": None}, "retries"),
    ({"timeout": 0}, "timeout"), ({"timeout": None}, "timeout"), ({"timeout": "30"}, "timeout"),
    ({"timeout": float("nan")}, "timeout"), ({"deadline": -1}, "deadline"),
    ({"max_tokens": "lots"}, "max_tokens"), ({"max_tokens": -5}, "max_tokens"),
    ({"base_url": "not a url"}, "base_url"), ({"system": ["be", "terse"]}, "system"),
    ({"api_key": "sk-from-a-file\n"}, "api_key")])
def test_a_bad_setting_is_a_config_error_naming_it_and_nothing_is_sent(
        settings: dict[str, Any], named: str, openai_srv: OpenAIServer):
    with pytest.raises(ConfigError, match=f"^{named}= takes .+, not "):
        models(GPT, "Hi", **settings)
    with budget(usd=1.0), pytest.raises(ConfigError, match=f"^{named}= takes"):
        models(GPT, "Hi", **{"max_tokens": 5, **settings})
    assert openai_srv.requests == []


def test_a_system_message_without_content_is_a_config_error(openai_srv: OpenAIServer):
    with pytest.raises(ConfigError, match=r"^prompt= takes .*'content'"):
        models(GPT, [{"role": "system"}, {"role": "user", "content": "Hi"}])
    assert openai_srv.requests == []


@pytest.mark.parametrize("caps", [{"usd": -1}, {"tokens": -1}, {"usd": "2"}, {"tokens": 1.5}])
def test_a_budget_below_zero_or_not_a_number_is_refused(caps: dict[str, Any]):
    with pytest.raises(ConfigError, match=f"^{next(iter(caps))}= takes"):
        budget(**caps)


# ---- 7. a 200 of the wrong shape -------------------------------------------------------------

@pytest.mark.parametrize("fixture, model", [("openai_srv", GPT),
                                            ("anthropic_srv", "claude-haiku-4-5")])
def test_a_200_of_the_wrong_shape_is_retried_then_quoted(fixture: str, model: str,
                                                         request: pytest.FixtureRequest):
    srv: OpenAIServer | AnthropicServer = request.getfixturevalue(fixture)
    srv.fail(Fault(200, body={"id": "odd"}))
    assert models(model, "Hi").text == "Hello from fake" and len(srv.requests) == 2
    srv.fail(*[Fault(200, body={"id": "odd"})] * 2)
    with pytest.raises(ProviderError) as caught:
        models(model, "Hi", retries=1)
    assert caught.value.status == 200 and """{"id": "odd"}""" in caught.value.message


# ---- 8. a usage log held by another process --------------------------------------------------

@pytest.mark.filterwarnings("ignore:ember. usage log not written")
def test_rows_survive_a_log_locked_by_another_process_longer_than_sqlite_waits(
        openai_srv: OpenAIServer, monkeypatch: pytest.MonkeyPatch):
    real = sqlite3.connect  # a 0.2 s wait for the lock stands for the 5 s ember allows
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: real(*a, **{**k, "timeout": 0.2}))
    models(GPT, "Hi")
    assert log_rows() == 1
    holder = python(f"""
        import sqlite3, sys
        db = sqlite3.connect({str(Path(os.environ["EMBER_HOME"]) / "usage.sqlite")!r},
                             isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        print("held", flush=True)
        sys.stdin.read()
    """)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    for _ in range(3):
        models(GPT, "Hi")
    assert log_rows() == 1  # the writer tried and could not write them
    holder.communicate(timeout=10)  # the other process lets go
    assert log_rows() == 4
