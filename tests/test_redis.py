"""Limits, budgets and the cache shared through a real redis-server (started by the suite on
a free port, see conftest.RedisServer): worker processes started here, pointed at a fake
provider in this process, counted at its end; a worker killed with SIGKILL; Redis killed
and started again mid-run."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import RedisServer, serve
from fakes import Fault, OpenAIServer
from test_pace import Server, spaced
from test_spend import worst_case

from ember import RedisStore, Usage, _pace, _redis, budget, cache, limit, models
from ember._prices import cost
from ember.errors import BudgetExceeded, ConfigError, EmberError

GPT = "gpt-4o-mini"
ROOT = Path(__file__).parent.parent


def start(code: str, *args: str) -> subprocess.Popen[str]:
    """A worker process running `code`, once it has said it is ready (imports done)."""
    worker = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert worker.stdout is not None and worker.stdout.readline() == "ready\n", worker.stderr
    return worker


def run_all(workers: list[subprocess.Popen[str]]) -> list[str]:
    """Let every worker go at once; what each printed."""
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    outputs = [worker.communicate(timeout=120) for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * len(workers), outputs
    return [out for out, _ in outputs]


# ---- one budget for four processes -----------------------------------------------------------

SPENDER = """import asyncio, sys
import aiohttp, redis.asyncio
from ember import budget, models
cap = budget(usd=float(sys.argv[2]), shared=sys.argv[1], name="nightly")
print("ready", flush=True)
sys.stdin.readline()

async def main():
    with cap:
        results = await asyncio.gather(
            *(models.acall("gpt-4o-mini", "Hi", max_tokens=100) for _ in range(250)),
            return_exceptions=True)
    print(" ".join(type(r).__name__ for r in results))

asyncio.run(main())
"""


def test_four_processes_under_one_shared_budget_spend_up_to_the_cap_and_no_further(
        openai_srv: OpenAIServer, redis_url: str):
    worst = worst_case(openai_srv, max_tokens=100)  # each call costs just what it holds
    openai_srv.latency = 0.05  # admitted calls are still under way when the others ask
    cap = worst * 100.5  # room for exactly 100 of the 1000 calls
    outcomes = " ".join(run_all([start(SPENDER, redis_url, repr(cap)) for _ in range(4)]))
    assert sorted(set(outcomes.split())) == ["BudgetExceeded", "Response"]  # nothing else
    assert outcomes.split().count("Response") == 100 == len(openai_srv.requests)
    shared = budget(usd=cap, shared=redis_url, name="nightly")  # read from any process
    assert shared.spent == pytest.approx(len(openai_srv.requests) * worst) and shared.spent <= cap
    assert shared.tokens_used == 100 * sum(openai_srv.usage)
    with shared, pytest.raises(BudgetExceeded, match=r"budget of .* USD would be crossed"):
        models(GPT, "Hi", max_tokens=100)  # this process sees what the others spent


async def test_a_shared_budget_settles_at_the_real_cost_and_caps_tokens_too(
        openai_srv: OpenAIServer, redis_url: str):
    worst = worst_case(openai_srv, max_tokens=100)
    openai_srv.usage = (5, 5)  # cheaper than the worst case held
    with budget(tokens=1000, shared=redis_url, name="run") as cap:
        response = await models.acall(GPT, "Hi", max_tokens=100)
        assert cap.spent == pytest.approx(response.cost) and cap.spent < worst
        assert cap.tokens_used == 10
        with pytest.raises(BudgetExceeded, match="budget of 1000 tokens"):
            await models.acall(GPT, "Hi", max_tokens=1000)
    client = redis.Redis.from_url(redis_url)
    assert client.zcard("ember:budget:run:held") == 0  # every hold settled


def test_a_process_killed_holding_reservations_frees_them_when_their_lease_ends(
        openai_srv: OpenAIServer, redis_url: str):
    worst = worst_case(openai_srv, max_tokens=100)
    openai_srv.latency = 60  # the worker's calls hang at the server
    lease, cap = 1.5, worst * 3.5
    holder = start(SPENDER.replace("from ember import", f"import ember._redis\n"
                                   f"ember._redis.LEASE = {lease}\nfrom ember import"),
                   redis_url, repr(cap))
    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert openai_srv.wait_for(3)  # three calls hold the cap; the others were refused
    holder.kill()  # SIGKILL: no settlement, no goodbye
    killed = time.monotonic()
    holder.communicate(timeout=10)
    openai_srv.latency = 0
    with budget(usd=cap, shared=redis_url, name="nightly"):
        with pytest.raises(BudgetExceeded):
            models(GPT, "Hi", max_tokens=100)  # still held by the dead process
        while True:
            try:
                models(GPT, "Hi", max_tokens=100)
                break
            except BudgetExceeded:
                assert time.monotonic() - killed < lease + 1.0  # released within the lease
    assert lease / 2 < time.monotonic() - killed < lease + 1.0


# ---- one limit for four processes ------------------------------------------------------------

PACED = """import asyncio, sys
import aiohttp, redis.asyncio
from ember import Usage, limit, models
from ember._prices import cost
limit("openai", rpm=600, shared=sys.argv[1])
cost("openai", "gpt-4o-mini", Usage())  # the price data, loaded before the clock starts
print("ready", flush=True)
sys.stdin.readline()

