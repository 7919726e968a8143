"""Shared fixtures: fake provider servers on 127.0.0.1, and an environment that points
ember at them. No test reaches beyond loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
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


class RedisServer:
    """A real redis-server of the test's own on a free port of 127.0.0.1, keeping nothing on
    disk; `password` makes it ask for one (the URL then carries it)."""

    def __init__(self, password: str | None = None) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.password = password
        self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed: apt-get install redis-server")
        secret = ["--requirepass", self.password] if self.password else []
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", *secret], stdout=subprocess.DEVNULL)
        import redis

        client, deadline = redis.Redis.from_url(self.url), time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)  # the server is starting: wait for it to answer a PING
            finally:
                client.close()

    def stop(self) -> None:
        """Kill it at once (as a machine that dies would go): what it held is gone."""
        self.process.kill()
        self.process.wait(10)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the suite's redis-server, emptied for this test."""
    import redis

    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, with a password, to stop and start again."""
    server = RedisServer(password="s3cret-redis-pw")
    yield server
    server.stop()
