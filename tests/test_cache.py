"""Explicit caching: `models(..., cache=...)` and `@cache`, counted at the fake servers; the
SQLite store shared by processes, killed mid-write, corrupt or unwritable; `ember cache`."""

from __future__ import annotations

import asyncio
import inspect
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
from pathlib import Path
from typing import Any

import pytest
from conftest import KEYS
from fakes import AnthropicServer, GeminiServer, OpenAIServer

from ember import MemoryStore, SQLiteStore, cache, models, track
from ember.errors import ProviderError

CLI = "import sys, ember.cli; sys.exit(ember.cli.main())"
MESSAGES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Name a colour."}]


def ember(*args: str) -> str:
    out = subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def home() -> Path:
    return Path(os.environ["EMBER_HOME"])


def ember_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "ember" in str(w.message)]


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


def ask(**fields: Any) -> Any:
    call = {"model": "gpt-4o-mini", "prompt": "Hi", "cache": True, **fields}
    return models(call.pop("model"), call.pop("prompt"), **call)


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


def test_a_hit_costs_nothing_and_track_counts_what_it_saved(openai_srv: OpenAIServer) -> None:
    openai_srv.usage = (1000, 500)
    with track() as t:
        paid, free = ask(), ask()
    assert paid.cost == pytest.approx(0.00045) and free.cost == 0 and free.cached
    assert (free.text, free.usage) == (paid.text, paid.usage)
    assert (t.calls, t.cached) == (2, 1)
    assert t.cost == pytest.approx(paid.cost) and t.saved == pytest.approx(paid.cost)


def test_nothing_is_cached_unless_asked(openai_srv: OpenAIServer) -> None:
    models("gpt-4o-mini", "Hi")
    assert not models("gpt-4o-mini", "Hi").cached and len(openai_srv.requests) == 2
    assert not home().joinpath("cache.sqlite").exists()


@pytest.mark.parametrize("make", [MemoryStore, lambda ttl: SQLiteStore(None, ttl)],
                         ids=["memory", "sqlite"])
def test_an_entry_expires_after_its_store_ttl(make: Any, openai_srv: OpenAIServer) -> None:
    ttl = 0.4
    store = make(ttl)
    start = time.monotonic()
    ask(cache=store)
    hit = ask(cache=store)
    assert time.monotonic() - start < ttl, "machine too slow to read back within the ttl"
    assert hit.cached and len(openai_srv.requests) == 1
    time.sleep(max(0.0, start + ttl + 0.1 - time.monotonic()))
    assert not ask(cache=store).cached and len(openai_srv.requests) == 2


# ---- concurrent identical calls: one request upstream -----------------------------------

async def test_concurrent_identical_calls_share_one_request(openai_srv: OpenAIServer) -> None:
    openai_srv.latency = 0.2
    with track() as t:
        results = await asyncio.gather(
            *[models.acall("gpt-4o-mini", "Hi", cache=True) for _ in range(10)])
    assert len(openai_srv.requests) == 1
    assert {r.text for r in results} == {"Hello from fake"}
    assert sorted(r.cached for r in results) == [False] + [True] * 9
    assert (t.calls, t.cached) == (10, 9)


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
    tasks[0].cancel()  # e.g. asyncio.wait_for() of one request handler ran out
    others = await asyncio.gather(*tasks[1:], return_exceptions=True)
    assert [getattr(r, "text", r) for r in others] == ["Hello from fake"] * 2


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
    assert inspect.iscoroutinefunction(fetch)
    assert list(inspect.signature(fetch).parameters) == ["name"]


def test_a_function_result_expires_after_its_ttl() -> None:
    runs: list[int] = []

    @cache(ttl=0.3, store=MemoryStore())
    def now(x: int) -> int:
        runs.append(x)
        return len(runs)

    start = time.monotonic()
    assert now(1) == now(1) == 1
    assert time.monotonic() - start < 0.3, "machine too slow to read back within the ttl"
    time.sleep(0.4)
    assert now(1) == 2


async def test_a_bad_argument_or_a_wrong_call_is_a_clear_type_error() -> None:
    runs: list[object] = []

    @cache(store=MemoryStore())
    def pair(a: object, b: int) -> tuple[object, int]:
        runs.append(a)
        return a, b

    @cache(store=MemoryStore())
    async def apair(a: int, b: int) -> tuple[int, int]:
        return a, b

    with pytest.raises(TypeError, match=r"argument 'a' of .*pair\(\).*object"):
        pair(object(), 1)
    with pytest.raises(TypeError, match=r"pair\(\) missing 1 required positional argument: 'b'"):
        pair(1)
    with pytest.raises(TypeError, match=r"pair\(\) takes 2 positional arguments but 3"):
        pair(1, 2, 3)
    with pytest.raises(TypeError, match=r"apair\(\) got an unexpected keyword argument 'c'"):
        await apair(1, 2, c=3)
    assert runs == []


@pytest.mark.parametrize(("first", "second"), [({1: "a"}, {"1": "a"}), ((1, 2), [1, 2])],
                         ids=["int-vs-str-dict-keys", "tuple-vs-list"])
def test_unequal_arguments_never_share_a_result(first: Any, second: Any) -> None:
    kind = cache(store=MemoryStore())(repr)
    assert (kind(first), kind(second)) == (repr(first), repr(second))


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
for i in range(1500):
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
    for key in [f"{name}-{i}" for name in ("a", "b") for i in range(1500)]:
        assert reader.get(key) == key.encode() * 20


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


def test_a_writer_killed_mid_write_leaves_every_committed_entry(tmp_path: Path) -> None:
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
        broken: Any, openai_srv: OpenAIServer, tmp_path: Path) -> None:
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


# ---- the command line ----------------------------------------------------------------------

def test_ember_cache_stats_and_clear(openai_srv: OpenAIServer) -> None:
    assert ember("cache", "stats") == f"0 entries, 0 bytes in {home() / 'cache.sqlite'}\n"
    ask(prompt="one"), ask(prompt="two"), ask(prompt="two")
    assert re.fullmatch(r"2 entries, [1-9]\d* bytes in .*\n", ember("cache", "stats"))
    assert ember("cache", "clear") == "removed 2 entries\n"
    assert ember("cache", "stats").startswith("0 entries, 0 bytes")
    assert not ask(prompt="one").cached and len(openai_srv.requests) == 3


def test_ember_demo_run_twice_is_served_from_the_cache_the_second_time() -> None:
    first, second = ember("demo"), ember("demo")
    counts = [re.search(r"cache: (\d+) of (\d+) answers came from the cache", out)
              for out in (first, second)]
    assert counts[0] is not None and counts[1] is not None
    assert int(counts[0][1]) < 48 and counts[1].groups() == ("48", "48")
    verdicts = [[line for line in out.splitlines() if line.startswith(("ok ", "MISS"))]
                for out in (first, second)]
    assert len(verdicts[0]) == 48 and verdicts[0] == verdicts[1]  # the same answers