async def main():
    await asyncio.gather(*(models.acall("gpt-4o-mini", f"Hi {i}") for i in range(8)))

asyncio.run(main())
"""


@pytest.fixture
def rate_srv(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """The OpenAI fake, refusing more than 10 requests a second (see test_pace.Server)."""
    yield from serve(Server(rate=10), monkeypatch, "OPENAI_BASE_URL", "OPENAI_API_KEY")


def test_four_processes_sharing_one_limit_meet_no_429_and_keep_its_rate(
        rate_srv: Server, redis_url: str):
    run_all([start(PACED, redis_url) for _ in range(4)])
    times = sorted(r.at for r in rate_srv.requests)
    assert rate_srv.refused == 0 and len(times) == 32
    assert (len(times) - 1) / (times[-1] - times[0]) >= 9.5
    assert spaced(times, 0.1, slack=0.03)  # 600 rpm: a turn every 100 ms, for them all


async def test_a_pause_one_process_learned_holds_the_calls_of_another(
        openai_srv: OpenAIServer, redis_url: str):
    limit("openai", rpm=60_000, shared=redis_url)  # the model's learned limits are shared too
    await models.acall(GPT, "warm")  # connections and price data: not part of the pause
    openai_srv.fail(Fault(429, {"retry-after-ms": "800"}))
    refused = asyncio.create_task(models.acall(GPT, "refused once"))
    client = redis.Redis.from_url(redis_url)

    def paused() -> bool:  # Redis puts the model's next turn off, for a while
        turn, (seconds, micros) = client.hget(f"ember:learned:openai/{GPT}", "requests"), \
            client.time()
        return turn is not None and float(turn) > seconds + micros / 1e6 + 0.5

    while not await asyncio.to_thread(paused):
        assert not refused.done()
    told = time.monotonic()
    _pace._learned.clear()  # as in another process: it knows nothing of that 429 itself
    await models.acall(GPT, "another")
    [sent] = [r.at for r in openai_srv.requests if "another" in str(r.json)]
    assert sent - told >= 0.25  # held by the pause the other process learned
    assert (await refused).text


@pytest.fixture
def slow_srv(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """The OpenAI fake, answering after 50 ms and counting the requests in flight at once."""
    yield from serve(Server(latency=0.05), monkeypatch, "OPENAI_BASE_URL", "OPENAI_API_KEY")


def test_four_processes_sharing_one_concurrency_never_have_more_calls_in_flight(
        slow_srv: Server, redis_url: str):
    run_all([start(PACED.replace("rpm=600", "concurrency=3"), redis_url) for _ in range(4)])
    assert len(slow_srv.requests) == 32 and slow_srv.most == 3  # 3 at once, for them all
    assert redis.Redis.from_url(redis_url).zcard("ember:limit:openai:places:held") == 0


async def test_a_call_cancelled_while_asking_redis_for_a_place_leaves_none_taken(
        slow_srv: Server, redis_url: str):
    limit("openai", concurrency=1, shared=redis_url)
    client, held = redis.Redis.from_url(redis_url), "ember:limit:openai:places:held"
    seconds, micros = client.time()  # the one place, held by another process (Redis's clock)
    client.zadd(held, {"another-process 0 1": seconds + micros / 1e6 + 60})

    def asked() -> int:  # the scripts Redis has run
        return int(client.info("commandstats").get("cmdstat_eval", {}).get("calls", 0))

    before = asked()
    waiting = asyncio.create_task(models.acall(GPT, "waits"))
    while await asyncio.to_thread(asked) < before + 3:  # refused, and asking again
        assert not waiting.done()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert client.zrange(held, 0, -1) == [b"another-process 0 1"]  # none of its own left
    client.zrem(held, "another-process 0 1")  # the other process is done
    await asyncio.wait_for(models.acall(GPT, "next"), 2)  # its own process's place is free
    assert [r.json["messages"][0]["content"] for r in slow_srv.requests] == ["next"]


def test_a_place_held_by_a_killed_process_is_free_once_its_lease_ends(
        slow_srv: Server, redis_url: str):
    slow_srv.latency = 60  # the worker's call hangs at the server
    lease = 1.5
    leased = f"import ember._redis\nember._redis.LEASE = {lease}\nfrom ember import"
    holder = start(PACED.replace("rpm=600", "concurrency=1").replace("from ember import", leased),
                   redis_url)
    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert slow_srv.wait_for(1)  # one call holds the place; the others wait for it
    holder.kill()  # SIGKILL: the place is never given back
    killed = time.monotonic()
    holder.communicate(timeout=10)
    slow_srv.latency = 0
    limit("openai", concurrency=1, shared=redis_url)
    models(GPT, "Hi")  # waits for the dead process's lease to end
    assert lease / 2 < time.monotonic() - killed < lease + 1.0


# ---- one cache for every process -------------------------------------------------------------

CACHED = """import sys
from ember import cache, models
@cache(store=sys.argv[1])
def square(x):
    print("computed", end=" ")
    return x * x
