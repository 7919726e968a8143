"""ember against a bare aiohttp client and the official openai SDK, on a fake local server.

    python benchmarks/bench.py            # full run, about 1-2 minutes
    python benchmarks/bench.py --quick    # smaller counts, about 20 seconds
    python benchmarks/bench.py --profile  # also: cProfile of ember's sequential calls

Measures, in one run (see BENCHMARKS.md):
 1. sequential calls at 0 ms server latency: median and mean wall time per call, calls/s and
    client CPU per call, for bare aiohttp, AsyncOpenAI, ember's sync twin and ember's
    `acall` in four settings: usage log off (EMBER_LOG=0), log on (the default), log on
    inside `with track():`, and log on inside `with budget(usd=1000), track():`;
 2. N calls at C concurrent with 50 ms server latency: wall time, calls/s, ratio to the
    ideal wall time N/C*latency, client CPU per call (ember with its log on), for C worker
    tasks of each client, and for ember's `aparallel(fn, range(N), C)` with an `async def fn`
    and with `lambda i: call()`;
 3. import time of ember, openai and aiohttp in fresh interpreters.

Every client sends max_tokens=16 (a budget needs it). ember's usage log goes to a temporary
EMBER_HOME that this script creates and removes: it never writes to ~/.ember. The fake
server (benchmarks/fake_openai.py) runs in a separate process on 127.0.0.1 and stops by
itself when this script exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODEL = "gpt-4o-mini"
PROMPT = "Say hello in one short sentence."
KEY = "sk-bench-0000000000000000"
EXPECTED = "Hello! How can I help you today?"
MAX_TOKENS = 16  # sent by every client: a call under a budget needs it

Call = Callable[[], Awaitable[str]]


# --------------------------------------------------------------------------- the fake server

class FakeServer:
    """benchmarks/fake_openai.py in a child process; one port per latency."""

    def __init__(self, impl: str, latencies_ms: list[float], lifetime: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "fake_openai.py"), "--impl", impl, "--lifetime",
             str(lifetime), "--latency-ms", *map(str, latencies_ms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "READY":
            self.proc.kill()
            raise RuntimeError(f"fake server did not start: {line}")
        self.ports = {float(k): int(v) for k, v in (p.split("=") for p in line[1:])}

    def cpu(self) -> float:
        """CPU seconds the server process has used so far (Linux /proc; 0 elsewhere)."""
        try:  # nanoseconds on a CPU, finer than /proc/<pid>/stat's clock ticks
            return int(Path(f"/proc/{self.proc.pid}/schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0

    def base_url(self, latency_ms: float) -> str:
        return f"http://127.0.0.1:{self.ports[latency_ms]}/v1"

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # the server stops on EOF
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- the clients

def messages() -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPT}]


async def make_ember(base_url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    from ember import models

    async def call() -> str:
        return (await models.acall(MODEL, PROMPT, base_url=base_url, api_key=KEY,
                                   max_tokens=MAX_TOKENS)).text

    async def close() -> None:  # ember closes its session when the loop shuts down
        return None

    return call, close


async def make_bare(base_url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """The least an aiohttp user would write: one shared session, POST json=, json.loads."""
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    url = base_url + "/chat/completions"
    headers = {"Authorization": f"Bearer {KEY}"}

    async def call() -> str:
        body = {"model": MODEL, "messages": messages(), "max_tokens": MAX_TOKENS}
        async with session.post(url, json=body, headers=headers) as resp:
            data = json.loads(await resp.read())
        return data["choices"][0]["message"]["content"]  # type: ignore[no-any-return]

    return call, session.close


async def make_openai(base_url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=KEY)  # max_retries left at its default

    async def call() -> str:
        resp = await client.chat.completions.create(model=MODEL, messages=messages(),
                                                    max_tokens=MAX_TOKENS)
        return resp.choices[0].message.content or ""

    return call, client.close


def make_ember_sync(base_url: str) -> Callable[[], str]:
    from ember import models

    def call() -> str:
        return models(MODEL, PROMPT, base_url=base_url, api_key=KEY, max_tokens=MAX_TOKENS).text

    return call


ASYNC_CLIENTS = {"ember": make_ember, "bare aiohttp": make_bare, "openai SDK": make_openai}


# --------------------------------------------------------------------------- ember's settings

@dataclass
class Setting:
    """How ember runs one variant: its usage log on or off (EMBER_LOG, read at every call),
    the log's own folder (EMBER_HOME), and the track() / budget() scopes around the calls.
    One Tracker and one Budget serve all rounds of the variant, so they can be checked."""

    home: Path
    log: bool = True
    track: bool = False
    budget: bool = False
    calls: int = field(default=0, init=False)  # calls made in it, counted by the harness
    flush_s: list[float] = field(default_factory=list, init=False)  # waits for the log

    def __post_init__(self) -> None:
        from ember import Budget, Tracker
        self.tracker = Tracker() if self.track else None
        self.cap = Budget(usd=1000) if self.budget else None

    @contextlib.contextmanager
    def active(self, calls: int) -> Iterator[None]:
        """Run `calls` calls in this setting; at the end, wait until their rows are written
        so that the writer's backlog does not spill into the next variant's timing."""
        from ember import _log
        saved = {k: os.environ.get(k) for k in ("EMBER_LOG", "EMBER_HOME")}
        if self.log:
            os.environ.pop("EMBER_LOG", None)  # the default: on
        else:
            os.environ["EMBER_LOG"] = "0"
        os.environ["EMBER_HOME"] = str(self.home)
        try:
            with contextlib.ExitStack() as scopes:
                if self.cap:
                    scopes.enter_context(self.cap)
                if self.tracker:
                    scopes.enter_context(self.tracker)
                yield
            self.calls += calls
            t0 = time.perf_counter()
            _log.flush()
            self.flush_s.append(time.perf_counter() - t0)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def rows(self) -> int:
        """Rows in this setting's usage log (0 when it was never created)."""
        path = self.home / "usage.sqlite"
        if not path.exists():
            return 0
        with contextlib.closing(sqlite3.connect(path)) as db:
            return int(db.execute("SELECT count(*) FROM calls").fetchone()[0])

    def check(self, name: str) -> dict[str, object]:
        """The log holds one row per call made with it on; the scopes saw every call."""
        rows, want = self.rows(), self.calls if self.log else 0
        assert rows == want, f"{name}: usage log has {rows} rows, expected {want}"
        out: dict[str, object] = {"calls": self.calls, "log_rows": rows,
                                  "flush_ms_max": max(self.flush_s, default=0) * 1000}
        if self.tracker:
            assert self.tracker.calls == self.calls, (name, self.tracker)
            out["tracker_calls"] = self.tracker.calls
        if self.cap:
            assert self.cap.reserved == 0 and self.cap.spent > 0, (name, self.cap)
            out["budget_spent_usd"] = self.cap.spent
        return out


