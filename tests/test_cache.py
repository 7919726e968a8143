"""Explicit caching: `models(..., cache=...)` and `@cache`, counted at the fake servers; identical
calls in flight shared across tasks, threads and event loops; the SQLite store shared by
processes, killed mid-write, corrupt or unwritable; hits in track, budgets and the usage log;
`ember cache` and `ember demo` run twice."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import KEYS
from fakes import AnthropicServer, GeminiServer, OpenAIServer

from ember import MemoryStore, SQLiteStore, _cache, _log, budget, cache, cli, models, track, usage
from ember.errors import BudgetExceeded, ConfigError, ProviderError

CLI = "import sys, ember.cli; sys.exit(ember.cli.main())"
MESSAGES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Name a colour."}]


def ember(*args: str, code: int = 0) -> str:
    out = subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == code, out.stderr
    return out.stdout + out.stderr


def home() -> Path:
    return Path(os.environ["EMBER_HOME"])


def ember_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "ember" in str(w.message)]


def ask(**fields: Any) -> Any:
    call = {"model": "gpt-4o-mini", "prompt": "Hi", "cache": True, **fields}
    return models(call.pop("model"), call.pop("prompt"), **call)


class Recording(MemoryStore):
    """A store of one's own (the interface a Redis store will have), keeping what it is given."""

    def __init__(self, ttl: float | None = None) -> None:
        super().__init__(ttl)
        self.written: list[tuple[str, bytes]] = []

    def set(self, key: str, value: bytes, ttl: float | None) -> None:
        self.written.append((key, value))
        super().set(key, value, ttl)


@pytest.fixture
def joined(monkeypatch: pytest.MonkeyPatch) -> threading.Semaphore:
    """Released once for every caller that joins an identical call already under way."""
    released, claim = threading.Semaphore(0), _cache._claim

    def spy(store: Any, key: str) -> Any:
        future, owner = claim(store, key)
        if not owner:
            released.release()
        return future, owner

    monkeypatch.setattr(_cache, "_claim", spy)
    return released


# ---- the key of a model call: the whole request as sent, never its credentials ----------

CHANGES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "model": ({"model": "gpt-4o-mini"}, {"model": "gpt-4o"}),
    "prompt": ({"prompt": "Hi"}, {"prompt": "Hi!"}),
    "messages": ({"prompt": MESSAGES},
                 {"prompt": [MESSAGES[0], {"role": "assistant", "content": "Hey."}, MESSAGES[2]]}),
    "system": ({"system": "Be terse."}, {"system": "Be verbose."}),
    "temperature": ({"temperature": 0}, {"temperature": 0.7}),
    "max_tokens": ({"max_tokens": 10}, {"max_tokens": 11}),
    "stop": ({"stop": ["\n"]}, {"stop": ["."]}),
    "seed (passthrough)": ({"seed": 1}, {"seed": 2}),
    "response_format (nested passthrough)": ({"response_format": {"type": "text"}},
                                             {"response_format": {"type": "json_object"}}),
}


@pytest.mark.parametrize("field", list(CHANGES))
def test_every_request_field_is_part_of_the_key(field: str, openai_srv: OpenAIServer) -> None:
    before, after = CHANGES[field]
    first, again = ask(**before), ask(**before)
    assert len(openai_srv.requests) == 1
    assert (first.cached, again.cached, again.cost, again.text) == (False, True, 0, first.text)
    changed = ask(**after)
    assert len(openai_srv.requests) == 2 and not changed.cached  # a new request went upstream
    assert openai_srv.requests[0].json != openai_srv.requests[1].json
    assert ask(**after).cached and ask(**before).cached and len(openai_srv.requests) == 2


def test_the_base_url_is_part_of_the_key(openai_srv: OpenAIServer) -> None:
    with OpenAIServer(reply_text="from the other server") as other:
        assert not ask().cached
        elsewhere = ask(base_url=other.base_url)
        assert (elsewhere.text, elsewhere.cached, len(other.requests)) == (
            "from the other server", False, 1)
        assert ask(base_url=other.base_url).cached and ask().text == "Hello from fake"
        assert (len(openai_srv.requests), len(other.requests)) == (1, 1)