print(square(4), models("gpt-4o-mini", "Hi", cache=sys.argv[1]).cached)
"""


def test_an_entry_one_process_wrote_is_a_hit_in_another(openai_srv: OpenAIServer,
                                                         redis_url: str):
    runs = [subprocess.run([sys.executable, "-c", CACHED, redis_url], capture_output=True,
                           text=True, timeout=60) for _ in range(2)]
    assert [(r.returncode, r.stdout) for r in runs] == [(0, "computed 16 False\n"),
                                                        (0, "16 True\n")], runs[0].stderr
    assert models(GPT, "Hi", cache=redis_url).cached and len(openai_srv.requests) == 1


def test_a_redis_store_keeps_entries_for_their_ttl_and_clears_them(
        openai_srv: OpenAIServer, redis_url: str):
    store = RedisStore(redis_url, ttl=60)
    assert not models(GPT, "Hi", cache=store).cached and models(GPT, "Hi", cache=store).cached
    client = redis.Redis.from_url(redis_url)
    [key] = client.keys("ember:cache:*")
    assert 0 < client.pttl(key) <= 60_000  # Redis expires it
    assert store.stats()["entries"] == 1 and store.stats()["bytes"] > 0
    with pytest.raises(ConfigError, match="older_than"):
        store.clear(older_than=60)
    assert store.clear() == 1 and not models(GPT, "Hi", cache=store).cached


# ---- failures --------------------------------------------------------------------------------

UNREACHABLE = "redis://:pw-in-the-url@127.0.0.1:1/0"  # nothing listens on port 1


@pytest.mark.parametrize("name", ["limit", "budget", "cache", "@cache"])
def test_an_unreachable_server_is_a_config_error_naming_it_without_its_password(name: str):
    make = {"limit": lambda: limit("openai", rpm=10, shared=UNREACHABLE),
            "budget": lambda: budget(usd=1, shared=UNREACHABLE, name="x"),
            "cache": lambda: models(GPT, "Hi", cache=UNREACHABLE),
            "@cache": lambda: cache(store=UNREACHABLE)}[name]
    with pytest.raises(ConfigError, match=r"Redis at redis://127\.0\.0\.1:1/0") as caught:
        make()
    assert "pw-in-the-url" not in str(caught.value)


def test_a_bad_url_or_a_shared_budget_without_a_name_is_refused():
    with pytest.raises(ConfigError, match="shared= takes a Redis URL"):
        limit("openai", rpm=10, shared=True)
    with pytest.raises(ConfigError, match=r"Redis at localhost:6379 .* schemes \(redis://"):
        budget(usd=1, shared="localhost:6379", name="x")
    with pytest.raises(ConfigError, match="name= takes the shared budget's name"):
        budget(usd=1, shared=UNREACHABLE)


def test_redis_lost_mid_run_fails_limits_and_budgets_closed_and_leaves_the_cache_out(
        openai_srv: OpenAIServer, own_redis: RedisServer):
    url, secret = own_redis.url, str(own_redis.password)
    limit("openai", rpm=60_000, concurrency=4, shared=url)
    shared = budget(usd=1.0, shared=url, name="nightly")

    def under_budget(prompt: str) -> Any:
        with shared:
            return models(GPT, prompt, max_tokens=10, cache=url)

    first = under_budget("Hi")
    openai_srv.latency = 0.5
    with ThreadPoolExecutor(1) as pool:
        under_way = pool.submit(under_budget, "under way")
        assert openai_srv.wait_for(2)
        own_redis.stop()  # while that call is at the server
        with pytest.raises(EmberError, match="Redis at") as unsettled:
            under_way.result()  # its cost could not be counted: it says so
    openai_srv.latency = 0
    with pytest.raises(EmberError) as paced:  # the limit fails closed
        models(GPT, "Hi")
    with shared, pytest.raises(EmberError) as refused:  # and so does the budget
        models(GPT, "Hi again", max_tokens=10)
    assert not isinstance(refused.value, BudgetExceeded) and len(openai_srv.requests) == 2
    limit("openai")  # the cache alone: it goes on without Redis
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = [models(GPT, "Hi", cache=url) for _ in range(3)]
    assert [r.cached for r in again] == [False] * 3 and len(openai_srv.requests) == 5
    said = [str(w.message) for w in caught]
    assert len(said) == 1 and "calls go uncached" in said[0]  # one warning
    for text in [str(unsettled.value), str(paced.value), str(refused.value), *said,
                 repr(shared), repr(_redis.store(url))]:
        assert secret not in text and f"127.0.0.1:{own_redis.port}" in text
    own_redis.start()  # back, empty: a server without persistence forgot what was spent
    limit("openai", rpm=60_000, shared=url)
    assert under_budget("Hi after").cost == pytest.approx(shared.spent) == first.cost
    assert under_budget("Hi after").cached  # the cache is used again at once


# ---- the README's example, run as written ----------------------------------------------------

def readme_blocks() -> list[str]:
    """The ```python no-run blocks of the README's section on Redis (it needs a server)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Many processes, many machines", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python no-run\n(.*?)```", section, re.S)


