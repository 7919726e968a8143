"""The usage log: one row per call in usage.sqlite in the ember home folder.

On by default; `EMBER_LOG=0` turns it off. Prompts and answers are stored only with
`EMBER_LOG_PROMPTS=1`. A row also holds what a call went through: retries, 429s seen,
seconds waited on pacing, a stream's time to its first text, and for a cache hit the $
it saved. A background thread writes the rows in batches, so logging never slows or fails
a call. Rows that cannot be written (the file locked by another process, the folder
unwritable, no file descriptor left) are kept and tried again every RETRY seconds, with
one warning; they are lost only if the process dies, or past KEEP rows. The schema
changes only by appending to MIGRATIONS. Tokens and cost are NULL for a call whose usage
is unknown.
"""


import atexit
import contextlib
import json
import os
import queue
import threading
import time
import warnings
from typing import Any

from ._prices import cost
from ._types import Call, Usage

__all__ = ["LOG", "MIGRATIONS", "flush", "write"]

LOG = "usage.sqlite"
MIGRATIONS = [("001_calls", "CREATE TABLE calls (time REAL, provider TEXT, model TEXT, tag TEXT, "
                             "input_tokens INT, output_tokens INT, cost REAL, latency REAL, "
                             "cached INT, retries INT, error TEXT, prompt TEXT, response TEXT)"),
              ("002_calls_time_index", "CREATE INDEX calls_time ON calls (time)"),
              ("003_calls_cache_tokens", "ALTER TABLE calls ADD COLUMN cache_read_tokens INT; "
                                         "ALTER TABLE calls ADD COLUMN cache_write_tokens INT"),
              ("004_calls_dashboard", "ALTER TABLE calls ADD COLUMN rate_limited INT DEFAULT 0; "
               "ALTER TABLE calls ADD COLUMN waited REAL DEFAULT 0; "
               "ALTER TABLE calls ADD COLUMN first_token REAL; "
               "ALTER TABLE calls ADD COLUMN saved REAL DEFAULT 0")]
_rows: queue.SimpleQueue[tuple[str, tuple[Any, ...]] | threading.Event] = queue.SimpleQueue()
_writer: list[threading.Thread] = []
BATCH = 0.05  # seconds the writer lets rows gather before it writes them
RETRY = 1.0  # seconds before rows that could not be written are tried again
KEEP = 100_000  # unwritten rows kept at most (later ones are dropped): memory stays bounded
COLUMNS = 19
ROW = f"({', '.join('?' * COLUMNS)})"  # one row's values in an INSERT
CHUNK = 500  # rows an INSERT at most (fewer where SQLite takes fewer values a statement). sqlite3
# lets go of the GIL while a statement runs, then waits for it: executemany, a statement a row,
# made the writer wait for a busy event loop at every row (benchmarks/log_writer.py)
_start = threading.Lock()


def write(call: Call, error: BaseException | None, tag: str | None) -> None:
    """Queue the call's row (the home folder is the one in force when the call was made)."""
    if os.environ.get("EMBER_LOG") == "0":
        return
    req, r = call.request, call.response
    prompt = answer = None
    if os.environ.get("EMBER_LOG_PROMPTS") == "1":
        system = [{"role": "system", "content": req.system}] if req.system else []
        prompt, answer = json.dumps(system + req.messages), r and r.text
    u = r.usage if r else Usage()  # a failed call is not billed; None: unknown
    tokens = ((u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens)
              if u else (None,) * 4)  # by name: astuple deep-copies each number (5 µs a row)
    numbers = (r.cost, r.latency, r.cached) if r else (0.0, None, False)
    saved = (cost(r.provider, r.model, r.usage) or 0.0) if r and r.cached and r.usage else 0.0
    _rows.put((os.environ.get("EMBER_HOME", ""), (time.time(), req.provider, req.model, tag,
               *tokens[:2], *numbers, call.retries, error and type(error).__name__, prompt,
               answer, *tokens[2:], call.rate_limited, call.waited, call.first_token, saved)))
    with _start:  # the first row starts the writer
        if not _writer:
            _writer.append(threading.Thread(target=_write, name="ember-log", daemon=True))
            _writer[0].start()
            atexit.register(flush)


def _write() -> None:
    """Wait for a row, let more gather for BATCH seconds, then write them all: one wake-up
    and one transaction per batch, one INSERT per CHUNK rows, on a connection kept open while
    the folder stays."""
    warned, current, db = False, "", None
    unwritten: dict[str, list[tuple[Any, ...]]] = {}  # by folder
    while True:
        items: list[Any] = []
        with contextlib.suppress(queue.Empty):  # or, with rows unwritten, RETRY seconds pass
            items.append(_rows.get(timeout=RETRY if unwritten else None))
            time.sleep(BATCH)
            while True:
                items.append(_rows.get_nowait())
        for item in items:
            if not isinstance(item, threading.Event) and len(unwritten.get(item[0], [])) < KEEP:
                unwritten.setdefault(item[0], []).append(item[1])
        for folder, rows in list(unwritten.items()):
            try:  # whatever fails here, the thread lives on and the rows are kept
                import sqlite3  # on first use

                from ._sqlite import connect, home

                if db is None or current != folder:
                    if db is not None:
                        db.close()
                    current, db = folder, connect(home(folder) / LOG, MIGRATIONS)
                db.execute("BEGIN")
                per = min(CHUNK, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // COLUMNS)
                for chunk in (rows[start:start + per] for start in range(0, len(rows), per)):
                    db.execute(f"INSERT INTO calls VALUES {', '.join([ROW] * len(chunk))}",
                               [value for row in chunk for value in row])
                db.execute("COMMIT")
                del unwritten[folder]
            except Exception as problem:  # never fail a call for its log row
                db = None
                with contextlib.suppress(Exception):  # even under `-W error`
                    if not warned:
                        warnings.warn(f"ember: usage log not written ({problem}); its rows are "
                                      f"kept and tried again every {RETRY:g}s", stacklevel=1)
                warned = True
        for item in items:
            if isinstance(item, threading.Event):
                item.set()


def flush(timeout: float = 5.0) -> None:
    """Wait until every call so far is in the usage log (also run at exit)."""
    if _writer:
        done = threading.Event()
        _rows.put(done)
        done.wait(timeout)
