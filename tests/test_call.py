"""The call itself: sync and async twins, bound instances, model strings, the errors a
person reads, the Response, and what `import ember` costs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import sys
import warnings

import pytest
from fakes import OpenAIServer

import ember
from ember import Model, Response, Usage, _http, models
from ember._call import request
from ember.errors import ConfigError, EmberError, MissingKey, UnknownModel


def test_exported_names_are_pinned():
    assert sorted(ember.__all__) == [
        "Budget", "MemoryStore", "Model", "RedisStore", "Response", "SQLiteStore", "Stream",
        "Tracker", "Usage", "abatch", "aparallel", "batch", "budget", "cache", "errors", "gather",
        "limit", "models", "parallel", "retry", "track", "usage", "vote"]
    assert sorted(ember.errors.__all__) == [
        "BudgetExceeded", "ConfigError", "EmberError", "InvalidOutput", "MissingKey",
        "PartialFailure", "ProviderError", "ProviderTimeout", "RateLimited", "Refused",
        "UnknownModel", "UnknownPrice"]


async def test_sync_and_async_give_the_same_response(openai_srv: OpenAIServer):
    sync = await asyncio.to_thread(models, "gpt-4o-mini", "Hi", temperature=0)
    async_ = await models.acall("gpt-4o-mini", "Hi", temperature=0)
    assert (sync.text, sync.usage, sync.cost) == (async_.text, async_.usage, async_.cost)
    assert openai_srv.requests[0].json == openai_srv.requests[1].json


async def test_a_sync_call_works_inside_a_running_event_loop(openai_srv: OpenAIServer):
    asyncio.get_running_loop()  # as in Jupyter or an async web handler
    assert models("gpt-4o-mini", "Hi").text == "Hello from fake"


def test_sync_calls_from_many_threads_share_one_background_loop(openai_srv: OpenAIServer):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda i: models("gpt-4o-mini", f"Hi {i}").text, range(32)))
    assert texts == ["Hello from fake"] * 32 and len(openai_srv.requests) == 32
    live = [loop for loop in _http._sessions if not loop.is_closed()]
    assert len([loop for loop in live if loop.is_running()]) == 1  # one pool for every sync call


def test_instance_binds_settings_and_a_call_can_override_them(openai_srv: OpenAIServer):
    gpt = models.instance("gpt-4o-mini", temperature=0, system="Be terse", api_key="sk-bound-1")
    assert isinstance(gpt, Model) and gpt("Hi").text == "Hello from fake"
    first = openai_srv.requests[0]
    assert first.json["temperature"] == 0 and first.json["messages"][0]["content"] == "Be terse"
    assert first.headers["authorization"] == "Bearer sk-bound-1"
    gpt("Hi", temperature=0.7)
    assert openai_srv.requests[1].json["temperature"] == 0.7
    assert "sk-bound-1" not in repr(gpt) and "temperature=0" in repr(gpt)


async def test_instance_async_twin(openai_srv: OpenAIServer):
    gpt = models.instance("gpt-4o-mini", max_tokens=5)
    r = await gpt.acall("Hi")
    assert r.text == "Hello from fake" and openai_srv.requests[0].json["max_completion_tokens"] == 5


@pytest.mark.parametrize("model, variable", [
    ("gpt-4o-mini", "OPENAI_API_KEY"), ("claude-sonnet-4-5", "ANTHROPIC_API_KEY"),
    ("gemini-2.5-flash", "GEMINI_API_KEY or GOOGLE_API_KEY")])
def test_a_missing_key_names_the_variable_and_the_parameter(model: str, variable: str):
    with pytest.raises(MissingKey) as caught:
        models(model, "Hi")
    assert variable in str(caught.value) and "api_key=" in str(caught.value)
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, EmberError)


@pytest.mark.parametrize("typed, first", [
    ("gtp-4o-mini", "openai/gpt-4o-mini"), ("gpt4o", "openai/gpt-4o"),
    ("claud-sonnet-4-5", "anthropic/claude-sonnet-4-5"), ("smollm", "local/smollm2")])
def test_an_unknown_bare_model_suggests_canonical_names_closest_first(typed: str, first: str):
    with pytest.raises(UnknownModel) as caught:
        models(typed, "Hi")
    suggested = caught.value.suggestions
    assert suggested[0] == first and len(suggested) == len(set(suggested)) <= 3
    assert not [name for name in suggested if ":" in name]  # no fine-tune price keys
    assert not [name for name in suggested if name.startswith("google/claude")]  # home first
    assert f"'{typed}'" in str(caught.value) and f"Did you mean: {first}" in str(caught.value)


def test_an_unknown_provider_suggests_the_known_ones():
    with pytest.raises(UnknownModel) as caught:
        models("antropic/claude-sonnet-4-5", "Hi")
    assert caught.value.suggestions == ["anthropic"]


def test_bare_names_are_routed_by_their_family():
    for name, provider in [("gpt-4o", "openai"), ("o3-mini", "openai"), ("o1", "openai"),
                           ("chatgpt-4o-latest", "openai"), ("claude-opus-4-1", "anthropic"),
                           ("gemini-2.5-pro", "google")]:
        assert request(name, "Hi", api_key="k").provider == provider


def test_a_prompt_or_model_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="prompt must be a str or a list"):
        models("gpt-4o-mini", 42, api_key="k")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model must be a string such as 'openai/gpt-4o-mini'"):
        models(None, "Hi")  # type: ignore[arg-type]


def test_the_key_never_shows_in_a_request_repr():
    req = request("gpt-4o-mini", "Hi", api_key="sk-very-secret")
    assert "sk-very-secret" not in repr(req) and req.api_key == "sk-very-secret"


def test_response_reads_well():
    r = Response("Hello there", "gpt-4o-mini", "openai", Usage(10, 2), 2.7e-06, 0.25)
    assert str(r) == "Hello there"
    assert repr(r) == ("Response('Hello there', model='openai/gpt-4o-mini', tokens=10+2, "
                       "cost=$0.000003, latency=0.250s)")


def test_an_unknown_price_is_none_with_one_warning_per_model(openai_srv: OpenAIServer):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = models("openai/house-model-1", "Hi")
        second = models("openai/house-model-1", "Hi")
        assert first.cost is None and second.cost is None  # never a silent 0
    assert len([w for w in caught if "house-model-1" in str(w.message)]) == 1


def test_import_ember_loads_no_http_client_pricing_or_model_runtime():
    code = ("import sys, ember; heavy = {'aiohttp', 'genai_prices', 'xllamacpp', 'pydantic', "
            "'httpx', 'openai', 'redis'}; print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_first_calls_latency_is_its_own_time_not_the_imports(openai_srv: OpenAIServer):
    code = ("import time, ember; start = time.perf_counter(); "
            "r = ember.models('gpt-4o-mini', 'Hi'); "
            "print(r.latency, time.perf_counter() - start)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ))
    latency, wall = map(float, out.stdout.split())
    assert wall > 0.2  # the first call imported aiohttp and the price data (~0.4-0.6 s here)...
    assert latency < wall / 4  # ...and its latency is the round trip to a server on loopback
