"""ember's home folder and its SQLite files: readable by the owner only, WAL mode (several
processes at once), and a schema that changes only by append-only named migrations."""


import contextlib
import os
import sqlite3
import time
from pathlib import Path

__all__ = ["connect", "home"]


def home(folder: str = "") -> Path:
    """`folder`, else $EMBER_HOME, else ~/.ember: created owner-only on first use."""
    path = Path(folder or os.environ.get("EMBER_HOME") or Path.home() / ".ember")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def connect(path: Path | str, migrations: list[tuple[str, str]]) -> sqlite3.Connection:
    """Open (or create) a database file and apply the migrations it has not seen yet."""
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))  # owner-only before SQLite opens it
    os.chmod(path, 0o600)
    db = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
    for _ in range(100):  # WAL: several processes at once; the -wal and -shm files take its mode
        with contextlib.suppress(sqlite3.OperationalError):  # locked while another process
            if db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal":  # creates it, and
                break  # SQLite does not wait here by itself
        time.sleep(0.05)
    db.execute("PRAGMA synchronous=NORMAL")  # a killed process loses no committed row
    db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied REAL)")
    done = {name for (name,) in db.execute("SELECT name FROM migrations")}
    for migration, sql in [(name, sql) for name, sql in migrations if name not in done]:
        db.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then skip
        with db:  # commits; on any exception (or a failed commit), rolls back and re-raises
            if not db.execute("SELECT 1 FROM migrations WHERE name = ?", (migration,)).fetchone():
                for statement in sql.split(";"):
                    db.execute(statement)
                db.execute("INSERT INTO migrations VALUES (?, julianday('now'))", (migration,))
    return db
