"""A fresh process's first answer: `import ember` and one call, against the openai SDK.

    python benchmarks/first_result.py                  # 15 samples per client, ~1 minute
    python benchmarks/first_result.py --samples 30 --before c3f1bc1

Each sample is a new interpreter (`python -c ...`) that imports its client, makes one call
to the fake OpenAI server (benchmarks/fake_openai.py, another process, answering at once)
and prints the answer. The clients take turns, sample by sample, in a rotated order.
"answer" is the time from starting the process to reading the answer on its stdout;
"exit" is until the process has ended (ember's usage log is written by then).

Clients: ember (the code in src/, usage log on, in a temporary EMBER_HOME kept for the
whole run, as ~/.ember is between a user's runs; one unmeasured call first fills it);
ember with its price table removed before each sample (the first call after installing
or upgrading genai-prices); with --before REV, ember as it was at git revision REV
(extracted to a temporary folder); the openai SDK (`OpenAI().chat.completions.create`);
bare aiohttp (one `session.post` under asyncio.run: the floor for a client on aiohttp).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import EXPECTED, KEY, MODEL, PROMPT, FakeServer

HERE = Path(__file__).resolve().parent
CALL = {"ember": f"""
import ember
r = ember.models({MODEL!r}, {PROMPT!r}, base_url=URL, api_key={KEY!r}, max_tokens=16)
assert r.cost is not None and r.cost > 0
print(r.text, flush=True)
""", "openai": f"""
import openai
client = openai.OpenAI(base_url=URL, api_key={KEY!r})
r = client.chat.completions.create(model={MODEL!r}, max_tokens=16,
                                   messages=[{{"role": "user", "content": {PROMPT!r}}}])
print(r.choices[0].message.content, flush=True)
""", "aiohttp": f"""
import asyncio, json
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        async with session.post(URL + "/chat/completions", headers={{"Authorization":
                                "Bearer {KEY}"}}, json={{"model": {MODEL!r}, "max_tokens": 16,
                                "messages": [{{"role": "user", "content": {PROMPT!r}}}]}}) as resp:
            return json.loads(await resp.read())["choices"][0]["message"]["content"]
print(asyncio.run(main()), flush=True)
"""}


def sample(code: str, url: str, env: dict[str, str]) -> tuple[float, float]:
    """Seconds to the answer on stdout, and to the process's end."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", f"URL = {url!r}\n{code}"], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    answer = time.perf_counter() - start
    proc.wait()
    assert line.strip() == EXPECTED and proc.returncode == 0, (line, proc.returncode)
    return answer, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument("--before", help="also run ember as it was at this git revision")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ember-first-result-"))
    base = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    src = str(HERE.parent / "src")
    clients = {"ember": (CALL["ember"], {**base, "PYTHONPATH": src,
                                         "EMBER_HOME": str(tmp / "home")}),
               "ember, price table cold": (CALL["ember"], {**base, "PYTHONPATH": src,
                                                           "EMBER_HOME": str(tmp / "cold")})}
    if args.before:
        old = tmp / "before"
        old.mkdir()
        archive = subprocess.run(["git", "archive", args.before, "src"], cwd=HERE.parent,
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        clients[f"ember at {args.before}"] = (CALL["ember"], {
            **base, "PYTHONPATH": str(old / "src"), "EMBER_HOME": str(tmp / "before-home")})
    clients["openai SDK"] = (CALL["openai"], base)
    clients["bare aiohttp"] = (CALL["aiohttp"], base)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
    try:
        with FakeServer("raw", [0.0], lifetime=900) as server:
            url = server.base_url(0.0)
            for code, env in clients.values():  # warm the disk cache; fill the ember homes
                sample(code, url, env)
            names = list(clients)
            for i in range(args.samples):
                for name in names[i % len(names):] + names[:i % len(names)]:
                    code, env = clients[name]
                    for table in (tmp / "cold").glob("prices*"):
                        table.unlink()
                    times[name].append(sample(code, url, env))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sdk = statistics.median(answer for answer, _ in times["openai SDK"])
    sdk_exit = statistics.median(end for _, end in times["openai SDK"])
    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, {args.samples} "
          "samples each, medians, fresh process each\n")
    print(f"{'client':28} {'answer ms':>9} {'vs SDK':>7} {'exit ms':>8} {'vs SDK':>7}")
    for name, got in times.items():
        answer = statistics.median(a for a, _ in got)
        end = statistics.median(e for _, e in got)
        print(f"{name:28} {answer * 1000:9.0f} {answer / sdk:6.2f}x {end * 1000:8.0f} "
              f"{end / sdk_exit:6.2f}x")


if __name__ == "__main__":
    main()
