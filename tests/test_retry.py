"""`@retry` on user functions: attempts counted (at the fake server where a model is called),
the waits drawn from the transport's jittered backoff, signatures and permanent errors kept."""

from __future__ import annotations

import inspect
import json
import time

import pytest
from fakes import OpenAIServer

from ember import budget, models, retry
from ember.errors import BudgetExceeded, ConfigError

GPT = "openai/gpt-4o-mini"


def flaky(failures: int, error: Exception) -> tuple[list[int], object]:
    """A function that fails `failures` times with `error`, then returns its argument."""
    calls: list[int] = []

    def work(x: int) -> int:
        calls.append(x)
        if len(calls) <= failures:
            raise error
        return x

    return calls, work


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every wait between attempts, recorded instead of slept (sync and async alike)."""
    seen: list[float] = []

    async def asleep(seconds: float) -> None:
        seen.append(seconds)

    monkeypatch.setattr(time, "sleep", seen.append)
    monkeypatch.setattr("asyncio.sleep", asleep)
    return seen


def test_a_sync_function_is_called_again_until_it_succeeds(waits: list[float]):
    calls, work = flaky(2, ValueError("bad parse"))
    assert retry(max_attempts=3)(work)(7) == 7
    assert calls == [7, 7, 7] and len(waits) == 2


async def test_an_async_function_is_awaited_again_until_it_succeeds(waits: list[float]):
    calls: list[int] = []

    @retry(max_attempts=4)
    async def work(x: int) -> int:
        calls.append(x)
        if len(calls) < 4:
            raise ValueError("not yet")
        return x * 2

    assert await work(5) == 10
    assert calls == [5] * 4 and len(waits) == 3


def test_after_the_last_attempt_the_last_exception_is_raised_as_it_was(waits: list[float]):
    error = ValueError("still bad")
    calls, work = flaky(10, error)
    with pytest.raises(ValueError) as caught:
        retry(max_attempts=3)(work)(1)
    assert caught.value is error and len(calls) == 3


def test_only_the_exceptions_named_in_on_are_retried(waits: list[float]):
    calls, work = flaky(1, KeyError("x"))
    with pytest.raises(KeyError):
        retry(on=ValueError)(work)(1)
    assert len(calls) == 1
    calls, work = flaky(1, KeyError("x"))
    assert retry(on=(ValueError, KeyError))(work)(1) == 1 and len(calls) == 2


@pytest.mark.parametrize("error", [ConfigError("fix the code"), BudgetExceeded("over the cap")])
def test_embers_permanent_refusals_are_never_retried(error: Exception, waits: list[float]):
    calls, work = flaky(5, error)
    with pytest.raises(type(error)):
        retry(max_attempts=5)(work)(1)
    assert len(calls) == 1 and waits == []


def test_waits_are_the_transports_full_jitter_doubling_from_backoff(waits: list[float]):
    for _ in range(200):
        _, work = flaky(3, ValueError())
        retry(max_attempts=4, backoff=0.25)(work)(1)
    firsts, seconds, thirds = waits[0::3], waits[1::3], waits[2::3]
    for drawn, ceiling in [(firsts, 0.25), (seconds, 0.5), (thirds, 1.0)]:
        assert all(0 <= wait <= ceiling for wait in drawn)
        assert max(drawn) > ceiling * 0.8 and min(drawn) < ceiling * 0.2  # jittered, not fixed


def test_the_signature_is_kept_and_a_wrong_call_is_pythons_own_typeerror(waits: list[float]):
    calls: list[str] = []

    @retry(max_attempts=3)
    def classify(text: str, *, strict: bool = False) -> str:
        calls.append(text)
        return text

    assert classify.__name__ == "classify"
    assert inspect.signature(classify) == inspect.signature(classify.__wrapped__)
    assert list(inspect.signature(classify).parameters) == ["text", "strict"]
    with pytest.raises(TypeError, match=r"classify\(\) takes 1 positional argument"):
        classify("a", "b")
    assert calls == [] and waits == []  # not called, not retried


async def test_an_async_wrong_call_is_not_retried_either(waits: list[float]):
    @retry()
    async def classify(text: str) -> str:
        return text

    with pytest.raises(TypeError, match=r"classify\(\) got an unexpected keyword"):
        await classify("a", mode="x")
    assert waits == []


@pytest.mark.parametrize("settings", [{"max_attempts": 0}, {"max_attempts": 1.5},
                                      {"backoff": -1}])
def test_bad_settings_are_a_config_error_naming_them(settings: dict[str, float]):
    with pytest.raises(ConfigError, match=next(iter(settings))):
        retry(**settings)  # type: ignore[arg-type]


def test_a_model_answer_that_does_not_parse_is_asked_again(openai_srv: OpenAIServer):
    openai_srv.reply_text = "Sure! Here is the JSON you asked for"

    @retry(max_attempts=3, on=json.JSONDecodeError, backoff=0.01)
    def extract(text: str) -> dict[str, str]:
        answer = models(GPT, f"Extract the city as JSON: {text}").text
        if len(openai_srv.requests) == 3:
            openai_srv.reply_text = '{"city": "Paris"}'  # the next answer would parse
        return dict(json.loads(answer))

    with pytest.raises(json.JSONDecodeError):
        extract("I live in Paris")
    assert len(openai_srv.requests) == 3  # three attempts, each a real request
    assert extract("I live in Paris") == {"city": "Paris"}


def test_a_retried_call_under_a_budget_is_refused_once_the_cap_is_reached(
        openai_srv: OpenAIServer):
    openai_srv.reply_text, openai_srv.usage = "not json", (len(b"Hi") + 8, 100)  # the worst case

    @retry(max_attempts=10, on=json.JSONDecodeError, backoff=0)
    def extract() -> object:
        return json.loads(models(GPT, "Hi", max_tokens=100).text)

    one_call = ((len(b"Hi") + 8) * 0.15 + 100 * 0.60) / 1e6
    with budget(usd=one_call * 2.5), pytest.raises(BudgetExceeded):
        extract()
    assert len(openai_srv.requests) == 2  # the third attempt could cross the cap: unsent


# ---- the seed's stack: @retry over @cache over @batch ------------------------------------

def seed_stack(store: object, fail_first: bool = False) -> tuple[object, list[list[str]]]:
    """The seed's decorator stack, exactly, around a function that embeds a list of texts in
    one request; the lists it was called with are recorded."""
    from ember import MemoryStore, batch, cache  # noqa: F401  (the names as a user imports them)

    lists: list[list[str]] = []

    @retry(max_attempts=3)
    @cache(ttl=3600, store=store)
    @batch(size=10)
    async def classify(texts: list[str]) -> list[str]:
        lists.append(list(texts))
        if fail_first and len(lists) == 1:
            raise ValueError("the first batch fails once")  # retried by @retry
        r = await models.aembed("text-embedding-3-small", texts)
        return ["positive" if v[0] > 0 else "negative" for v in r.vectors]

    return classify, lists


async def test_the_seeds_stack_groups_caches_and_retries(openai_srv: OpenAIServer):
    from ember import MemoryStore, gather

    classify, lists = seed_stack(MemoryStore())
    texts = [f"review {i}" for i in range(25)]
    labels = await gather(*(classify(t) for t in texts))
    assert set(labels) <= {"positive", "negative"} and len(labels) == 25
    assert len(openai_srv.requests) == 3  # 25 callers grouped into 10 + 10 + 5
    assert sorted(map(len, lists)) == [5, 10, 10]
    assert await gather(*(classify(t) for t in texts)) == labels  # all from the cache now
    assert len(openai_srv.requests) == 3
    with pytest.raises(TypeError, match=r"classify\(\) takes 1 positional argument"):
        await classify("a", "b")
    assert classify.__name__ == "classify"


def test_the_seeds_stack_works_from_sync_code(openai_srv: OpenAIServer):
    from ember import MemoryStore, parallel

    classify, _ = seed_stack(MemoryStore())
    texts = [f"review {i}" for i in range(12)]
    labels = parallel(classify, texts)  # an async def, awaited on ember's own loop
    assert len(labels) == 12 and len(openai_srv.requests) == 2
    assert parallel(classify, texts) == labels and len(openai_srv.requests) == 2


async def test_in_the_seeds_stack_a_failed_group_is_retried_caller_by_caller(
        openai_srv: OpenAIServer):
    from ember import MemoryStore, gather

    classify, lists = seed_stack(MemoryStore(), fail_first=True)
    texts = [f"review {i}" for i in range(25)]
    labels = await gather(*(classify(t) for t in texts))  # every caller gets its label
    assert len(labels) == 25 and len(lists[0]) == 10  # the first group of 10 failed once...
    sent = [text for request in openai_srv.requests for text in request.json["input"]]
    assert sorted(sent) == sorted(texts)  # ...and each of its texts was sent again, once
