"""Pacing: limit(), limits learned from the providers' headers, one concurrency count for the
process. Every rate is measured where the provider would see it: arrival times at the fake
server (Recorded.at, time.monotonic() in this process)."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aiohttp import web
from conftest import serve
from fakes import FakeProvider, Fault, OpenAIServer

from ember import _pace, aparallel, gather, limit, models, parallel
from ember._call import request
from ember._types import Call
from ember.errors import ConfigError, RateLimited, UnknownModel

GPT = "gpt-4o-mini"
CLAUDE = "claude-sonnet-4-5"


class Server(OpenAIServer):
    """The OpenAI fake, counting the requests in flight at once (`most`). With `rate`, it also
    refuses what passes `rate` requests a second, as a bucket of `rate` requests refilled
    continuously, and says so as OpenAI does: on every answer, the limit a minute, what is
    left in the bucket and the time until it is full; on a 429, also retry-after-ms."""

    def __init__(self, rate: float | None = None, **kw: Any) -> None:
        self.rate, self.bucket, self.filled = rate, rate or 0.0, time.monotonic()
        self.flying = self.most = self.refused = 0
        super().__init__(**kw)

    def _said(self) -> dict[str, str]:
        assert self.rate
        full = (self.rate - self.bucket) / self.rate  # seconds until the bucket is full
        return {"x-ratelimit-limit-requests": str(round(self.rate * 60)),
                "x-ratelimit-remaining-requests": str(int(self.bucket)),
                "x-ratelimit-reset-requests": f"{full * 1e3:.0f}ms"}

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        said: dict[str, str] = {}
        if self.rate:  # runs on the server's one loop: no lock needed
            now = time.monotonic()
            self.bucket = min(self.rate, self.bucket + (now - self.filled) * self.rate)
            self.filled = now
            if self.bucket < 1:
                self.refused += 1
                refusal = self._error(429, None, GPT)
                wait = (1 - self.bucket) / self.rate
                refusal.headers.update(self._said() | {"retry-after-ms": f"{wait * 1e3:.0f}"})
                return refusal
            self.bucket -= 1
            said = self._said()
        self.flying += 1
        self.most = max(self.most, self.flying)
        try:
            answer = await super()._handle(request)
        finally:
            self.flying -= 1
        answer.headers.update(said)
        return answer


@pytest.fixture
def counting_srv(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from serve(Server(latency=0.05), monkeypatch, "OPENAI_BASE_URL", "OPENAI_API_KEY")


@pytest.fixture(params=["openai", "anthropic"])
def srv(request: pytest.FixtureRequest) -> FakeProvider:
    server: FakeProvider = request.getfixturevalue(f"{request.param}_srv")
    return server


def spaced(times: list[float], seconds: float, slack: float = 0.02) -> bool:
    """True when no window of any length holds more than its share plus one call: the j-th
    arrival comes at least (j - i) turns after the i-th (`slack`: the trip to the server, and
    the server's thread sharing this process's GIL)."""
    times = sorted(times)
    return all(times[j] - times[i] >= (j - i) * seconds - slack
               for i in range(len(times)) for j in range(i + 1, len(times)))


async def test_rpm_is_never_exceeded_in_any_window_by_async_and_sync_callers(openai_srv):
    await models.acall(GPT, "warm")  # one-time imports and connections are not part of the pace
    await asyncio.to_thread(models, GPT, "warm")
    limit("openai", rpm=1200)  # a turn every 50 ms
    calls = [models.acall(GPT, f"async {i}") for i in range(12)]
    calls += [asyncio.to_thread(models, GPT, f"sync {i}") for i in range(6)]  # ember's own loop
    await asyncio.gather(*calls)
    times = [r.at for r in openai_srv.requests[2:]]
    assert len(times) == 18 and spaced(times, 0.05)
    assert max(times) - min(times) < 17 * 0.05 + 0.25  # paced, and not slower than that


async def test_a_model_target_paces_that_model_a_provider_target_all_of_them(openai_srv):
    await gather(models.acall(GPT, "warm"), models.acall("gpt-4o", "warm"))  # connections,
    openai_srv.requests.clear()  # price data: one-time costs are not part of the pace
    limit(GPT, rpm=600)  # a turn every 100 ms, for gpt-4o-mini only
    await asyncio.gather(*(models.acall(m, "hi") for m in [GPT] * 4 + ["gpt-4o"] * 4))
    mini = [r.at for r in openai_srv.requests if r.json["model"] == GPT]
    other = [r.at for r in openai_srv.requests if r.json["model"] == "gpt-4o"]
    assert spaced(mini, 0.1) and not spaced(other, 0.1)
    limit("openai", rpm=600)
    limit(GPT)  # no numbers: the model's own limit goes, the provider's stays
    await asyncio.gather(*(models.acall(m, "hi") for m in [GPT] * 3 + ["gpt-4o"] * 3))
    assert spaced([r.at for r in openai_srv.requests[8:]], 0.1)
    limit("openai", concurrency=8)  # replaces the provider's limit: no rpm left
    await asyncio.gather(*(models.acall(GPT, "hi") for _ in range(4)))
    assert not spaced([r.at for r in openai_srv.requests[14:]], 0.1)


async def test_tpm_paces_by_the_estimate_and_corrects_it_by_the_real_usage(openai_srv):
    limit("openai", tpm=600_000)  # 10,000 tokens a second
    # each call is estimated at max_tokens plus its size / 4: just over 2,000 tokens, 0.2 s;
    # it uses 17 (the fake's usage)
    await asyncio.gather(*(models.acall(GPT, "hi", max_tokens=2000) for _ in range(3)))
    assert spaced([r.at for r in openai_srv.requests], 0.2)
    for _ in range(3):  # one at a time: each gives back what it did not use before the next
        await models.acall(GPT, "hi", max_tokens=2000)
    times = [r.at for r in openai_srv.requests[2:]]
    assert all(b - a < 0.1 for a, b in itertools.pairwise(times))


@pytest.mark.parametrize("numbers", [{"rpm": 0}, {"rpm": -5}, {"tpm": "100"}, {"rpm": True},
                                     {"rpm": float("nan")}, {"tpm": float("inf")},
                                     {"concurrency": 2.5}, {"concurrency": 0}])
def test_bad_values_are_refused_naming_the_parameter(numbers: dict[str, Any]):
    name = next(iter(numbers))
    with pytest.raises(ConfigError, match=f"{name}= takes a positive"):
        limit("openai", **numbers)
    assert not _pace._configured


def test_an_unknown_target_is_refused():
    with pytest.raises(UnknownModel):
        limit("gtp-4o", rpm=10)


async def test_learned_limits_pace_once_less_than_half_remains(srv: FakeProvider):
    model = GPT if srv.name == "openai" else CLAUDE
    srv.headers = srv.ratelimit_headers(requests=(1200, 1000))  # plenty left: no pacing
    await models.acall(model, "hi")
    await asyncio.gather(*(models.acall(model, "hi") for _ in range(5)))
    assert not spaced([r.at for r in srv.requests[1:]], 0.05)
    srv.headers = srv.ratelimit_headers(requests=(1200, 500))  # under half: 1200 a minute
    await models.acall(model, "hi")
    await asyncio.gather(*(models.acall(model, "hi") for _ in range(6)))
    assert spaced([r.at for r in srv.requests[6:]], 0.05)


async def test_none_remaining_holds_calls_until_the_reset(srv: FakeProvider):
    model = GPT if srv.name == "openai" else CLAUDE
    await models.acall(model, "warm")  # one-time imports, before the reset moment is set
    reset = 0.5 if srv.name == "openai" else 1.5  # Anthropic's is in whole seconds
    srv.headers = srv.ratelimit_headers(requests=(1200, 0), reset=reset)
    await models.acall(model, "hi")
    answered = time.monotonic()
    if srv.name == "anthropic":  # a moment in RFC 3339, not a duration ('0.5s')
        at = srv.headers["anthropic-ratelimit-requests-reset"]
        reset = datetime.datetime.fromisoformat(at).timestamp() - time.time()
    assert reset > 0.3
    await models.acall(model, "hi")
    assert srv.requests[2].at >= answered + reset - 0.02


async def test_a_429_holds_every_call_for_its_retry_after(openai_srv: OpenAIServer):
    openai_srv.fail(Fault(429, {"retry-after": "0.4"}))
    with pytest.raises(RateLimited):
        await models.acall(GPT, "refused", retries=0)
    await asyncio.gather(*(models.acall(GPT, "hi") for _ in range(3)))
    assert min(r.at for r in openai_srv.requests[1:]) >= openai_srv.requests[0].at + 0.4
    openai_srv.fail(Fault(429, {"retry-after": "3600"}))  # too long: not waited for by anyone
    with pytest.raises(RateLimited):
        await models.acall(GPT, "refused", retries=0)
    await asyncio.wait_for(models.acall(GPT, "hi"), 2)


async def test_calls_already_waiting_for_a_turn_are_held_by_a_later_pause(openai_srv):
    await models.acall(GPT, "warm")  # one-time imports (they block the loop) are done
    limit("openai", rpm=600)  # turns at 0, 100, 200, 300 ms
    openai_srv.fail(Fault(429, {"retry-after": "0.5"}))  # the first is refused: all wait 0.5 s
    calls = [models.acall(GPT, "refused", retries=0)]
    calls += [models.acall(GPT, f"waiting {i}") for i in range(3)]
    refused, *answers = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(refused, RateLimited) and all(a.text for a in answers)
    first, *others = [r.at for r in openai_srv.requests[1:]]
    assert min(others) >= first + 0.5 and spaced(others, 0.1)


async def test_local_providers_are_paced_only_as_configured(openai_srv: OpenAIServer):
    openai_srv.headers = openai_srv.ratelimit_headers(requests=(60, 0), reset=30)
    local = models.instance("ollama/llama3", base_url=openai_srv.base_url, api_key="none")
    for _ in range(3):
        await asyncio.wait_for(local.acall("hi"), 2)  # the headers are not heeded
    limit("ollama", rpm=600)
    await asyncio.gather(*(local.acall("hi") for _ in range(3)))
    assert spaced([r.at for r in openai_srv.requests[3:]], 0.1)


def test_concurrency_is_one_count_across_threads_and_event_loops(counting_srv: Server):
    limit("openai", concurrency=3)

    async def six() -> None:
        await asyncio.gather(*(models.acall(GPT, "hi") for _ in range(6)))

    with ThreadPoolExecutor(2) as pool:  # two threads, each with its own event loop
        loops = [pool.submit(asyncio.run, six()) for _ in range(2)]
        texts = parallel(lambda i: models(GPT, "hi").text, range(6), concurrency=6)
        for each in loops:
            each.result()
    assert len(texts) == 6 and len(counting_srv.requests) == 18
    assert counting_srv.most == 3


async def test_a_stream_holds_its_place_until_it_has_been_read(counting_srv: Server):
    limit("openai", concurrency=1)
    counting_srv.stream_delay = 0.02  # the server sends each event 20 ms after the last

    async def read() -> str:
        return "".join([text async for text in models.astream(GPT, "hi")])

    assert await asyncio.gather(read(), read(), read()) == ["Hello from fake"] * 3
    assert counting_srv.most == 1


async def test_a_caller_cancelled_while_waiting_leaves_no_place_taken(counting_srv: Server):
    limit("openai", concurrency=1)
    counting_srv.latency = 0.2
    first = asyncio.create_task(models.acall(GPT, "first"))
    await asyncio.to_thread(counting_srv.wait_for, 1)
    second = asyncio.create_task(models.acall(GPT, "second"))
    await asyncio.sleep(0)  # one step: the second call is now in line for the place
    assert len(_pace._configured["openai"].places.line) == 1  # type: ignore[union-attr]
    second.cancel()
    await first
    with pytest.raises(asyncio.CancelledError):
        await second
    await asyncio.wait_for(models.acall(GPT, "third"), 2)
    assert [r.json["messages"][0]["content"] for r in counting_srv.requests] == ["first", "third"]


@pytest.mark.parametrize("told", [False, True])
async def test_a_place_handed_to_a_caller_cancelled_meanwhile_is_not_lost(told: bool):
    places = _pace.Places(1)
    await places.acquire()
    waiting = asyncio.create_task(places.acquire())
    await asyncio.sleep(0)  # one step: it is in line
    await places.release()  # the place is handed to it; its loop is told on its next step
    if told:
        await asyncio.sleep(0)  # ...which comes; the caller is cancelled before it resumes
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.wait_for(places.acquire(), 1)  # the place was passed on, not lost
    assert places.free == 0 and not places.line


async def test_a_retry_waits_for_a_turn_too(openai_srv: OpenAIServer):
    limit("openai", rpm=600)
    openai_srv.fail(500)
    await models.acall(GPT, "hi")
    assert len(openai_srv.requests) == 2  # the transport's own backoff is <= 10 ms here
    assert spaced([r.at for r in openai_srv.requests], 0.1)


async def test_a_call_records_the_seconds_it_waited(openai_srv: OpenAIServer):
    limit("openai", rpm=600)
    calls = [Call(request(GPT, "hi")) for _ in range(2)]
    for call in calls:
        await _pace.wait(call, {})
    assert calls[0].waited < 0.01 and 0.09 < calls[1].waited <= 0.11


async def test_unconfigured_calls_learn_the_pace_so_429s_stay_rare(monkeypatch):
    for server in serve(Server(rate=20), monkeypatch, "OPENAI_BASE_URL", "OPENAI_API_KEY"):

        async def call(i: int) -> str:
            return (await models.acall(GPT, f"{i}")).text

        texts = await aparallel(call, range(40), concurrency=30)
        # the first wave (30 at once) finds a bucket of 20; after that, nothing is refused
        assert len(texts) == 40 and len(server.requests) == 40 and server.refused <= 10