def run_script(source: str, redis_url: str, folder: Path) -> str:
    script = folder / "job.py"
    script.write_text(source)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "REDIS_URL": redis_url})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_readmes_first_example_runs_as_written(openai_srv: OpenAIServer, redis_url: str,
                                                  tmp_path: Path):
    first, _ = readme_blocks()
    spent = float(run_script(first, redis_url, tmp_path))
    assert spent == pytest.approx(cost("openai", GPT, Usage(*openai_srv.usage)))
    assert len(openai_srv.requests) == 1


def test_the_readmes_pool_of_worker_processes_shares_one_limit_budget_and_cache(
        openai_srv: OpenAIServer, redis_url: str, tmp_path: Path):
    _, pool = readme_blocks()
    out = run_script(pool, redis_url, tmp_path)
    answers, spent = re.findall(r"\d+(?:\.\d+)?", out.splitlines()[-1])
    assert int(answers) == 20 and len(openai_srv.requests) == 10  # the second pass: all hits
    assert float(spent) == pytest.approx(10 * cost("openai", GPT, Usage(*openai_srv.usage)))
    client = redis.Redis.from_url(redis_url)
    assert client.exists("ember:limit:openai") and client.zcard("ember:budget:reviews:held") == 0


def test_without_a_redis_url_redis_is_never_imported(openai_srv: OpenAIServer):
    code = ("import sys, ember\nember.limit('openai', rpm=6000)\n"
            "with ember.budget(usd=1): ember.models('gpt-4o-mini', 'Hi', max_tokens=5, cache=1)\n"
            "print('redis' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, "False"), out.stderr