def test_the_provider_is_part_of_the_key(openai_srv: OpenAIServer) -> None:
    ask(model="openai/gpt-4o-mini")  # same URL and body from another provider: not a hit
    ollama = ask(model="ollama/gpt-4o-mini", base_url=openai_srv.base_url, api_key="any")
    assert not ollama.cached and len(openai_srv.requests) == 2
    assert openai_srv.requests[0].json == openai_srv.requests[1].json


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-flash"])
def test_the_api_key_is_not_part_of_the_key_and_never_stored(
        model: str, openai_srv: OpenAIServer, anthropic_srv: AnthropicServer,
        gemini_srv: GeminiServer) -> None:
    first = ask(model=model, api_key="sk-first-key-0123456789")
    second = ask(model=model, api_key="sk-second-key-9876543210")
    from_env = ask(model=model)
    assert not first.cached and second.cached and from_env.cached
    sent = [len(s.requests) for s in (openai_srv, anthropic_srv, gemini_srv)]
    assert sum(sent) == 1
    stored = b"".join(p.read_bytes() for p in home().glob("cache.sqlite*"))
    assert first.text.encode() in stored  # the answer is there, so the file was read
    for secret in ["sk-first-key-0123456789", "sk-second-key-9876543210", *KEYS.values()]:
        assert secret.encode() not in stored


def test_no_key_material_reaches_any_key_or_value_a_store_is_given(
        openai_srv: OpenAIServer) -> None:
    store, secret = Recording(), "sk-live-do-not-store-0123456789"
    ask(cache=store, api_key=secret), ask(cache=store, prompt="Hi again")
    assert len(store.written) == 2 and all(key.startswith("models:") for key, _ in store.written)
    for key, value in store.written:
        for material in [secret, *KEYS.values()]:
            assert material not in key and material.encode() not in value


