"""Structured output: `schema=` on each provider's fake server (its own wire shape, checked
against the documented rules by the fakes), the kinds of schema, retries of an answer that
does not fit, the cache, and the embedded model under a llama.cpp grammar."""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path
from typing import Literal

import pytest
from fakes import AnthropicServer, GeminiServer, OpenAIServer
from pydantic import BaseModel
from typing_extensions import TypedDict

from ember import SQLiteStore, budget, models, parallel, track
from ember.errors import BudgetExceeded, ConfigError, InvalidOutput, ProviderError
from ember.providers import local

Label = Literal["positive", "negative"]


class Country(BaseModel):
    code: str


class City(BaseModel):
    name: str
    population: int = 0  # a default: strict mode sends it required, without the default
    country: Country | None = None


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Movie(TypedDict):
    title: str
    year: int


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


PARIS = '{"name": "Paris", "population": 2100000, "country": {"code": "FR"}}'
CLOSED_CITY = {  # what every provider is sent for City: closed, all required, no defaults
    "type": "object", "title": "City", "additionalProperties": False,
    "required": ["name", "population", "country"],
    "properties": {"name": {"type": "string", "title": "Name"},
                   "population": {"type": "integer", "title": "Population"},
                   "country": {"anyOf": [{"$ref": "#/$defs/Country"}, {"type": "null"}]}},
    "$defs": {"Country": {"type": "object", "title": "Country", "additionalProperties": False,
                          "required": ["code"],
                          "properties": {"code": {"type": "string", "title": "Code"}}}}}


def test_openai_gets_a_strict_json_schema_response_format_and_the_answer_parses(
        openai_srv: OpenAIServer):
    openai_srv.reply_text, openai_srv.usage = PARIS, (1000, 500)
    r = models("gpt-4o-mini", "The capital of France?", schema=City)
    assert r.parsed == City(name="Paris", population=2100000, country=Country(code="FR"))
    assert r.text == PARIS  # the raw JSON stays
    assert (r.usage.input_tokens, r.usage.output_tokens) == (1000, 500)
    assert r.cost == pytest.approx(0.00045)  # gpt-4o-mini: $0.15 in, $0.60 out per Mtok
    (sent,) = openai_srv.requests
    shape = sent.json["response_format"]
    assert shape["type"] == "json_schema"
    assert shape["json_schema"]["name"] == "output" and shape["json_schema"]["strict"] is True
    assert shape["json_schema"]["schema"] == CLOSED_CITY


def test_anthropic_gets_output_config_format_without_a_beta_header(
        anthropic_srv: AnthropicServer):
    anthropic_srv.reply_text, anthropic_srv.usage = PARIS, (1000, 500)
    r = models("claude-sonnet-4-5", "The capital of France?", schema=City,
               output_config={"effort": "low"})
    assert r.parsed.country.code == "FR" and r.text == PARIS
    assert r.cost == pytest.approx(0.0105)  # $3 in, $15 out per Mtok
    (sent,) = anthropic_srv.requests
    assert sent.json["output_config"] == {  # the caller's own settings are kept
        "effort": "low", "format": {"type": "json_schema", "schema": CLOSED_CITY}}
    assert "output_format" not in sent.json and "anthropic-beta" not in sent.headers


def test_gemini_gets_response_json_schema_with_the_json_mime_type(gemini_srv: GeminiServer):
    gemini_srv.reply_text, gemini_srv.usage = PARIS, (1000, 500)
    r = models("gemini-2.5-flash", "The capital of France?", schema=City, temperature=0)
    assert r.parsed.name == "Paris"
    assert r.cost == pytest.approx(0.00155)  # $0.30 in, $2.50 out per Mtok
    (sent,) = gemini_srv.requests
    assert sent.json["generationConfig"] == {
        "temperature": 0, "responseMimeType": "application/json", "responseJsonSchema": CLOSED_CITY}


@pytest.mark.parametrize(("schema", "answer", "value"), [
    (City, PARIS, City(name="Paris", population=2100000, country=Country(code="FR"))),
    (Point, '{"x": 1, "y": 2}', Point(1, 2)),
    (Movie, '{"title": "Alien", "year": 1979}', {"title": "Alien", "year": 1979}),
    (Label, '"negative"', "negative"),
    (Colour, '"blue"', Colour.BLUE),
    (list[Point], '[{"x": 1, "y": 2}]', [Point(1, 2)]),
    ({"type": "object", "properties": {"city": {"type": "string"}}}, '{"city": "Oslo"}',
     {"city": "Oslo"}),
])
def test_each_kind_of_schema_parses_on_each_provider(
        openai_srv: OpenAIServer, anthropic_srv: AnthropicServer, gemini_srv: GeminiServer,
        schema: object, answer: str, value: object):
    boxed = not answer.startswith("{")  # OpenAI and Anthropic take an object root only
    for srv, model in [(openai_srv, "gpt-4o-mini"), (anthropic_srv, "claude-haiku-4-5"),
                       (gemini_srv, "gemini-2.5-flash")]:
        wire = f'{{"value": {answer}}}' if boxed and srv is not gemini_srv else answer
        srv.reply_text = wire
        r = models(model, "Go", schema=schema)
        assert r.parsed == value and r.text == wire


