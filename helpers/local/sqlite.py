"""SQLite files shared by several processes: WAL mode, waiting on locks instead of failing."""
from __future__ import annotations

import sqlite3
from pathlib import Path


def connect(path: Path) -> sqlite3.Connection:
    """A connection tuned for several processes: WAL (readers never block the writer), a 30 s lock wait."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes; fsync at checkpoints
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class SQLiteFile:
    """A database file with its schema (``SCHEMA``), created on first open."""

    SCHEMA = ""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._conn = connect(self.path)
        self._conn.executescript(self.SCHEMA)

    def close(self) -> None:
        self._conn.close()