def test_a_hit_costs_nothing_and_track_usage_and_the_log_count_what_it_saved(
        openai_srv: OpenAIServer, capsys: pytest.CaptureFixture[str]) -> None:
    openai_srv.usage = (1000, 500)
    before = (usage().calls, usage().cached, usage().saved)
    with track() as t:
        paid, free = ask(), ask()
    assert paid.cost == pytest.approx(0.00045) and free.cost == 0 and free.cached
    assert (free.text, free.usage) == (paid.text, paid.usage) and "cached" in repr(free)
    assert (t.calls, t.cached) == (2, 1)
    assert t.cost == pytest.approx(paid.cost) and t.saved == pytest.approx(paid.cost)
    assert (usage().calls - before[0], usage().cached - before[1]) == (2, 1)
    assert usage().saved - before[2] == pytest.approx(paid.cost)
    _log.flush()
    with sqlite3.connect(home() / "usage.sqlite") as db:
        rows = db.execute("SELECT cached, cost, input_tokens FROM calls ORDER BY time").fetchall()
    assert rows == [(0, pytest.approx(0.00045), 1000), (1, 0.0, 1000)]
    assert cli.main(["usage", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["by_model"]
    assert (row["calls"], row["cached"], row["input_tokens"]) == (2, 1, 1000)  # only what was sent
    assert row["saved"] == pytest.approx(0.00045)


def test_a_hit_is_never_charged_to_a_budget(openai_srv: OpenAIServer) -> None:
    paid = ask()
    with budget(usd=1e-9) as cap:  # far below one call: a call that is sent is refused
        assert ask().cached and ask().cached and cap.spent == 0
        with pytest.raises(BudgetExceeded):
            ask(prompt="not cached", max_tokens=10)
    assert paid.cost and len(openai_srv.requests) == 1


def test_nothing_is_cached_unless_asked(openai_srv: OpenAIServer) -> None:
    models("gpt-4o-mini", "Hi")
    assert not models("gpt-4o-mini", "Hi").cached and len(openai_srv.requests) == 2
    assert not home().joinpath("cache.sqlite").exists()


@pytest.mark.parametrize("bad", [0, -5, "yes", object()])
def test_a_bad_cache_setting_is_refused_before_anything_is_sent(
        bad: Any, openai_srv: OpenAIServer) -> None:
    with pytest.raises(ConfigError, match="cache= takes True, a number of seconds"):
        ask(cache=bad)
    with pytest.raises(ConfigError, match="a stream is never cached"):
        models.stream("gpt-4o-mini", "Hi", cache=True)
    with pytest.raises(ConfigError, match=r"ttl= takes a number of seconds"):
        cache(ttl=bad if bad != 0 else -1)
    assert openai_srv.requests == []


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The stores' wall clock, moved by hand: [now]."""
    now = [time.time()]
    monkeypatch.setattr(_cache, "time", SimpleNamespace(time=lambda: now[0],
                                                        perf_counter=time.perf_counter))
    return now


@pytest.mark.parametrize("make", [lambda: MemoryStore(ttl=60), lambda: SQLiteStore(None, 60),
                                  lambda: 60], ids=["memory", "sqlite", "cache=60"])
def test_an_entry_expires_after_its_ttl(make: Callable[[], Any], openai_srv: OpenAIServer,
                                        clock: list[float]) -> None:
    store = make()
    assert not ask(cache=store).cached
    clock[0] += 59
    assert ask(cache=store).cached and len(openai_srv.requests) == 1
    clock[0] += 2
    assert not ask(cache=store).cached and len(openai_srv.requests) == 2
    assert ask(cache=store).cached and len(openai_srv.requests) == 2


def test_a_function_result_expires_after_its_ttl(clock: list[float]) -> None:
    runs: list[int] = []

    @cache(ttl=30, store=MemoryStore(ttl=1000))  # the decorator's ttl wins over the store's
    def now(x: int) -> int:
        runs.append(x)
        return len(runs)

    assert now(1) == now(1) == 1
    clock[0] += 31
    assert now(1) == 2 and now(1) == 2


# ---- identical calls in flight: one request, across tasks, threads and event loops ----------

async def test_concurrent_identical_calls_share_one_request(openai_srv: OpenAIServer) -> None:
    openai_srv.latency = 0.2
    with track() as t:
        results = await asyncio.gather(
            *[models.acall("gpt-4o-mini", "Hi", cache=MemoryStore()) for _ in range(3)],
            *[models.acall("gpt-4o-mini", "Hi", cache=True) for _ in range(10)])
    assert len(openai_srv.requests) == 4  # one per store: each store has its own entries
    assert {r.text for r in results} == {"Hello from fake"}
    assert sorted(r.cached for r in results[3:]) == [False] + [True] * 9
    assert (t.calls, t.cached) == (13, 9)


def test_sync_calls_from_two_threads_share_one_request(
        openai_srv: OpenAIServer, joined: threading.Semaphore) -> None:
    openai_srv.latency = 0.5
    results: list[Any] = []
    _second_joins_first(openai_srv, joined, lambda: results.append(ask()))
    assert len(openai_srv.requests) == 1
    assert sorted(r.cached for r in results) == [False, True]


def _second_joins_first(srv: OpenAIServer, joined: threading.Semaphore,
                        call: Callable[[], None]) -> None:
    """Run `call` in two threads: the second starts once the first's request is at the
    server, and has joined it (the `joined` fixture) before both are waited for."""
    threads = [threading.Thread(target=call) for _ in range(2)]
    threads[0].start()
    assert srv.wait_for(1)  # the first call is at the server...
    threads[1].start()  # ...when the second one is made
    assert joined.acquire(timeout=5)
    for thread in threads:
        thread.join(10)


def test_calls_from_two_event_loops_share_one_request(
        openai_srv: OpenAIServer, joined: threading.Semaphore) -> None:
    openai_srv.latency = 0.5
    results: list[Any] = []

    def in_a_loop_of_its_own() -> None:
        results.append(asyncio.run(models.acall("gpt-4o-mini", "Hi", cache=True)))

    _second_joins_first(openai_srv, joined, in_a_loop_of_its_own)
    assert len(openai_srv.requests) == 1
    assert sorted(r.cached for r in results) == [False, True]


def test_a_caller_in_another_loop_gets_its_answer_when_the_first_callers_loop_ends(
        openai_srv: OpenAIServer, joined: threading.Semaphore) -> None:
    openai_srv.latency = 0.5

    async def first_caller_gives_up() -> None:  # e.g. a request handler that timed out
        call = asyncio.create_task(models.acall("gpt-4o-mini", "Hi", cache=True))
        assert await asyncio.to_thread(joined.acquire, True, 5)  # the other caller waits on it
        call.cancel()
        # asyncio.run() now cancels the shared call's task as its loop ends

    first = threading.Thread(target=asyncio.run, args=(first_caller_gives_up(),))
    first.start()
    assert openai_srv.wait_for(1)
    other = ask()  # sync: on ember's own loop, not the one that ends
    first.join(10)
    assert (other.text, other.cached) == ("Hello from fake", False)
    assert len(openai_srv.requests) == 2  # it sent the call again itself
    assert ask().cached


async def test_a_shared_error_reaches_every_caller_and_is_not_cached(
        openai_srv: OpenAIServer) -> None:
    openai_srv.latency = 0.2
    openai_srv.fail(400)
    results = await asyncio.gather(
        *[models.acall("gpt-4o-mini", "Hi", cache=True) for _ in range(10)],
        return_exceptions=True)
    assert len(openai_srv.requests) == 1
    assert all(isinstance(r, ProviderError) and r.status == 400 for r in results)
    later = await models.acall("gpt-4o-mini", "Hi", cache=True)
    assert (later.text, later.cached, len(openai_srv.requests)) == ("Hello from fake", False, 2)


async def test_cancelling_one_caller_does_not_cancel_the_others(openai_srv: OpenAIServer) -> None:
    openai_srv.latency = 0.3
    tasks = [asyncio.create_task(models.acall("gpt-4o-mini", "Hi", cache=True))
             for _ in range(3)]
    await asyncio.to_thread(openai_srv.wait_for, 1)
    tasks[0].cancel()  # the caller whose call went upstream: e.g. its wait_for() ran out
    others = await asyncio.gather(*tasks[1:], return_exceptions=True)
    assert [getattr(r, "text", r) for r in others] == ["Hello from fake"] * 2
    assert len(openai_srv.requests) == 1


def test_a_sync_function_called_from_two_threads_runs_once(joined: threading.Semaphore) -> None:
    runs, inside, gate = [], threading.Event(), threading.Event()

    @cache(store=MemoryStore())
    def slow(x: int) -> int:
        runs.append(x)
        inside.set()
        gate.wait(5)
        return x * 2

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(slow(21))) for _ in range(2)]
    threads[0].start()
    assert inside.wait(5)
    threads[1].start()
    assert joined.acquire(timeout=5)  # the second caller waits for the first one's result
    gate.set()
    for thread in threads:
        thread.join(5)
    assert results == [42, 42] and runs == [21]


