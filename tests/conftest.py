"""Shared fixtures: fake provider servers on 127.0.0.1, and an environment that points
ember at them. No test reaches beyond loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import AnthropicServer, FakeProvider, GeminiServer, OpenAIServer

from ember import _http, _pace

KEYS = {"OPENAI_API_KEY": "sk-test-openai-secret", "ANTHROPIC_API_KEY": "sk-ant-test-secret",
        "GEMINI_API_KEY": "gm-test-secret"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No real keys or base URLs leak in from the machine; ember's home (usage log, cache)
    is a fresh folder per test; retries wait briefly; no limit is configured or learned
    (a fake server's port may be one an earlier test's server had)."""
    _pace._configured.clear()
    _pace._learned.clear()
    for name in [*KEYS, "GOOGLE_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL",
                 "GOOGLE_BASE_URL", "OLLAMA_BASE_URL", "EMBER_LOG", "EMBER_LOG_PROMPTS"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EMBER_HOME", str(tmp_path / "ember-home"))
    monkeypatch.setattr(_http, "BACKOFF", 0.01)


def serve(server: FakeProvider, monkeypatch: pytest.MonkeyPatch, url_variable: str,
          key_variable: str) -> Iterator[Any]:
    """Run a fake provider and point ember at it, with a key in the environment."""
    with server:
        monkeypatch.setenv(url_variable, server.base_url)
        monkeypatch.setenv(key_variable, KEYS[key_variable])
        yield server


@pytest.fixture
def openai_srv(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIServer]:
    yield from serve(OpenAIServer(), monkeypatch, "OPENAI_BASE_URL", "OPENAI_API_KEY")


@pytest.fixture
def anthropic_srv(monkeypatch: pytest.MonkeyPatch) -> Iterator[AnthropicServer]:
    yield from serve(AnthropicServer(), monkeypatch, "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY")


@pytest.fixture
def gemini_srv(monkeypatch: pytest.MonkeyPatch) -> Iterator[GeminiServer]:
    yield from serve(GeminiServer(), monkeypatch, "GOOGLE_BASE_URL", "GEMINI_API_KEY")