def test_a_label_schema_is_boxed_under_value_where_the_root_must_be_an_object(
        openai_srv: OpenAIServer, gemini_srv: GeminiServer):
    openai_srv.reply_text, gemini_srv.reply_text = '{"value": [{"x": 1, "y": 2}]}', '"red"'
    models("gpt-4o-mini", "Go", schema=list[Point])
    sent = openai_srv.requests[0].json["response_format"]["json_schema"]
    assert sent["schema"]["type"] == "object"
    assert sent["schema"]["required"] == ["value"]
    assert sent["schema"]["properties"]["value"]["items"] == {"$ref": "#/$defs/Point"}
    assert "Point" in sent["schema"]["$defs"]  # references still resolve from the root
    assert models("gemini-2.5-flash", "Go", schema=Colour).parsed is Colour.RED
    assert gemini_srv.requests[0].json["generationConfig"]["responseJsonSchema"] == {
        "enum": ["red", "blue"], "title": "Colour", "type": "string"}  # any root: as it is


def test_an_answer_that_does_not_fit_is_asked_again_then_raises(openai_srv: OpenAIServer):
    openai_srv.replies("Sure! Paris.", '{"population": 5}', '{"name": 3, "population": 1}')
    with track() as t, pytest.raises(InvalidOutput) as caught:
        models("gpt-4o-mini", "Go", schema=City, retries=2)
    assert len(openai_srv.requests) == 3  # the first try and two retries
    error = caught.value
    assert isinstance(error, ProviderError) and error.provider == "openai"
    assert error.text == '{"name": 3, "population": 1}'  # the last answer, as written
    assert "name" in error.message and "string" in error.message  # pydantic's own words
    assert t.calls == 3 and t.errors == 3  # each answer was billed: all are counted
    assert t.input_tokens == 3 * 12 and t.cost > 0


def test_an_answer_that_fits_after_a_bad_one_is_returned(openai_srv: OpenAIServer):
    openai_srv.replies("not json", PARIS)
    with track() as t:
        r = models("gpt-4o-mini", "Go", schema=City)
    assert r.parsed.name == "Paris" and len(openai_srv.requests) == 2
    assert (t.calls, t.errors, t.output_tokens) == (2, 1, 2 * 5)


def test_retries_zero_means_one_answer(anthropic_srv: AnthropicServer):
    anthropic_srv.reply_text = '{"value": "maybe"}'
    with pytest.raises(InvalidOutput, match="does not fit the schema"):
        models("claude-haiku-4-5", "Go", schema=Label, retries=0)
    assert len(anthropic_srv.requests) == 1


def test_only_a_valid_answer_is_cached(openai_srv: OpenAIServer, tmp_path: Path):
    store = SQLiteStore(tmp_path / "cache.sqlite")
    openai_srv.replies("bad", "bad", PARIS)
    with pytest.raises(InvalidOutput):
        models("gpt-4o-mini", "Go", schema=City, cache=store, retries=1)
    first = models("gpt-4o-mini", "Go", schema=City, cache=store)  # not a cached failure
    again = models("gpt-4o-mini", "Go", schema=City, cache=store)
    assert len(openai_srv.requests) == 3 and not first.cached and again.cached
    assert again.parsed == first.parsed == City.model_validate_json(PARIS)
    assert store.stats()["entries"] == 1


def test_a_stream_with_a_schema_is_refused_before_sending(openai_srv: OpenAIServer):
    with pytest.raises(ConfigError, match="schema="):
        models.stream("gpt-4o-mini", "Go", schema=City)
    assert openai_srv.requests == []


def test_a_schema_pydantic_cannot_read_is_a_config_error(openai_srv: OpenAIServer):
    with pytest.raises(ConfigError, match="schema= takes a pydantic model"):
        models("gpt-4o-mini", "Go", schema=object())
    assert openai_srv.requests == []


async def test_instance_acall_and_parallel_carry_the_schema(gemini_srv: GeminiServer):
    gemini_srv.reply_text = '"positive"'
    labeller = models.instance("gemini-2.5-flash", schema=Label, temperature=0)
    assert (await labeller.acall("Great!")).parsed == "positive"
    assert parallel(lambda text: labeller(text).parsed, ["a", "b", "c"]) == ["positive"] * 3
    assert all("responseJsonSchema" in r.json["generationConfig"] for r in gemini_srv.requests)


def test_a_budget_bounds_the_schema_the_model_reads_too(openai_srv: OpenAIServer):
    big = {"type": "object", "properties": {f"field_{n}": {"type": "string"} for n in range(50)}}
    with budget(tokens=600):
        models("gpt-4o-mini", "Go", max_tokens=10)  # admitted without a schema
        with pytest.raises(BudgetExceeded):
            models("gpt-4o-mini", "Go", max_tokens=10, schema=big)
    assert len(openai_srv.requests) == 1


def test_the_embedded_model_can_only_answer_with_a_label():
    prompt = "Review: The soup was cold and the waiter rude.\nSentiment:"
    r = models("local/smollm2", prompt, raw=True, schema=Label, max_tokens=8, temperature=0)
    assert r.parsed in ("positive", "negative") and json.loads(r.text) == r.parsed
    assert r.cost == 0.0 and r.usage.output_tokens > 0


def test_the_embedded_model_writes_schema_valid_json_for_an_object():
    r = models("local/smollm2", "Give a point with x=1 and y=2 as JSON.", schema=Point,
               max_tokens=40, temperature=0)
    assert isinstance(r.parsed, Point) and r.parsed == Point(**json.loads(r.text))


def test_the_embedded_model_gets_the_grammar_as_json_schema():
    from ember._call import request

    _, _, body = local.encode(request("local/smollm2", "Hi", raw=True, schema=Label))
    assert body["json_schema"] == {"enum": ["positive", "negative"], "type": "string"}
    assert "response_format" not in body and "prompt" in body  # completions take it too