EMBER_VARIANTS = {  # case 1: ember's acall in each setting (folder name, settings)
    "ember, log off": ("nolog", {"log": False}),
    "ember, log on (default)": ("log", {}),
    "ember, log + track()": ("track", {"track": True}),
    "ember, log + budget() + track()": ("budget", {"track": True, "budget": True}),
}


# --------------------------------------------------------------------------- measurements

async def seq_round(call: Call, n: int, times: list[int]) -> None:
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        await call()
        times.append(clock() - t0)


async def median_call(run: Callable[[], Awaitable[Any]], calls: int) -> float:
    """Median µs of `calls` sequential awaits of `run()` (cache.py and shared.py use it)."""
    times = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        await run()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e3


def seq_round_sync(call: Callable[[], str], n: int, times: list[int]) -> None:
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        call()
        times.append(clock() - t0)


async def concurrent(call: Call, n: int, workers: int,
                     after: Callable[[], object] = lambda: None) -> tuple[float, float]:
    """n calls by `workers` worker tasks; (wall seconds, client CPU seconds). `after` runs
    once the calls are done: outside the wall time, inside the CPU time."""
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    wall = time.perf_counter() - t0
    after()
    return wall, time.process_time() - cpu0


def through_parallel(async_def: bool) -> Runner:
    """n calls through ember's aparallel at concurrency `workers`, as its user writes them
    (its track() scope and its progress bar, here off), with an `async def` or with a
    lambda that returns the coroutine (which aparallel calls on a worker thread); the same
    figures as concurrent()."""

    async def run(call: Call, n: int, workers: int,
                  after: Callable[[], object] = lambda: None) -> tuple[float, float]:
        from ember import aparallel

        async def one(i: int) -> str:
            return await call()

        fn = one if async_def else (lambda i: call())
        cpu0, t0 = time.process_time(), time.perf_counter()
        answers = await aparallel(fn, range(n), concurrency=workers, progress=False)
        wall = time.perf_counter() - t0
        after()
        assert len(answers) == n and answers[-1] == EXPECTED, (len(answers), answers[-1:])
        return wall, time.process_time() - cpu0

    return run


