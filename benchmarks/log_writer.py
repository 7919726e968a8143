"""Why the usage log inserts 50 rows a statement: executemany against a busy interpreter.

    python benchmarks/log_writer.py      # about 10 seconds

While one thread keeps the interpreter busy (as an event loop with 1000 calls in flight
does), another writes batches of 500 usage-log rows to a WAL SQLite file, as ember's log
writer does: with `executemany` (one statement a row) or with one INSERT of up to ember's
CHUNK rows (500; fewer where SQLite takes fewer values a statement). sqlite3 lets go of the
GIL while each statement runs, and then waits to get it back from the busy thread, so the
cost follows the number of statements. Prints the writer's wall time per batch (median and
worst of 20), its CPU time per batch, and the busy thread's rate; three rounds, the two
ways taking turns.
"""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ember._log import CHUNK, COLUMNS, MIGRATIONS, ROW

BATCHES, SIZE = 20, 500


def row() -> tuple[Any, ...]:
    return (time.time(), "openai", "gpt-4o-mini", "one", 12, 9, 7.2e-06, 0.0512, False, 0, None,
            None, None, 0, 0)


def measure(write: Callable[[list[tuple[Any, ...]]], None]) -> tuple[list[float], float, float]:
    stop, spins = threading.Event(), [0]

    def busy() -> None:
        while not stop.is_set():
            for _ in range(1000):
                spins[0] += 1

    thread = threading.Thread(target=busy)
    thread.start()
    start, walls, cpu = time.perf_counter(), [], time.thread_time()
    for _ in range(BATCHES):
        rows = [row() for _ in range(SIZE)]
        begin = time.perf_counter()
        write(rows)
        walls.append(time.perf_counter() - begin)
        time.sleep(0.05)  # the writer's BATCH
    stop.set()
    thread.join()
    rate = spins[0] / (time.perf_counter() - start)
    return walls, (time.thread_time() - cpu) / BATCHES, rate


def main() -> None:
    path = Path(tempfile.mkdtemp()) / "usage.sqlite"
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    for _, sql in MIGRATIONS:
        for statement in sql.split(";"):
            db.execute(statement)

    def each_row(rows: list[tuple[Any, ...]]) -> None:
        db.execute("BEGIN")
        db.executemany(f"INSERT INTO calls VALUES {ROW}", rows)
        db.execute("COMMIT")

    def chunked(rows: list[tuple[Any, ...]]) -> None:
        db.execute("BEGIN")
        per = min(CHUNK, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // COLUMNS)
        for start in range(0, len(rows), per):
            chunk = rows[start:start + per]
            db.execute(f"INSERT INTO calls VALUES {', '.join([ROW] * len(chunk))}",
                       [value for one in chunk for value in one])
        db.execute("COMMIT")

    print(f"SQLite {sqlite3.sqlite_version}; batches of {SIZE} rows, a busy thread alongside\n")
    chunked([row() for _ in range(SIZE)])  # the file's first pages
    for _ in range(3):
        for name, write in [("executemany", each_row), ("500 rows a statement", chunked)]:
            walls, cpu, rate = measure(write)
            print(f"{name:22} writer per batch: wall median {statistics.median(walls) * 1000:6.1f}"
                  f" ms, max {max(walls) * 1000:6.1f} ms, CPU {cpu * 1000:5.1f} ms; "
                  f"busy thread {rate / 1e6:4.1f} M steps/s")


if __name__ == "__main__":
    main()
