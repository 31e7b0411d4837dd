"""The aggregator's checkpoint: state, committed offset, outbox and dead letters.

Exactly-once works as a transactional outbox. One SQLite transaction stores
the consumer offset, the aggregator state, the records to publish (the outbox)
and the dead letters. Only then are the outbox records written to the feature
store, and only after that are they acknowledged. A crash anywhere leaves
either the previous checkpoint (the records are reprocessed, deterministically
giving the same output) or an outbox to publish again; feature-store writes are
idempotent (same file name, revision-guarded upsert), so nothing is lost and
nothing is counted twice.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict

import numpy as np

from helpers.core.aggregator import AggregatorState, Counters, Window
from helpers.core.events import HASH_KEY_DTYPE
from helpers.local.sqlite import SQLiteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    log_offset INTEGER NOT NULL,
    max_event_time INTEGER,
    windows TEXT NOT NULL,
    counters TEXT NOT NULL,
    seen_keys BLOB NOT NULL,
    seen_times BLOB NOT NULL,
    committed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    log_offset INTEGER NOT NULL,
    hash TEXT NOT NULL, time INTEGER NOT NULL, fee INTEGER NOT NULL,
    size INTEGER NOT NULL, weight INTEGER NOT NULL,
    watermark INTEGER NOT NULL, reason TEXT NOT NULL
);
"""


class Checkpoint(SQLiteFile):
    SCHEMA = _SCHEMA

    def load(self) -> tuple[int, AggregatorState]:
        """The committed offset and state (0 and a fresh state on first start)."""
        row = self._conn.execute(
            "SELECT log_offset, max_event_time, windows, counters, seen_keys, seen_times FROM checkpoint"
        ).fetchone()
        if row is None:
            return 0, AggregatorState()
        offset, max_time, windows, counters, keys, times = row
        if len(keys) != HASH_KEY_DTYPE.itemsize * len(times) // 8:
            raise RuntimeError(f"{self.path}: this checkpoint remembers hash prefixes (an older version, which could "
                               "drop distinct transactions as duplicates); start over with python -m helpers reset")
        state = AggregatorState(
            max_event_time=max_time,
            windows={m: Window(stats=s, revision=r) for m, s, r, *_ in json.loads(windows)},
            seen_keys=np.frombuffer(keys, dtype=HASH_KEY_DTYPE).copy(),
            seen_times=np.frombuffer(times, dtype="<i8").copy(),
            counters=Counters(**json.loads(counters)),
        )
        return offset, state

    def commit(self, offset: int, state: AggregatorState, records: list[dict], dead_letters: list[tuple]) -> None:
        """Atomically save the offset, the state, the records to publish and the dead letters.

        ``dead_letters`` rows are (log_offset, hash, time, fee, size, weight, watermark, reason).
        """
        windows = [[m, w.stats, w.revision] for m, w in state.windows.items()]
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                "INSERT OR REPLACE INTO checkpoint VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
                (offset, state.max_event_time, json.dumps(windows), json.dumps(asdict(state.counters)),
                 state.seen_keys.tobytes(), state.seen_times.tobytes(), time.time()),
            )
            self._conn.executemany("INSERT INTO outbox (record) VALUES (?)", [(json.dumps(r),) for r in records])
            self._conn.executemany(
                "INSERT INTO dead_letters (log_offset, hash, time, fee, size, weight, watermark, reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", dead_letters,
            )

    def pending(self) -> tuple[list[int], list[dict]]:
        """Outbox records not yet acknowledged: (sequence numbers, records)."""
        rows = self._conn.execute("SELECT seq, record FROM outbox ORDER BY seq").fetchall()
        return [seq for seq, _ in rows], [json.loads(record) for _, record in rows]

    def acknowledge(self, up_to_seq: int) -> None:
        self._conn.execute("DELETE FROM outbox WHERE seq <= ?", (up_to_seq,))

    def dead_letters(self, limit: int = -1) -> list[dict]:
        """The newest ``limit`` dead letters (all by default), newest first."""
        cur = self._conn.execute("SELECT * FROM dead_letters ORDER BY id DESC LIMIT ?", (limit,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur]
