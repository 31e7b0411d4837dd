"""The stream job: event log -> aggregator -> checkpoint -> feature store.

The local twin of the Managed Flink application. :meth:`StreamJob.step` reads
new log records, aggregates them, commits a checkpoint (offset + state + outbox
+ dead letters in one transaction) and publishes the outbox to the feature
store. See :mod:`helpers.ingestion.checkpoint` for why that is exactly-once.
"""
from __future__ import annotations

import time

from helpers.core.aggregator import Aggregator, WindowConfig
from helpers.core.times import minute_iso
from helpers.feature_store import open_tx_per_minute
from helpers.ingestion.checkpoint import Checkpoint
from helpers.ingestion.eventlog import EventLog
from helpers.local.config import Paths

COMMIT_INTERVAL_S = 1.0  # commit at least this often when nothing is emitted


class StreamJob:
    def __init__(self, paths: Paths, config: WindowConfig = WindowConfig()):
        self.log = EventLog(paths.event_log)
        self.checkpoint = Checkpoint(paths.checkpoint)
        self.features = open_tx_per_minute(paths.feature_store)
        self.offset, state = self.checkpoint.load()
        self.aggregator = Aggregator(config, state)
        self.committed_offset = self.offset
        self.last_commit = time.monotonic()
        self.publish()  # an outbox a crash left behind goes out first, before anything new

    def close(self) -> None:
        self.commit()
        for part in (self.log, self.checkpoint, self.features):
            part.close()

    def step(self, max_events: int = 250_000) -> int:
        """Process what the log has after our offset; returns the number of events processed."""
        records = self.log.read(self.offset, max_events)
        emitted, dead_letters = [], []
        for record in records:
            new, dead = self.aggregator.process(record.events)
            emitted += new
            dead_letters += [(record.offset, *row) for row in dead]
        if records:
            self.offset = records[-1].offset
        if emitted or dead_letters or time.monotonic() - self.last_commit >= COMMIT_INTERVAL_S:
            self.commit(emitted, dead_letters)
        return sum(len(r.events) for r in records)

    def commit(self, emitted: list[dict] = (), dead_letters: list[tuple] = ()) -> None:
        if self.offset != self.committed_offset or emitted or dead_letters:
            self.checkpoint.commit(self.offset, self.aggregator.state, list(emitted), list(dead_letters))
            self.committed_offset = self.offset
        self.last_commit = time.monotonic()
        self.publish()

    def publish(self) -> None:
        """Write the outbox to the feature store, then acknowledge it (idempotent on retry)."""
        seqs, records = self.checkpoint.pending()
        if not seqs:
            return
        self.features.put_records(records, batch_id=f"{seqs[0]:012d}-{seqs[-1]:012d}")
        self.checkpoint.acknowledge(seqs[-1])

    def status(self) -> dict:
        watermark = self.aggregator.watermark
        log_end = self.log.last_offset()
        latest = self.features.latest_online(1)
        return {
            **vars(self.aggregator.state.counters),
            "watermark": minute_iso(watermark) if watermark is not None else None,
            "watermark_unix": watermark,
            "last_window_closed": latest[0]["tx_minute"] if latest else None,
            "log_offset": log_end,
            "committed_offset": self.committed_offset,
            "lag_records": log_end - self.offset,
            "windows_open": len(self.aggregator.state.windows),
            "hashes_remembered": len(self.aggregator.state.seen_keys),
        }
