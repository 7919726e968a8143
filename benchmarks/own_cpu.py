"""ember's own CPU per call: `models.acall` with the transport replaced by a canned answer.

    python benchmarks/own_cpu.py                     # this tree, about 10 s
    python benchmarks/own_cpu.py --before 5493509    # and ember as it was at a git revision

No socket, no server: each provider module's `post` is replaced by one that takes the call's
turn (`_pace.wait`), marks it sent, reads the (empty) headers (`_pace.learn`) and decodes a
canned chat.completion (`json.loads(json.dumps(...))`, about 5 µs, which bare aiohttp pays
too). Everything else is ember's: the settings checks, budget and tracking, pacing, the
Response, the price, the usage-log row (on: EMBER_LOG unset, a temporary EMBER_HOME; its
writer thread runs beside). Each copy of ember is imported under a package name of its own,
so both run in one process, rounds interleaved; the figure is the median of the rounds'
mean µs per call. On a real call each µs here costs two to three: ember's code then runs
with caches cold from aiohttp's and the kernel's work (compare benchmarks/bench.py).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REPLY = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
         "choices": [{"index": 0, "finish_reason": "stop", "message": {
             "role": "assistant", "content": "Hello! How can I help you today?",
             "refusal": None}}],
         "usage": {"prompt_tokens": 13, "completion_tokens": 9, "total_tokens": 22}}


def load(source: Path, name: str, folder: Path) -> Any:
    """The ember package at `source`, imported as `name`, with its transport canned."""
    shutil.copytree(source, folder / name)
    ember = importlib.import_module(name)
    pace, openai = ember._pace, importlib.import_module(f"{name}.providers.openai")

    async def post(call: Any, url: str, headers: Any, body: Any, stream: bool = False,
                   decode: Any = None) -> Any:
        await pace.wait(call, body)
        call.start = call.start or time.perf_counter()
        await pace.learn(call.request, 200, {}, None)
        return decode(json.loads(json.dumps(REPLY)))

    openai.post = post
    return ember


async def per_call(ember: Any, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        await ember.models.acall("gpt-4o-mini", "Say hello in one short sentence.",
                                 base_url="http://127.0.0.1:9/v1", api_key="sk-bench",
                                 max_tokens=16)
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="also ember as it was at this git revision")
    parser.add_argument("--calls", type=int, default=3000, help="calls a round")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ember-own-cpu-"))
    os.environ["EMBER_HOME"] = str(folder / "home")
    for var in ("EMBER_LOG", "EMBER_LOG_PROMPTS"):
        os.environ.pop(var, None)
    sys.path.insert(0, str(folder))
    try:
        sources = {"this tree": ROOT / "src" / "ember"}
        if args.before:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "src"],
                                     check=True, capture_output=True).stdout
            (folder / "before").mkdir()
            subprocess.run(["tar", "-x", "-C", str(folder / "before")], input=archive, check=True)
            sources[f"at {args.before}"] = folder / "before" / "src" / "ember"
        embers = {label: load(source, f"ember_{i}", folder)
                  for i, (label, source) in enumerate(sources.items())}

        async def measure() -> dict[str, list[float]]:
            rounds: dict[str, list[float]] = {label: [] for label in embers}
            for ember in embers.values():
                await per_call(ember, 300)  # warm: imports, price table, log writer
            for _ in range(args.rounds):
                for label, ember in embers.items():
                    rounds[label].append(await per_call(ember, args.calls))
                    ember._log.flush()  # its backlog written outside the next round
            return rounds

        rounds = asyncio.run(measure())
        print(f"ember's own CPU per call, transport canned, usage log on ({args.rounds} rounds "
              f"of {args.calls} calls, median of the rounds' means):")
        for label, figures in rounds.items():
            print(f"  {label:20} {statistics.median(figures):6.1f} µs "
                  f"(rounds {min(figures):.1f}-{max(figures):.1f})")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
