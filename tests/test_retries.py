"""Retries and timeouts, counted and timed at the server: what is retried, how long ember
waits, and that concurrent callers do not come back in lockstep."""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import statistics
import time

import pytest
from fakes import Fault, OpenAIServer

from ember import _http, models
from ember.errors import ProviderError, ProviderTimeout, RateLimited


def test_transient_statuses_are_retried_until_success(openai_srv: OpenAIServer):
    openai_srv.fail(429, 500, 503, Fault(408), Fault(409), Fault(502))
    r = models("gpt-4o-mini", "Hi", retries=6)
    assert r.text == "Hello from fake"
    assert len(openai_srv.requests) == 7


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_are_not_retried(status: int, openai_srv: OpenAIServer):
    openai_srv.fail(status)
    with pytest.raises(ProviderError) as caught:
        models("gpt-4o-mini", "Hi")
    assert caught.value.status == status
    assert len(openai_srv.requests) == 1


def test_retries_run_out_with_the_last_error(openai_srv: OpenAIServer):
    openai_srv.fail(500, 500, 500)
    with pytest.raises(ProviderError) as caught:
        models("gpt-4o-mini", "Hi", retries=2)
    assert caught.value.status == 500 and "server had an error" in caught.value.message
    assert len(openai_srv.requests) == 3


def test_retries_zero_sends_once(openai_srv: OpenAIServer):
    openai_srv.fail(429)
    with pytest.raises(RateLimited):
        models("gpt-4o-mini", "Hi", retries=0)
    assert len(openai_srv.requests) == 1


def test_a_truncated_200_body_is_retried(openai_srv: OpenAIServer):
    openai_srv.fail("truncate")
    assert models("gpt-4o-mini", "Hi").text == "Hello from fake"
    assert len(openai_srv.requests) == 2


def test_a_truncated_body_every_time_ends_in_a_clear_error(openai_srv: OpenAIServer):
    openai_srv.fail("truncate", "truncate")
    with pytest.raises(ProviderError, match="cut short or was not valid JSON"):
        models("gpt-4o-mini", "Hi", retries=1)


def test_a_dropped_connection_is_retried(openai_srv: OpenAIServer):
    openai_srv.fail("disconnect")
    assert models("gpt-4o-mini", "Hi").text == "Hello from fake"
    assert len(openai_srv.requests) == 2


def test_a_hung_server_times_out_and_the_retry_succeeds(openai_srv: OpenAIServer):
    openai_srv.fail("hang")
    start = time.monotonic()
    r = models("gpt-4o-mini", "Hi", timeout=0.5)
    assert r.text == "Hello from fake" and len(openai_srv.requests) == 2
    gap = openai_srv.requests[1].at - openai_srv.requests[0].at
    assert 0.5 <= gap < 5 and time.monotonic() - start < 5


def test_a_server_that_always_hangs_costs_two_timeouts_not_four(openai_srv: OpenAIServer):
    openai_srv.fail("hang", "hang", "hang", "hang")
    with pytest.raises(ProviderTimeout) as caught:
        models("gpt-4o-mini", "Hi", timeout=0.3)  # retries=3 by default
    assert isinstance(caught.value, TimeoutError) and "0.3" in str(caught.value)
    assert len(openai_srv.requests) == 2


@pytest.mark.parametrize("header, value, seconds", [
    ("retry-after", "0.4", 0.4), ("retry-after-ms", "300", 0.3)])
def test_retry_after_is_honoured(header: str, value: str, seconds: float,
                                 openai_srv: OpenAIServer):
    openai_srv.fail(Fault(429, {header: value}))
    models("gpt-4o-mini", "Hi")
    first, second = openai_srv.requests
    assert seconds <= second.at - first.at < seconds + 2


def test_retry_after_as_an_http_date_or_garbage(openai_srv: OpenAIServer):
    soon = email.utils.formatdate(time.time() + 1.5, usegmt=True)  # whole seconds: 0.5-1.5 s
    openai_srv.fail(Fault(429, {"retry-after": soon}), Fault(503, {"retry-after": "soon-ish"}))
    assert models("gpt-4o-mini", "Hi").text == "Hello from fake"
    first, second, third = openai_srv.requests
    assert 0.4 <= second.at - first.at < 4  # the date was honoured
    assert third.at - second.at < 0.4  # an unreadable header falls back to backoff


def test_a_retry_after_beyond_the_cap_is_not_waited_for(openai_srv: OpenAIServer):
    openai_srv.fail(Fault(429, {"retry-after": "3600"}))
    start = time.monotonic()
    with pytest.raises(RateLimited):
        models("gpt-4o-mini", "Hi")
    assert len(openai_srv.requests) == 1 and time.monotonic() - start < 2


async def test_concurrent_retries_are_spread_by_jitter(openai_srv: OpenAIServer,
                                                       monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(_http, "BACKOFF", 0.5)
    n = 20
    openai_srv.fail(*[Fault(429, {"retry-after": "0.2"})] * n)
    results = await asyncio.gather(*(models.acall("gpt-4o-mini", f"Hi {i}") for i in range(n)))
    assert len(results) == n and len(openai_srv.requests) == 2 * n
    retries = sorted(r.at for r in openai_srv.requests[n:])
    firsts = [r.at for r in openai_srv.requests[:n]]
    assert retries[0] - max(firsts) >= 0.2 - 0.01  # nobody came back before retry-after
    gaps = [b - a for a, b in itertools.pairwise(retries)]
    assert retries[-1] - retries[0] > 0.15  # spread out, not a stampede
    assert max(gaps) < 0.3 and statistics.mean(gaps) > 0.005


def test_backoff_is_exponential_with_full_jitter(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(_http, "BACKOFF", 0.5)
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (10, _http.MAX_BACKOFF)]:
        waits = [_http.retry_delay(attempt, None) for _ in range(2000)]
        assert min(waits) >= 0 and max(waits) <= ceiling
        assert max(waits) > 0.9 * ceiling and min(waits) < 0.1 * ceiling  # full range used
    with_header = [_http.retry_delay(0, 2.0) for _ in range(2000)]
    assert min(with_header) >= 2.0 and max(with_header) > 2.5  # honoured, plus jitter


def test_opening_a_stream_is_retried(openai_srv: OpenAIServer):
    openai_srv.fail(429, "disconnect")
    assert "".join(models.stream("gpt-4o-mini", "Hi")) == "Hello from fake"
    assert len(openai_srv.requests) == 3
