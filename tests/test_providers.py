"""Each provider against a local server that speaks its real wire format: what ember
sends (path, headers, body) and what it makes of the answers, streams and error bodies."""

from __future__ import annotations

import socket

import pytest
from conftest import KEYS
from fakes import AnthropicServer, GeminiServer, OpenAIServer

from ember import models
from ember.errors import ProviderError, RateLimited

MESSAGES = [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Name a colour."},
]


def test_openai_call_sends_chat_completions_and_reads_text_usage_cost(openai_srv: OpenAIServer):
    openai_srv.reply_text, openai_srv.usage = "Blue.", (1000, 500)
    r = models("gpt-4o-mini", MESSAGES, temperature=0, max_tokens=20, stop=["\n"], seed=7)
    assert (r.text, r.provider, r.model) == ("Blue.", "openai", "gpt-4o-mini")
    assert (r.usage.input_tokens, r.usage.output_tokens) == (1000, 500)
    assert r.cost == pytest.approx(0.00045)  # gpt-4o-mini: $0.15 in, $0.60 out per Mtok
    assert r.latency > 0 and r.raw["object"] == "chat.completion" and not r.cached
    (sent,) = openai_srv.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEYS['OPENAI_API_KEY']}"
    assert sent.json["messages"] == MESSAGES  # the system message first, as OpenAI takes it
    assert sent.json["temperature"] == 0 and sent.json["max_completion_tokens"] == 20
    assert sent.json["stop"] == ["\n"] and sent.json["seed"] == 7  # passed through as given


def test_system_parameter_goes_first_for_openai(openai_srv: OpenAIServer):
    models("openai/gpt-4o", "Hi", system="Answer in French.")
    assert openai_srv.requests[0].json["messages"] == [
        {"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"}]


def test_anthropic_call_uses_messages_api_headers_and_top_level_system(
        anthropic_srv: AnthropicServer):
    anthropic_srv.reply_text, anthropic_srv.usage = "Red.", (1000, 500)
    r = models("claude-sonnet-4-5", MESSAGES, temperature=0.2, stop="\n")
    assert (r.text, r.provider, r.usage.input_tokens, r.usage.output_tokens) == (
        "Red.", "anthropic", 1000, 500)
    assert r.cost == pytest.approx(0.0105)  # $3 in, $15 out per Mtok
    (sent,) = anthropic_srv.requests
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == KEYS["ANTHROPIC_API_KEY"]
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.json["system"] == "Be terse."
    assert [m["role"] for m in sent.json["messages"]] == ["user", "assistant", "user"]
    assert sent.json["max_tokens"] > 0  # required by the API: ember gives a default
    assert sent.json["stop_sequences"] == ["\n"] and sent.json["temperature"] == 0.2


def test_anthropic_max_tokens_given_wins(anthropic_srv: AnthropicServer):
    models("anthropic/claude-haiku-4-5", "Hi", max_tokens=7)
    assert anthropic_srv.requests[0].json["max_tokens"] == 7


def test_gemini_call_uses_contents_parts_system_instruction_and_generation_config(
        gemini_srv: GeminiServer):
    gemini_srv.reply_text, gemini_srv.usage = "Green.", (1000, 500)
    r = models("gemini-2.5-flash", MESSAGES, temperature=0, max_tokens=30, stop="\n")
    assert (r.text, r.provider, r.usage.input_tokens, r.usage.output_tokens) == (
        "Green.", "google", 1000, 500)
    assert r.cost == pytest.approx(0.00155)  # $0.30 in, $2.50 out per Mtok
    (sent,) = gemini_srv.requests
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent.headers["x-goog-api-key"] == KEYS["GEMINI_API_KEY"]
    assert sent.json["systemInstruction"] == {"parts": [{"text": "Be terse."}]}
    assert sent.json["contents"] == [
        {"role": "user", "parts": [{"text": "Hi"}]},
        {"role": "model", "parts": [{"text": "Hello."}]},
        {"role": "user", "parts": [{"text": "Name a colour."}]},
    ]
    assert sent.json["generationConfig"] == {
        "temperature": 0, "maxOutputTokens": 30, "stopSequences": ["\n"]}