def test_an_async_function_called_from_two_event_loops_runs_once(
        joined: threading.Semaphore) -> None:
    runs, inside, gate = [], threading.Event(), threading.Event()

    @cache(store=MemoryStore())
    async def fetch(name: str) -> str:
        runs.append(name)
        inside.set()
        await asyncio.to_thread(gate.wait, 5)
        return name.upper()

    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(asyncio.run(fetch("x"))))
               for _ in range(2)]
    threads[0].start()
    assert inside.wait(5)
    threads[1].start()
    assert joined.acquire(timeout=5)
    gate.set()
    for thread in threads:
        thread.join(5)
    assert results == ["X", "X"] and runs == ["x"]


# ---- @cache on functions -------------------------------------------------------------------

def test_cache_on_a_sync_function_runs_it_once_per_distinct_arguments() -> None:
    runs, store = [], MemoryStore()

    @cache(store=store)
    def add(a: int, b: int = 2) -> int:
        """Add."""
        runs.append((a, b))
        return a + b

    @cache(store=store)
    def sub(a: int, b: int = 2) -> int:
        return a - b

    assert [add(1), add(1, 2), add(a=1, b=2), add(1, b=3), add(1, 3), sub(1)] == [3] * 3 + [
        4, 4, -1]  # positional, keyword and default spell one key; another function, its own
    assert runs == [(1, 2), (1, 3)]
    assert (add.__name__, add.__doc__) == ("add", "Add.")
    assert inspect.signature(add) == inspect.signature(add.__wrapped__)  # type: ignore[attr-defined]


