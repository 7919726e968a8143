"""Random values thrown at the public functions' parameters (hypothesis): whatever comes in,
only documented exceptions come out, and a call that is refused sends nothing (counted at the
fake server). Documented: ConfigError (a setting ember cannot use; UnknownModel and MissingKey
are ConfigErrors), TypeError for a model or prompt of the wrong type, BudgetExceeded, and a
ProviderError (or ProviderTimeout) for a call that was sent. Nothing leaves loopback: a
base_url is either the fake server's or one that is not an http(s) URL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakes import OpenAIServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember import budget, gather, models, parallel
from ember.errors import BudgetExceeded, ConfigError, PartialFailure, ProviderError

GPT = "gpt-4o-mini"
LOOPBACK = "<the fake server>"
anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                     st.lists(st.integers(), max_size=2),
                     st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
not_a_url = anything.filter(lambda value: not (isinstance(value, str) and "://" in value))
own_settings = st.fixed_dictionaries({}, optional={
    "timeout": st.one_of(anything, st.floats(0.001, 3)),
    "deadline": st.one_of(anything, st.floats(0.001, 3)),
    "retries": st.one_of(anything, st.integers(0, 3)),
    "max_tokens": st.one_of(anything, st.integers(1, 10**6)),
    "system": st.one_of(anything, st.text(max_size=20)),
    "api_key": st.one_of(anything, st.text(max_size=20)),
    "base_url": st.one_of(not_a_url, st.just(LOOPBACK)),
    "temperature": st.floats(0, 2)})
message = st.dictionaries(st.sampled_from(["role", "content", "name"]),
                          st.one_of(st.sampled_from(["system", "user", "assistant"]),
                                    st.text(max_size=10), st.integers(), st.none()))
prompts = st.one_of(st.text(max_size=20), anything, st.lists(message, max_size=3))
models_ = st.one_of(st.just(GPT), st.just("gtp-4o-mini"), st.none(), st.integers())
caps = st.fixed_dictionaries({}, optional={"usd": st.one_of(anything, st.floats(0, 10)),
                                           "tokens": st.one_of(anything, st.integers(0, 10**6))})
pytestmark = pytest.mark.filterwarnings("ignore:ember. no price known")
examples = settings(max_examples=120, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def outcome(srv: OpenAIServer, attempt: Any) -> None:
    """Run `attempt()`; a refusal must be documented and must have sent nothing."""
    before = len(srv.requests)
    try:
        attempt()
    except (ConfigError, BudgetExceeded):
        assert len(srv.requests) == before
    except TypeError as error:  # Python's own kind, for a model or prompt of the wrong type
        assert str(error).startswith(("model must be", "prompt must be"))
        assert len(srv.requests) == before
    except (ProviderError, PartialFailure):  # accepted: sent, and the server or the clock said no
        pass


@examples
@given(model=models_, prompt=prompts, own=own_settings, how=st.sampled_from(["call", "stream",
                                                                            "instance"]))
def test_models_with_random_settings(openai_srv: OpenAIServer, model: Any, prompt: Any,
                                     own: dict[str, Any], how: str):
    if own.get("base_url") == LOOPBACK:
        own["base_url"] = openai_srv.base_url

    def attempt() -> None:
        if how == "call":
            assert isinstance(models(model, prompt, **own).text, str)
        elif how == "stream":
            assert isinstance("".join(models.stream(model, prompt, **own)), str)
        else:
            assert isinstance(models.instance(model, **own)(prompt).text, str)

    outcome(openai_srv, attempt)


@examples
@given(cap=caps, max_tokens=st.one_of(anything, st.integers(1, 10**9)))
def test_a_budget_with_random_caps(openai_srv: OpenAIServer, cap: dict[str, Any],
                                   max_tokens: Any):
    def attempt() -> None:
        with budget(**cap):
            models(GPT, "Hi", max_tokens=max_tokens)

    outcome(openai_srv, attempt)


@examples
@given(concurrency=st.one_of(anything, st.integers(1, 4)),
       errors=st.one_of(anything, st.sampled_from(["raise", "return"])))
def test_parallel_and_gather_with_random_settings(openai_srv: OpenAIServer, concurrency: Any,
                                                  errors: Any):
    def ask(text: str) -> str:
        return models(GPT, text).text

    async def both() -> None:
        calls = [models.acall(GPT, text) for text in "ab"]
        try:
            await gather(*calls, concurrency=concurrency, errors=errors)
        finally:
            for call in calls:  # a refused gather never awaited them
                call.close()

    outcome(openai_srv, lambda: parallel(ask, ["a", "b"], concurrency=concurrency,
                                         errors=errors, progress=False))
    outcome(openai_srv, lambda: asyncio.run(both()))