def test_google_api_key_is_read_when_gemini_key_is_absent(
        gemini_srv: GeminiServer, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.setenv("GOOGLE_API_KEY", "google-key")
    models("gemini-2.5-flash", "Hi")
    assert gemini_srv.requests[0].headers["x-goog-api-key"] == "google-key"


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-flash"])
def test_stream_yields_the_text_in_pieces_and_usage_at_the_end(
        model: str, openai_srv: OpenAIServer, anthropic_srv: AnthropicServer,
        gemini_srv: GeminiServer):
    for server in (openai_srv, anthropic_srv, gemini_srv):
        server.reply_text, server.usage = "One two three four five", (40, 9)
    stream = models.stream(model, "Count to five")
    assert stream.response is None
    chunks = list(stream)
    assert len(chunks) > 1 and "".join(chunks) == "One two three four five"
    assert stream.response is not None and stream.response.text == "".join(chunks)
    usage = stream.response.usage
    assert (usage.input_tokens, usage.output_tokens) == (40, 9)
    assert stream.response.cost is not None and stream.response.cost > 0


async def test_astream_is_the_async_twin(anthropic_srv: AnthropicServer):
    anthropic_srv.reply_text = "alpha beta gamma"
    stream = models.astream("claude-sonnet-4-5", "Go")
    chunks = [chunk async for chunk in stream]
    assert "".join(chunks) == "alpha beta gamma" and len(chunks) > 1
    assert stream.response is not None and stream.response.usage.output_tokens == 5
    assert anthropic_srv.requests[0].json["stream"] is True


def test_openai_stream_asks_for_usage(openai_srv: OpenAIServer):
    list(models.stream("gpt-4o-mini", "Hi"))
    body = openai_srv.requests[0].json
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_gemini_stream_uses_sse_endpoint(gemini_srv: GeminiServer):
    list(models.stream("gemini-2.5-flash", "Hi"))
    sent = gemini_srv.requests[0]
    assert sent.path.endswith(":streamGenerateContent") and sent.query == {"alt": "sse"}


@pytest.mark.parametrize("fixture, model, words", [
    ("openai_srv", "gpt-4o-mini", "does not exist"),
    ("anthropic_srv", "claude-sonnet-4-5", "not_found_error"),
    ("gemini_srv", "gemini-2.5-flash", ""),
])
def test_provider_error_carries_provider_status_and_the_providers_own_message(
        fixture: str, model: str, words: str, request: pytest.FixtureRequest):
    server = request.getfixturevalue(fixture)
    server.fail(404)
    with pytest.raises(ProviderError) as caught:
        models(model, "Hi")
    error = caught.value
    assert error.status == 404 and error.provider in ("openai", "anthropic", "google")
    assert str(error).startswith(f"{error.provider} returned HTTP 404: ")
    assert error.message and "{" not in error.message  # the provider's words, not raw JSON
    assert len(server.requests) == 1  # a 404 is not retried


@pytest.mark.parametrize("fixture, model", [
    ("openai_srv", "gpt-4o-mini"), ("anthropic_srv", "claude-sonnet-4-5"),
    ("gemini_srv", "gemini-2.5-flash"),
])
def test_an_error_event_inside_a_stream_is_raised(
        fixture: str, model: str, request: pytest.FixtureRequest):
    server = request.getfixturevalue(fixture)
    server.fail("stream-error")
    stream = models.stream(model, "Hi")
    with pytest.raises(ProviderError):
        list(stream)


def test_anthropic_overloaded_after_retries_is_rate_limited(anthropic_srv: AnthropicServer):
    anthropic_srv.fail(529, 529, 529, 529)
    with pytest.raises(RateLimited) as caught:
        models("claude-sonnet-4-5", "Hi", retries=3)
    assert caught.value.status == 529 and "Overloaded" in caught.value.message
    assert len(anthropic_srv.requests) == 4


def test_wrong_key_is_reported_without_the_key(openai_srv: OpenAIServer):
    openai_srv.api_key = "the-right-key"
    with pytest.raises(ProviderError) as caught:
        models("gpt-4o-mini", "Hi", api_key="sk-wrong-secret-123")
    assert caught.value.status == 401
    assert "sk-wrong-secret-123" not in str(caught.value)
    assert "sk-wrong-secret-123" not in repr(caught.value)


class SelfHostedServer(OpenAIServer):
    """An OpenAI-compatible server run by the user (vLLM, llama.cpp): it takes no key."""

    def _auth(self, request: object) -> None:
        return None


@pytest.mark.filterwarnings("ignore::ember.errors.UnknownPrice")  # its own model: no price
def test_any_openai_compatible_server_by_base_url_needs_no_key():
    with SelfHostedServer() as server:
        r = models("openai/my-own-model", "Hi", base_url=server.base_url)
        assert r.text == "Hello from fake" and r.model == "my-own-model"
        assert "authorization" not in server.requests[0].headers


def test_ollama_goes_to_its_openai_compatible_endpoint(monkeypatch: pytest.MonkeyPatch):
    with SelfHostedServer() as server:
        monkeypatch.setenv("OLLAMA_BASE_URL", server.base_url)
        r = models("ollama/llama3.2", "Hi")
        assert r.provider == "ollama" and r.cost == 0.0  # runs on the user's machine
        assert server.requests[0].json["model"] == "llama3.2"


def test_an_unreachable_ollama_says_to_start_it_or_set_its_url(monkeypatch: pytest.MonkeyPatch):
    with socket.socket() as closed:  # a port on which nothing listens
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("OLLAMA_BASE_URL", f"http://127.0.0.1:{port}/v1")
    with pytest.raises(ProviderError) as caught:
        models("ollama/llama3.2", "Hi", retries=0)
    assert "is Ollama running? set OLLAMA_BASE_URL" in str(caught.value)