async def test_cache_on_an_async_function_of_a_list_keys_the_list_and_keeps_its_signature(
        ) -> None:
    runs: list[list[str]] = []

    @cache(store=MemoryStore())
    async def classify(texts: list[str]) -> list[str]:
        """Label each text."""
        runs.append(texts)
        return ["positive" if "good" in text else "negative" for text in texts]

    assert await classify(["good", "bad"]) == ["positive", "negative"]
    assert await classify(["good", "bad"]) == ["positive", "negative"]
    assert await classify(["bad", "good"]) == ["negative", "positive"]  # order is part of it
    assert await classify(("good", "bad")) == ["positive", "negative"]  # a tuple is not a list
    assert await classify(texts=["good", "bad"]) == ["positive", "negative"]
    assert runs == [["good", "bad"], ["bad", "good"], ("good", "bad")]
    assert inspect.iscoroutinefunction(classify)
    assert (classify.__name__, classify.__doc__) == ("classify", "Label each text.")
    assert str(inspect.signature(classify)) == "(texts: 'list[str]') -> 'list[str]'"
    with pytest.raises(TypeError, match=r"classify\(\) takes 1 positional argument but 2 were "):
        await classify("a", "b")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no coroutine left un-awaited behind the error
        with pytest.raises(TypeError, match=r"classify\(\) got an unexpected keyword argument"):
            await classify(["a"], tone="x")


async def test_cache_on_an_async_function_runs_it_once_even_when_called_concurrently() -> None:
    runs, entered, gate, all_in = [], [], asyncio.Event(), asyncio.Event()

    @cache(store=MemoryStore())
    async def fetch(name: str) -> str:
        runs.append(name)
        await gate.wait()
        return name.upper()

    async def caller() -> str:
        entered.append(1)
        if len(entered) == 5:
            all_in.set()
        return await fetch("x")

    tasks = [asyncio.create_task(caller()) for _ in range(5)]
    await all_in.wait()  # all five are inside fetch() before the first one may finish
    gate.set()
    assert await asyncio.gather(*tasks) == ["X"] * 5 and runs == ["x"]
    assert await fetch("x") == "X" and await fetch("y") == "Y" and runs == ["x", "y"]


async def test_a_bad_argument_or_a_wrong_call_is_a_clear_type_error() -> None:
    runs: list[object] = []

    @cache(store=MemoryStore())
    def pair(a: object, b: int) -> tuple[object, int]:
        runs.append(a)
        return a, b

    @cache(store=MemoryStore())
    async def apair(a: int, b: int) -> tuple[int, int]:
        return a, b

    with pytest.raises(TypeError, match=r"@cache on .*pair\(\): an argument cannot be pickled"):
        pair(threading.Lock(), 1)
    with pytest.raises(TypeError, match=r"pair\(\) missing 1 required positional argument: 'b'"):
        pair(1)
    with pytest.raises(TypeError, match=r"pair\(\) takes 2 positional arguments but 3"):
        pair(1, 2, 3)
    with pytest.raises(TypeError, match=r"apair\(\) got an unexpected keyword argument 'c'"):
        await apair(1, 2, c=3)
    assert runs == []


@pytest.mark.parametrize(("first", "second"), [({1: "a"}, {"1": "a"}), ((1, 2), [1, 2]),
                                               (1, True), (1, 1.0)],
                         ids=["int-vs-str-dict-keys", "tuple-vs-list", "int-vs-bool",
                              "int-vs-float"])