Maker = Callable[[str], Awaitable[tuple[Call, Callable[[], Awaitable[None]]]]]
Runner = Callable[[Call, int, int, Callable[[], object]], Awaitable[tuple[float, float]]]
CONCURRENT_CLIENTS: dict[str, tuple[Maker, Runner, str | None]] = {
    # case 2: (client, how its calls are run, ember's log folder; None: not ember)
    "ember, worker tasks": (make_ember, concurrent, "concurrent"),
    "ember, aparallel(async def)": (make_ember, through_parallel(True), "concurrent-async-def"),
    "ember, aparallel(lambda)": (make_ember, through_parallel(False), "concurrent-parallel"),
    "bare aiohttp": (make_bare, concurrent, None),
    "openai SDK": (make_openai, concurrent, None),
}


def sequential(server: FakeServer, n: int, warmup: int, rounds: int,
               home: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """Every client in interleaved rounds of n/rounds calls, so drift hits all alike.
    ember's acall runs once per setting of EMBER_VARIANTS, each with its own log folder.
    Returns the figures per client, and the checks of each ember setting."""
    url = server.base_url(0.0)
    loop = asyncio.new_event_loop()
    ember_call, _ = loop.run_until_complete(make_ember(url))
    settings: dict[str, Setting] = {
        name: Setting(home / folder, **kw) for name, (folder, kw) in EMBER_VARIANTS.items()}
    settings["ember sync twin"] = Setting(home / "sync")  # log on, the default
    clients: dict[str, Call] = dict.fromkeys(EMBER_VARIANTS, ember_call)
    others = {name: loop.run_until_complete(make(url))
              for name, make in ASYNC_CLIENTS.items() if name != "ember"}
    clients |= {name: call for name, (call, _) in others.items()}
    sync_call = make_ember_sync(url)

    def run(name: str, count: int, times: list[int]) -> None:
        scope = settings[name].active(count) if name in settings else contextlib.nullcontext()
        with scope:
            if name == "ember sync twin":
                seq_round_sync(sync_call, count, times)
            else:
                loop.run_until_complete(seq_round(clients[name], count, times))

    names = [*clients, "ember sync twin"]
    for name in names:  # check the answer, then warm up
        answer: list[str] = []
        with settings[name].active(1) if name in settings else contextlib.nullcontext():
            answer.append(sync_call() if name == "ember sync twin"
                          else loop.run_until_complete(clients[name]()))
        assert answer[0] == EXPECTED, (name, answer)
        run(name, warmup, [])

    times: dict[str, list[int]] = {name: [] for name in names}
    cpu = dict.fromkeys(names, 0.0)
    server_cpu = dict.fromkeys(names, 0.0)
    per_round = n // rounds
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
        for name in order:
            c0, s0 = time.process_time(), server.cpu()
            run(name, per_round, times[name])  # CPU includes the wait for the log's backlog
            cpu[name] += time.process_time() - c0
            server_cpu[name] += server.cpu() - s0
    for _, close in others.values():
        loop.run_until_complete(close())
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()

    out = {}
    for name in names:
        ts = times[name]
        out[name] = {
            "median_us": statistics.median(ts) / 1000,
            "mean_us": statistics.fmean(ts) / 1000,
            "p99_us": sorted(ts)[int(len(ts) * 0.99)] / 1000,
            "calls_s": len(ts) / (sum(ts) / 1e9),
            "cpu_us": cpu[name] / len(ts) * 1e6,
            "server_cpu_us": server_cpu[name] / len(ts) * 1e6,
        }
    return out, {name: setting.check(name) for name, setting in settings.items()}


def concurrency(server: FakeServer, latency_ms: float, n: int, workers: int,
                reps: int, home: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """Each client on a fresh loop; ember with its usage log on (the default), each of its
    rows in its own folder. After each repetition ember's log backlog is flushed: outside
    the wall time, inside the CPU time. Returns the figures per client, and the check of
    each ember row's log."""
    from ember import _log

    url = server.base_url(latency_ms)
    ideal = n / workers * latency_ms / 1000
    settings = {name: Setting(home / folder)
                for name, (_, _, folder) in CONCURRENT_CLIENTS.items() if folder}
    out = {}
    for name, (make, runner, _) in CONCURRENT_CLIENTS.items():
        setting = settings.get(name)
        with setting.active(workers + n * reps) if setting else contextlib.nullcontext():
            loop = asyncio.new_event_loop()  # a fresh loop and client, as a program would
            call, close = loop.run_until_complete(make(url))
            loop.run_until_complete(runner(call, workers, workers, lambda: None))  # the pool
            _log.flush()
            s0 = server.cpu()
            flushes: list[float] = []

            def flush(flushes: list[float] = flushes) -> None:
                t0 = time.perf_counter()
                _log.flush()
                flushes.append(time.perf_counter() - t0)

            runs = [loop.run_until_complete(runner(call, n, workers, flush))
                    for _ in range(reps)]
            server_cpu = (server.cpu() - s0) / (n * reps)
            loop.run_until_complete(close())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        out[name] = {"wall_s": wall, "best_s": min(w for w, _ in runs), "calls_s": n / wall,
                     "vs_ideal": wall / ideal, "cpu_us": cpu / n * 1e6,
                     "server_cpu_us": server_cpu * 1e6,
                     "flush_ms": statistics.median(flushes) * 1000}
    return out, {name: setting.check(f"{name}, case 2") for name, setting in settings.items()}


def import_times(runs: int) -> dict[str, dict]:
    """Median of `python -c "import X"` minus `python -c "pass"`, and -X importtime's own
    cumulative figure for X, each in a fresh interpreter."""
    def wall(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - t0

    def self_reported(module: str) -> float:
        err = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                             check=True, capture_output=True, text=True).stderr
        for line in err.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) == 3 and parts[2] == module:
                return int(parts[1]) / 1e6
        raise RuntimeError(f"no importtime line for {module}")

    modules = ["ember", "openai", "aiohttp"]
    base: list[float] = []
    walls: dict[str, list[float]] = {m: [] for m in modules}
    selfs: dict[str, list[float]] = {m: [] for m in modules}
    for _ in range(runs):  # interleaved, so background noise hits all alike
        base.append(wall("pass"))
        for m in modules:
            walls[m].append(wall(f"import {m}"))
            selfs[m].append(self_reported(m))
    b = statistics.median(base)
    return {m: {"wall_ms": (statistics.median(walls[m]) - b) * 1000,
                "importtime_ms": statistics.median(selfs[m]) * 1000} for m in modules} | {
        "(bare interpreter)": {"wall_ms": b * 1000, "importtime_ms": float("nan")}}


def profile_ember(server: FakeServer, n: int, variant: str, home: Path) -> str:
    """cProfile of n sequential ember calls in one setting of EMBER_VARIANTS (after a
    warm-up); the top functions by own time. The log writer's thread is not profiled."""
    url = server.base_url(0.0)
    loop = asyncio.new_event_loop()
    call, _ = loop.run_until_complete(make_ember(url))
    folder, kw = EMBER_VARIANTS[variant]
    setting = Setting(home / f"profile-{folder}", **kw)
    with setting.active(200):
        loop.run_until_complete(seq_round(call, 200, []))
    prof = cProfile.Profile()
    with setting.active(n):
        prof.enable()
        loop.run_until_complete(seq_round(call, n, []))
        prof.disable()
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
    s = io.StringIO()
    stats = pstats.Stats(prof, stream=s)
    stats.sort_stats("tottime").print_stats(25)
    s.write("\n---- ember's own functions, by cumulative time ----\n")
    stats.sort_stats("cumulative").print_stats(r"ember", 20)
    return s.getvalue()


# --------------------------------------------------------------------------- report

def versions() -> str:
    def v(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "-"

    pkgs = ["ember", "aiohttp", "openai", "httpx2", "httpx", "httpcore2", "pydantic", "jiter"]
    return ", ".join(f"{p} {v(p)}" for p in pkgs if v(p) != "-")


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    def line(cells: list[str]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w)
                  for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2))
                         for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (~20 s)")
    parser.add_argument("--server", choices=["raw", "aiohttp"], default="raw",
                        help="fake server implementation (default raw asyncio.Protocol)")
    parser.add_argument("--calls", type=int, help="sequential calls per client (default 2000)")
    parser.add_argument("--concurrent-calls", type=int, help="calls in case 2 (default 5000)")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    folders = {folder: name for name, (folder, _) in EMBER_VARIANTS.items()}
    parser.add_argument("--profile", nargs="?", const="log", choices=list(folders),
                        help="also cProfile ember's sequential calls in one setting: "
                             "nolog, log (the default), track or budget")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--rounds", type=int, help="interleaved rounds of the sequential calls "
                        "(default 20: 100 calls per client a round)")
    args = parser.parse_args()
    n_seq = args.calls or (500 if args.quick else 2000)
    n_conc = args.concurrent_calls or (2000 if args.quick else 5000)
    reps = 1 if args.quick else 3
    rounds = args.rounds or (2 if args.quick else 20)  # short rounds: drift hits all alike
    import_runs = 3 if args.quick else 7

    # ember's usage log goes to a folder of our own, never to the user's ~/.ember; the
    # default settings otherwise (prompts are not logged unless EMBER_LOG_PROMPTS=1)
    home = Path(tempfile.mkdtemp(prefix="ember-bench-"))
    os.environ["EMBER_HOME"] = str(home)
    for var in ("EMBER_LOG", "EMBER_LOG_PROMPTS"):
        os.environ.pop(var, None)
    try:
        run_all(args, n_seq, n_conc, reps, rounds, import_runs, home, folders)
    finally:
        with contextlib.suppress(ImportError):
            from ember import _log
            _log.flush()  # nothing may be written into the folder once it is gone
        shutil.rmtree(home, ignore_errors=True)


