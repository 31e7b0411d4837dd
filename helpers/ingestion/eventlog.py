"""A durable, append-only local event log: the local twin of a Kinesis Data Stream.

Records live in one SQLite database in WAL mode, so a producer and several
consumers in different processes can use it at once: readers never block the
writer and always see a committed prefix. Offsets are SQLite rowids; SQLite has
one writer at a time, so offsets become visible strictly in order.

One record holds a whole batch of events (a poll, or a chunk of a backfill) as
packed ``EVENT_DTYPE`` rows, much as the Kinesis Producer Library aggregates
many user records into one Kinesis record. Consumers track their own offset
(the aggregator commits it inside its checkpoint).
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from helpers.core.events import EVENT_DTYPE, EventBatch
from helpers.local.sqlite import SQLiteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    offset      INTEGER PRIMARY KEY AUTOINCREMENT,
    appended_at REAL NOT NULL,     -- wall clock, unix seconds
    source      TEXT NOT NULL,
    fetched_at  REAL NOT NULL,     -- the source's clock, unix seconds
    n_events    INTEGER NOT NULL,
    malformed   TEXT NOT NULL,     -- JSON {reason: count}
    source_pos  TEXT,              -- where the source resumes after this record
    payload     BLOB NOT NULL      -- n_events packed EVENT_DTYPE rows
);
"""


@dataclass
class LogRecord:
    offset: int
    appended_at: float
    fetched_at: float
    events: np.ndarray


class EventLog(SQLiteFile):
    SCHEMA = _SCHEMA

    def append(self, batch: EventBatch, source: str) -> int:
        """Append one batch durably; returns its offset. Empty batches are kept for their counts."""
        events = np.ascontiguousarray(batch.events, dtype=EVENT_DTYPE)
        cur = self._conn.execute(
            "INSERT INTO records (appended_at, source, fetched_at, n_events, malformed, source_pos, payload)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (time.time(), source, batch.fetched_at, len(events), json.dumps(dict(batch.malformed)),
             batch.source_pos, events.tobytes()),
        )
        return cur.lastrowid

    def read(self, after: int, max_events: int = 250_000) -> list[LogRecord]:
        """Records with offset > ``after``, oldest first, about ``max_events`` events (at least one record)."""
        rows = self._conn.execute(
            "SELECT offset, appended_at, fetched_at, n_events, payload FROM records WHERE offset > ?"
            " ORDER BY offset LIMIT 512", (after,),
        )
        records, total = [], 0
        for offset, appended_at, fetched_at, n_events, payload in rows:
            if records and total + n_events > max_events:
                break
            records.append(LogRecord(offset, appended_at, fetched_at, np.frombuffer(payload, dtype=EVENT_DTYPE)))
            total += n_events
        return records

    def scan(self, after: int = 0):
        """Every record after ``after``, oldest first, read page by page (for audits and ground truth)."""
        while records := self.read(after):
            yield from records
            after = records[-1].offset

    def last_offset(self) -> int:
        return self._conn.execute("SELECT COALESCE(MAX(offset), 0) FROM records").fetchone()[0]

    def last_source_pos(self, source: str) -> str | None:
        """Where ``source`` should resume: the position saved with its last record."""
        row = self._conn.execute(
            "SELECT source_pos FROM records WHERE source = ? ORDER BY offset DESC LIMIT 1", (source,)
        ).fetchone()
        return row[0] if row else None

    def totals(self) -> dict:
        """Records, events and malformed transactions appended so far."""
        records, events = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(n_events), 0) FROM records"
        ).fetchone()
        malformed: Counter = Counter()
        for (text,) in self._conn.execute("SELECT malformed FROM records WHERE malformed != '{}'"):
            malformed.update(json.loads(text))
        return {"records": records, "events": events, "malformed": dict(malformed)}