def test_unequal_arguments_never_share_a_result(first: Any, second: Any) -> None:
    kind = cache(store=MemoryStore())(repr)
    assert (kind(first), kind(second)) == (repr(first), repr(second))


def test_a_value_that_cannot_be_stored_warns_once_and_is_still_returned(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cache, "_warned", set())
    runs: list[int] = []

    @cache(store=MemoryStore())
    def handle(x: int) -> Any:
        runs.append(x)
        return threading.Lock()  # cannot be pickled

    with pytest.warns(UserWarning, match="ember: cache .* failed .*pickle"):
        assert handle(1) is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert handle(1) is not None and runs == [1, 1]


# ---- the SQLite store: processes, kill -9, corruption, permissions --------------------------

CHILD = """from ember import cache, models
@cache()
def square(x):
    print("computed", end=" ")
    return x * x
print(square(4), models("gpt-4o-mini", "Hi", cache=True).cached)
"""


def test_the_default_store_is_shared_by_processes(openai_srv: OpenAIServer) -> None:
    runs = [subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                           timeout=60) for _ in range(2)]
    assert [(r.returncode, r.stdout) for r in runs] == [(0, "computed 16 False\n"),
                                                        (0, "16 True\n")], runs[0].stderr
    assert ask().cached and len(openai_srv.requests) == 1


WRITER = """import sys, time
from ember import SQLiteStore
store, name = SQLiteStore(sys.argv[1]), sys.argv[2]
print("ready", flush=True)
sys.stdin.readline()
start = time.time()
for i in range(1000):
    store.set(f"{name}-{i}", f"{name}-{i}".encode() * 20, None)
print(start, time.time())
"""