def run_all(args: argparse.Namespace, n_seq: int, n_conc: int, reps: int, rounds: int,
            import_runs: int, home: Path, folders: dict[str, str]) -> None:
    print(f"python {platform.python_version()} on {platform.machine()}, "
          f"{os.cpu_count()} cores; {versions()}; fake server: {args.server}; "
          f"EMBER_HOME={home} (temporary)", flush=True)
    results: dict[str, object] = {}
    t_start = time.perf_counter()
    with FakeServer(args.server, [0.0, args.latency_ms], lifetime=900) as server:
        print(f"\n1. sequential, 0 ms server latency, {n_seq} calls per client "
              f"({rounds} interleaved rounds, after a warm-up; max_tokens={MAX_TOKENS})",
              flush=True)
        seq, checks = sequential(server, n_seq, warmup=200, rounds=rounds, home=home)
        bare = seq["bare aiohttp"]
        print(table(
            ["client", "median µs", "mean µs", "p99 µs", "calls/s", "CPU µs/call",
             "server CPU µs/call", "vs bare (median)", "vs bare (mean)"],
            [[name, f"{r['median_us']:.0f}", f"{r['mean_us']:.0f}", f"{r['p99_us']:.0f}",
              f"{r['calls_s']:.0f}", f"{r['cpu_us']:.0f}", f"{r['server_cpu_us']:.0f}",
              f"{r['median_us'] / bare['median_us']:.2f}x",
              f"{r['mean_us'] / bare['mean_us']:.2f}x"] for name, r in seq.items()]))
        print("\nusage log rows at the end (one per call made with the log on; the longest "
              "wait for the log's backlog at the end of a round):")
        for name, c in checks.items():
            extra = "".join(f", {k} {v:.6g}" if isinstance(v, float) else f", {k} {v}"
                            for k, v in c.items() if k in ("tracker_calls", "budget_spent_usd"))
            print(f"  {name}: {c['calls']} calls, {c['log_rows']} rows, "
                  f"flush ≤ {c['flush_ms_max']:.1f} ms{extra}")
        results["sequential"] = seq
        results["sequential_log"] = checks

        ideal = n_conc / args.concurrency * args.latency_ms / 1000
        print(f"\n2. {n_conc} calls, {args.concurrency} concurrent, {args.latency_ms:g} ms "
              f"server latency (ideal wall {ideal:.2f} s; median of {reps}, after a warm-up; "
              "ember with its usage log on)", flush=True)
        conc, conc_log = concurrency(server, args.latency_ms, n_conc, args.concurrency, reps,
                                     home)
        print(table(
            ["client", "wall s", "best s", "calls/s", "wall / ideal", "CPU µs/call",
             "server CPU µs/call", "vs bare (wall)"],
            [[name, f"{r['wall_s']:.3f}", f"{r['best_s']:.3f}", f"{r['calls_s']:.0f}",
              f"{r['vs_ideal']:.2f}x", f"{r['cpu_us']:.0f}", f"{r['server_cpu_us']:.0f}",
              f"{r['wall_s'] / conc['bare aiohttp']['wall_s']:.2f}x"]
             for name, r in conc.items()]))
        print("\nember's usage log (one row per call; the backlog left after each repetition "
              "took this long to write: median, in the CPU column, not in the wall time):")
        for name, c in conc_log.items():
            print(f"  {name}: {c['log_rows']} rows for {c['calls']} calls, "
                  f"flush {conc[name]['flush_ms']:.1f} ms")
        results["concurrent"] = conc
        results["concurrent_log"] = conc_log

        if args.profile:
            variant = folders[args.profile]
            print(f"\nprofile: cProfile of {variant}, sequential (cProfile inflates every call)")
            print(profile_ember(server, n_seq, variant, home))

    print(f"\n3. import time, fresh interpreter, median of {import_runs} "
          "(wall = `python -c 'import X'` minus `python -c pass`)", flush=True)
    imp = import_times(import_runs)
    print(table(["module", "wall ms", "-X importtime ms"],
                [[m, f"{r['wall_ms']:.1f}", "" if r["importtime_ms"] != r["importtime_ms"]
                  else f"{r['importtime_ms']:.1f}"] for m, r in imp.items()]))
    results["imports"] = imp

    b = seq["bare aiohttp"]
    print("\nember / bare aiohttp per call (goal: <= 1.25x):")
    for name in [*EMBER_VARIANTS, "ember sync twin"]:
        e = seq[name]
        verdict = "meets" if e["median_us"] <= 1.25 * b["median_us"] else "misses"
        print(f"  {name}: {e['median_us'] / b['median_us']:.2f}x median, "
              f"{e['mean_us'] / b['mean_us']:.2f}x mean "
              f"({e['median_us'] - b['median_us']:+.0f} µs median) -> {verdict} the goal")
    print(f"total run time {time.perf_counter() - t_start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    gc.collect()
    main()
