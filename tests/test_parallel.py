"""Many calls at once: gather, parallel/aparallel and vote. Order is proved by
making later items finish first, concurrency by counting calls in flight, failures at the
fake server; the progress bar is read from stderr and the run's tag from the usage log."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import random
import re
import signal
import sqlite3
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fakes import OpenAIServer

from ember import (
    Response,
    Usage,
    _log,
    aparallel,
    gather,
    models,
    parallel,
    track,
    vote,
)
from ember.errors import ConfigError, EmberError, PartialFailure, ProviderError

GPT = "openai/gpt-4o-mini"  # $0.15 in, $0.60 out per million tokens


def prompts_at(srv: OpenAIServer) -> Counter[str]:
    """How many times each prompt reached the server."""
    return Counter(r.json["messages"][-1]["content"] for r in srv.requests)


def logged_tags() -> list[str | None]:
    """The tag of every row of the usage log, once the background writer has caught up."""
    _log.flush()
    path = Path(os.environ["EMBER_HOME"]) / "usage.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [tag for (tag,) in db.execute("SELECT tag FROM calls ORDER BY rowid")]


class InFlight:
    """Counts the calls under way (from any thread) and the most seen at once."""

    def __init__(self) -> None:
        self.now = self.peak = self.started = 0
        self._lock = threading.Lock()

    def __enter__(self) -> InFlight:
        with self._lock:
            self.now += 1
            self.started += 1
            self.peak = max(self.peak, self.now)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


def reply(text: str) -> Response:
    return Response(text, "gpt-4o-mini", "openai", Usage(3, 1), 0.0, 0.1)


# ---- order -----------------------------------------------------------------------------------

async def test_aparallel_keeps_input_order_when_later_items_finish_first():
    n, jitter = 10, random.Random(1)
    finished: list[int] = []
    done = [asyncio.Event() for _ in range(n + 1)]
    done[n].set()

    async def square(i: int) -> int:  # item i ends only after item i + 1 has ended
        await asyncio.sleep(jitter.uniform(0, 0.002))
        async with asyncio.timeout(5):
            await done[i + 1].wait()
        finished.append(i)
        done[i].set()
        return i * i

    assert await aparallel(square, range(n), concurrency=n) == [i * i for i in range(n)]
    assert finished == list(range(n))[::-1]

    async def later(i: int) -> int:  # random latencies, more items than slots
        await asyncio.sleep(jitter.uniform(0, 0.004))
        return -i

    assert await aparallel(later, (i for i in range(40)), concurrency=6) == [
        -i for i in range(40)]


def test_parallel_keeps_input_order_when_later_items_finish_first():
    n, jitter = 10, random.Random(2)
    finished: list[int] = []
    done = [threading.Event() for _ in range(n + 1)]
    done[n].set()

    def square(i: int) -> int:  # on worker threads; item i ends only after item i + 1
        time.sleep(jitter.uniform(0, 0.002))
        assert done[i + 1].wait(5)
        finished.append(i)
        done[i].set()
        return i * i

    assert parallel(square, range(n), concurrency=n) == [i * i for i in range(n)]
    assert finished == list(range(n))[::-1]

    def later(i: int) -> int:
        time.sleep(jitter.uniform(0, 0.004))
        return -i

    assert parallel(later, (i for i in range(40)), concurrency=6) == [-i for i in range(40)]


def test_no_items_give_an_empty_list():
    assert parallel(str, []) == []


# ---- failures --------------------------------------------------------------------------------

async def test_a_partial_failure_keeps_every_success(openai_srv: OpenAIServer):
    first_failed = asyncio.Event()

    async def ask(prompt: str) -> Response:
        if prompt == "q3":  # fails first, with a 400 that is never retried
            openai_srv.fail(400)
            try:
                return await models.acall(GPT, prompt)
            finally:
                first_failed.set()
        async with asyncio.timeout(5):  # the others only ask once q3 has failed
            await first_failed.wait()
        return await models.acall(GPT, prompt)

    prompts = [f"q{i}" for i in range(8)]
    with track() as t, pytest.raises(PartialFailure) as caught:
        await aparallel(ask, prompts, concurrency=8)
    failure = caught.value
    assert isinstance(failure, EmberError) and isinstance(failure, ExceptionGroup)
    error = failure.failures[3]
    assert list(failure.failures) == [3] and list(failure.exceptions) == [error]
    assert isinstance(error, ProviderError) and error.status == 400
    assert len(failure.results) == 8 and failure.results[3] is error
    assert all(isinstance(r, Response) and r.text == "Hello from fake"
               for i, r in enumerate(failure.results) if i != 3)
    assert prompts_at(openai_srv) == Counter(prompts)  # each sent once, the 400 not retried
    assert (t.calls, t.errors) == (8, 1)


def test_a_partial_failure_can_be_handled_with_except_star():
    def invert(n: int) -> float:
        if n == 3:
            raise KeyError(n)
        return 1 / n

    handled: list[BaseException] = []
    with pytest.raises(ExceptionGroup) as rest:
        try:
            parallel(invert, [1, 0, 2, 3])
        except* ZeroDivisionError as group:
            handled.extend(group.exceptions)
    assert [type(e) for e in handled] == [ZeroDivisionError]
    assert [type(e) for e in rest.value.exceptions] == [KeyError]  # the rest goes on up


def test_every_item_runs_even_when_several_fail():
    ran: list[int] = []

    def check(n: int) -> int:
        ran.append(n)
        if n % 3 == 0:
            raise ValueError(f"bad {n}")
        return n

    with pytest.raises(PartialFailure) as caught:
        parallel(check, range(7), concurrency=2)
    failure = caught.value
    assert sorted(ran) == list(range(7))
    assert sorted(failure.failures) == [0, 3, 6] and len(failure.exceptions) == 3
    assert [r for r in failure.results if not isinstance(r, Exception)] == [1, 2, 4, 5]
    assert all(failure.results[i] is e for i, e in failure.failures.items())
    assert str(failure.failures[3]) == "bad 3"


async def test_errors_return_puts_each_exception_in_place():
    def check(n: int) -> int:
        if n % 3 == 0:
            raise ValueError(f"bad {n}")
        return n

    async def acheck(n: int) -> int:
        return check(n)

    for out in (parallel(check, range(7), errors="return"),
                await aparallel(acheck, range(7), errors="return"),
                await gather(*(acheck(n) for n in range(7)), errors="return")):
        assert [type(r) if isinstance(r, Exception) else r for r in out] == [
            ValueError, 1, 2, ValueError, 4, 5, ValueError]
        assert str(out[6]) == "bad 6"


def test_a_bad_errors_value_is_a_config_error():
    calls: list[Any] = []
    with pytest.raises(ConfigError, match="errors"):
        parallel(calls.append, [1, 2, 3], errors="ignore")
    assert calls == []  # refused before any item ran


async def test_a_bad_errors_value_is_a_config_error_async():
    calls: list[Any] = []

    async def record(item: Any) -> None:
        calls.append(item)

    with pytest.raises(ConfigError, match="errors"):
        await aparallel(record, [1, 2, 3], errors="skip")
    assert calls == []


@pytest.mark.parametrize("concurrency", [0, -2])
async def test_a_concurrency_below_one_is_refused_not_silently_skipped(concurrency: int):
    calls: list[Any] = []
    with pytest.raises(ConfigError, match=f"concurrency= takes .*, not {concurrency}$"):
        await aparallel(calls.append, [1, 2, 3], concurrency=concurrency)
    with pytest.raises(ConfigError, match=">= 1"):
        parallel(calls.append, [1, 2, 3], concurrency=concurrency)
    pending = [asyncio.sleep(0, n) for n in range(2)]
    with pytest.raises(ConfigError, match="concurrency"):
        await gather(*pending, concurrency=concurrency)
    for coroutine in pending:
        coroutine.close()
    assert calls == []  # no item ran, and none came back as a silent None


async def test_gather_refuses_a_bad_errors_value():
    async def one() -> int:
        return 1

    pending = [one(), one()]
    with pytest.raises(ConfigError, match="errors"):
        await gather(*pending, errors="raise!")
    for coroutine in pending:
        coroutine.close()


# ---- concurrency -----------------------------------------------------------------------------

async def test_aparallel_runs_at_most_concurrency_async_calls_at_once():
    for bound, items in [(4, 12), (16, 48)]:  # 16 is the default
        flying, barrier = InFlight(), asyncio.Barrier(bound)  # reached only with `bound` at once

        async def work(i: int, flying: InFlight = flying,
                       barrier: asyncio.Barrier = barrier) -> int:
            with flying:
                async with asyncio.timeout(5):
                    await barrier.wait()
                return i

        kwargs = {"concurrency": bound} if bound != 16 else {}
        assert await aparallel(work, range(items), **kwargs) == list(range(items))
        assert flying.peak == bound and flying.started == items


def test_parallel_runs_at_most_concurrency_sync_calls_at_once():
    flying, barrier = InFlight(), threading.Barrier(3, timeout=5)

    def work(i: int) -> int:
        assert threading.current_thread() is not threading.main_thread()
        with flying:
            barrier.wait()
            return i

    assert parallel(work, range(12), concurrency=3) == list(range(12))
    assert flying.peak == 3 and flying.started == 12


async def test_gather_with_concurrency_starts_a_coroutine_only_when_a_slot_frees():
    flying, barrier = InFlight(), asyncio.Barrier(3)

    async def work(i: int) -> int:
        with flying:
            async with asyncio.timeout(5):
                await barrier.wait()
            return i

    assert await gather(*(work(i) for i in range(9)), concurrency=3) == list(range(9))
    assert flying.peak == 3 and flying.started == 9

    everyone = asyncio.Barrier(9)  # without a bound, all of them at once, results in order

    async def wait_all(i: int) -> int:
        async with asyncio.timeout(5):
            await everyone.wait()
        return i

    assert await gather(*(wait_all(i) for i in range(9))) == list(range(9))


async def test_gather_keeps_order_and_raises_a_partial_failure():
    done = [asyncio.Event() for _ in range(6)]
    done[5].set()

    async def step(i: int) -> int:
        async with asyncio.timeout(5):
            await done[i + 1].wait()
        done[i].set()
        if i == 2:
            raise KeyError(i)
        return i

    with pytest.raises(PartialFailure) as caught:
        await gather(*(step(i) for i in range(5)))
    assert list(caught.value.failures) == [2]
    assert caught.value.results[:2] == [0, 1] and caught.value.results[3:] == [3, 4]


async def test_a_sync_function_returning_a_coroutine_is_awaited(openai_srv: OpenAIServer):
    prompts = [f"p{i}" for i in range(6)]
    results = parallel(lambda p: models.acall(GPT, p), prompts)
    assert [r.text for r in results] == ["Hello from fake"] * 6
    assert prompts_at(openai_srv) == Counter(prompts)

    flying, barrier = InFlight(), asyncio.Barrier(2)
    done = [asyncio.Event() for _ in range(6)]
    finished: list[int] = []

    async def square(i: int) -> int:  # awaited under the bound; in each pair the later ends first
        with flying:
            async with asyncio.timeout(5):
                await barrier.wait()
                if i % 2 == 0:
                    await done[i + 1].wait()
            finished.append(i)
            done[i].set()
            return i * i

    assert await aparallel(lambda i: square(i), range(6), concurrency=2) == [
        i * i for i in range(6)]
    assert flying.peak == 2 and finished == [1, 0, 3, 2, 5, 4]


# ---- progress --------------------------------------------------------------------------------

def test_progress_true_shows_done_total_failures_and_cost_on_stderr(
        openai_srv: OpenAIServer, capsys: pytest.CaptureFixture[str]):
    openai_srv.usage = (1_000_000, 0)  # $0.15 a call

    def ask(prompt: str) -> Response:
        if prompt == "skip":
            raise ValueError("no call")
        return models(GPT, prompt)

    out = parallel(ask, ["a", "skip", "b", "c"], progress=True, errors="return")
    assert isinstance(out[1], ValueError) and len(openai_srv.requests) == 3
    err = capsys.readouterr().err
    assert "4/4" in err and "failed=1" in err and ask.__qualname__ in err
    costs = re.findall(r"cost=\$(\d+(?:\.\d+)?)", err)
    assert costs and float(costs[-1]) == pytest.approx(0.45, abs=1e-4)


def test_progress_is_on_by_default_only_when_stderr_is_a_terminal(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    def double(n: int) -> int:
        return 2 * n

    assert parallel(double, range(3)) == [0, 2, 4]  # captured stderr: not a terminal
    assert parallel(double, range(3), progress=False) == [0, 2, 4]
    assert capsys.readouterr().err == ""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    parallel(double, range(3), progress=False)
    assert terminal.getvalue() == ""
    parallel(double, range(3))
    assert "3/3" in terminal.getvalue() and double.__qualname__ in terminal.getvalue()


# ---- cancelling ------------------------------------------------------------------------------

async def test_cancelling_aparallel_starts_no_new_items():
    gate, both_started = asyncio.Event(), asyncio.Event()
    started: list[int] = []
    cancelled: list[int] = []

    async def slow(i: int) -> int:
        started.append(i)
        if len(started) == 2:
            both_started.set()
        try:
            await gate.wait()
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        return i

    task = asyncio.create_task(aparallel(slow, range(10), concurrency=2))
    async with asyncio.timeout(5):
        await both_started.wait()
    task.cancel()
    gate.set()  # had scheduling gone on, the freed slots would start items 2 and 3 now
    with pytest.raises(asyncio.CancelledError):
        await task
    assert started == [0, 1] and sorted(cancelled) == [0, 1]
    assert [t for t in asyncio.all_tasks() if not t.done() and t is not asyncio.current_task()
            ] == []  # nothing left behind that could start an item


def main_thread_is_waiting() -> bool:
    """Whether the main thread is blocked in a wait (parallel() waiting for its run)."""
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    return frame is not None and frame.f_code.co_filename.endswith("threading.py")


def join_parallel_threads() -> None:
    for thread in threading.enumerate():
        if thread.name.startswith("ember-parallel"):
            thread.join(5)


def test_ctrl_c_on_parallel_starts_no_new_items():
    gate, lock = threading.Event(), threading.Lock()
    started: list[int] = []

    def slow(i: int) -> int:
        with lock:
            started.append(i)
            if len(started) == 2:  # Ctrl-C while items 0 and 1 are under way
                deadline = time.monotonic() + 5
                while not main_thread_is_waiting() and time.monotonic() < deadline:
                    time.sleep(0.001)
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
        assert gate.wait(5)
        return i

    # Ctrl-C's own handler, even where SIGINT came in ignored (a job started with `cmd &`)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            parallel(slow, range(10), concurrency=2)
    finally:
        signal.signal(signal.SIGINT, previous)
    gate.set()  # let the two running items end; had scheduling gone on, more would start
    join_parallel_threads()
    assert sorted(started) == [0, 1]


# ---- vote ------------------------------------------------------------------------------------

def test_vote_compares_stripped_casefolded_answers_and_returns_the_first_spelling():
    assert vote(["No", " yes", "YES\n", "no ", "Yes"]) == "yes"
    assert vote(["other", "straße", "Other", "STRASSE", "Strasse"]) == "straße"  # not .lower()
    assert vote(x for x in ["  maybe  "]) == "maybe"


def test_vote_breaks_a_tie_in_favour_of_the_answer_seen_first():
    assert vote(["b", "a", "a", "b", "c"]) == "b"
    assert vote(["A", "b"]) == "A"
    assert vote(["c", "B", "b", "C"]) == "c"


def test_vote_counts_responses_by_their_text():
    answers = [reply(" Positive"), reply("negative"), "NEGATIVE ", reply("positive\n"),
               reply("Positive")]
    assert vote(answers) == "Positive"


def test_vote_needs_at_least_one_answer():
    with pytest.raises(ValueError):
        vote([])
    with pytest.raises(ValueError):
        vote(iter(()))


# ---- tracking --------------------------------------------------------------------------------

def test_track_outside_parallel_counts_sync_calls_made_on_worker_threads(
        openai_srv: OpenAIServer):
    prompts = [f"s{i}" for i in range(10)]
    with track() as t:
        results = parallel(lambda p: models(GPT, p), prompts, concurrency=4)
    assert (t.calls, t.input_tokens, t.output_tokens) == (10, 120, 50)
    assert t.cost == pytest.approx(sum(r.cost for r in results))
    assert prompts_at(openai_srv) == Counter(prompts)


async def test_track_outside_aparallel_counts_every_call(openai_srv: OpenAIServer):
    async def ask(prompt: str) -> Response:
        return await models.acall(GPT, prompt)

    def ask_sync(prompt: str) -> Response:
        return models(GPT, prompt)

    with track() as t:
        await aparallel(ask, ["a", "b", "c"])
        await aparallel(ask_sync, ["d", "e"])
    assert (t.calls, t.input_tokens) == (5, 60)
    assert prompts_at(openai_srv) == Counter("abcde")


async def test_calls_inside_a_run_are_logged_under_the_functions_qualname(
        openai_srv: OpenAIServer):
    def summarise(text: str) -> str:
        return models(GPT, text).text

    async def classify(text: str) -> str:
        return (await models.acall(GPT, text)).text

    parallel(summarise, ["a", "b"])
    await aparallel(classify, ["c"])
    await models.acall(GPT, "after")  # the run's own tag ended with the run
    tags = logged_tags()
    assert Counter(tags) == {summarise.__qualname__: 2, classify.__qualname__: 1, None: 1}
    assert tags[-1] is None
    assert summarise.__qualname__.endswith("<locals>.summarise")


async def test_an_explicit_tag_is_not_replaced_by_the_functions_name(openai_srv: OpenAIServer):
    def summarise(text: str) -> str:
        with track(tag="inner"):  # the innermost explicit tag wins
            return models(GPT, text).text

    with track(tag="nightly") as t:
        parallel(lambda text: models(GPT, text), ["a", "b"])
        await aparallel(summarise, ["c"])
        await models.acall(GPT, "after")
    assert t.calls == 4
    assert Counter(logged_tags()) == {"nightly": 3, "inner": 1}


def test_concurrency_none_is_unbounded_for_async_and_sync_functions(openai_srv: OpenAIServer):
    openai_srv.latency = 0.2
    barrier = threading.Barrier(30, timeout=5)  # passed only if all 30 run at once

    def wait_for_all(i: int) -> int:
        barrier.wait()
        return i

    assert parallel(wait_for_all, range(30), concurrency=None) == list(range(30))
    parallel(lambda i: models(GPT, f"q{i}"), range(40), concurrency=None)
    arrivals = sorted(r.at for r in openai_srv.requests)
    assert arrivals[-1] - arrivals[0] < 0.2  # all 40 were in flight at once, none queued


def test_vote_skips_exceptions_and_raises_the_first_when_nothing_else_is_left():
    boom, late = ProviderError("openai", 500, "boom"), TimeoutError("late")
    assert vote([boom, "yes", late, "no", "Yes"]) == "yes"
    with pytest.raises(ProviderError, match="boom"):
        vote([boom, late])


def test_by_model_finds_a_model_by_the_name_it_was_called_with(openai_srv: OpenAIServer):
    with track() as t:
        models("gpt-4o-mini", "Hi")
    assert t.by_model["gpt-4o-mini"] is t.by_model["openai/gpt-4o-mini"]
    assert t.by_model["gpt-4o-mini"].calls == 1
    assert "gpt-4o-mini" not in t.by_model and "openai/gpt-4o-mini" in t.by_model
    with pytest.raises(KeyError):
        t.by_model["gpt-4o"]