def test_two_processes_write_one_store_at_once_without_failing(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    SQLiteStore(path).set("seed", b"seed", None)  # created; its creation is the next test
    procs = [subprocess.Popen([sys.executable, "-W", "error", "-c", WRITER, str(path), name],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    assert [p.stdout.readline() for p in procs if p.stdout] == ["ready\n"] * 2
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    spans = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err  # -W error: a "database is locked" warning fails it
        spans.append([float(t) for t in out.split()])
    assert max(s for s, _ in spans) < min(e for _, e in spans)  # the writes overlapped
    reader = SQLiteStore(path)
    for key in [f"{name}-{i}" for name in ("a", "b") for i in range(1000)]:
        assert reader.get(key) == key.encode() * 20
    assert reader.stats()["entries"] == 2001


def test_a_store_another_process_is_creating_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    path.touch()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process half-way through creating the store
    threading.Timer(0.3, other.close).start()  # ...for far less than the 5 s busy timeout
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SQLiteStore(path).set("k", b"v", None)
    assert SQLiteStore(path).get("k") == b"v"


KILLED = """import sys
from ember import SQLiteStore
store, i = SQLiteStore(sys.argv[1]), 0
while True:
    store.set(f"key-{i}", f"value-{i}".encode() * 100, None)
    print(f"key-{i}", flush=True)
    i += 1
"""


def test_a_writer_killed_mid_write_leaves_every_acknowledged_entry(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(path)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    written = [proc.stdout.readline().strip() for _ in range(50)]
    proc.send_signal(signal.SIGKILL)
    written += [line for line in proc.stdout.read().split("\n") if line]
    assert proc.wait(10) == -signal.SIGKILL and written[:2] == ["key-0", "key-1"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # opens cleanly: no "cache failed" warning
        store = SQLiteStore(path)
        for key in written:
            assert store.get(key) == f"value-{key[4:]}".encode() * 100, key
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def garbage_in_the_default_store(tmp_path: Path) -> Any:
    home().mkdir(mode=0o700, parents=True, exist_ok=True)
    home().joinpath("cache.sqlite").write_bytes(b"this is not a database\x00" * 200)
    return True


def a_store_inside_a_file(tmp_path: Path) -> Any:
    (tmp_path / "file.txt").write_text("a file where a folder should be")  # even as root
    return SQLiteStore(tmp_path / "file.txt" / "cache.sqlite")


@pytest.mark.parametrize("broken", [garbage_in_the_default_store, a_store_inside_a_file])
def test_a_broken_store_warns_once_and_calls_go_upstream(
        broken: Any, openai_srv: OpenAIServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cache, "_warned", set())
    store = broken(tmp_path)
    with pytest.warns(UserWarning) as caught:
        first = ask(cache=store)
    assert len(ember_warnings(caught.list)) == 1 and "cache" in ember_warnings(caught.list)[0]
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        second = ask(cache=store)
    assert ember_warnings(later) == []
    assert [(r.text, r.cached) for r in (first, second)] == [("Hello from fake", False)] * 2
    assert len(openai_srv.requests) == 2


def test_the_store_and_its_folder_are_owner_only(openai_srv: OpenAIServer) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        ask(), ask()
    finally:
        os.umask(old)
    assert stat.S_IMODE(home().stat().st_mode) == 0o700
    files = list(home().glob("cache.sqlite*"))
    assert home() / "cache.sqlite" in files
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {
        p.name: 0o600 for p in files}


def test_import_ember_loads_no_storage_or_hashing_module() -> None:
    code = ("import sys, ember; print(sorted({'sqlite3', 'pickle', 'hashlib'} & "
            "set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- the command line ----------------------------------------------------------------------

def test_ember_cache_stats_and_clear_older_than(openai_srv: OpenAIServer) -> None:
    assert ember("cache", "stats") == f"0 entries, 0 bytes in {home() / 'cache.sqlite'}\n"
    ask(prompt="one"), ask(prompt="two"), ask(prompt="two")
    assert re.fullmatch(r"2 entries, [1-9]\d* bytes in .*\n", ember("cache", "stats"))
    with sqlite3.connect(home() / "cache.sqlite") as db:  # written 8 days ago
        db.execute("UPDATE cache SET created = created - 8 * 86400")
    db.close()
    ask(prompt="three")
    assert ember("cache", "clear", "--older-than", "7d") == "removed 2 entries\n"
    assert ember("cache", "stats").startswith("1 entries")
    assert ask(prompt="three").cached and not ask(prompt="one").cached
    assert ember("cache", "clear") == "removed 2 entries\n"
    assert ember("cache", "stats").startswith("0 entries, 0 bytes")
    assert len(openai_srv.requests) == 4
    assert "--older-than takes a number of days or hours, like 7d or 12h, not '7 days'" in (
        ember("cache", "clear", "--older-than", "7 days", code=1))


@pytest.fixture
def instant_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """The embedded model replaced by one that answers 'positive' at once (and counts)."""
    from ember.providers import local

    asked: list[dict[str, Any]] = []

    def generate(kind: str, body: dict[str, Any], on_chunk: Any = None) -> dict[str, Any]:
        asked.append(body)  # through schema=, the JSON of a label
        return {"choices": [{"text": '"positive"' if "json_schema" in body else " positive"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 1}}

    monkeypatch.setattr(local, "_generate", generate)
    yield asked


def test_ember_demo_run_twice_is_served_from_the_cache_the_second_time(
        instant_model: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo"]) == 0  # first run, in this process, on an instant model
    first = capsys.readouterr().out
    second = ember("demo")  # a new process with the real model: every answer from the cache
    counts = [re.search(r"(\d+) of (\d+) calls served from the cache, \$0\.000000 saved", out)
              for out in (first, second)]
    assert counts[0] is not None and counts[1] is not None
    calls = len(instant_model)
    assert calls >= 120 and counts[0].groups() == ("0", str(calls))
    assert counts[1].groups() == (str(calls), str(calls))
    verdicts = [[line for line in out.splitlines() if line.startswith(("ok ", "MISS"))]
                for out in (first, second)]
    assert len(verdicts[0]) == calls // 4 and verdicts[0] == verdicts[1]  # the same answers
