"""The stream on this machine: the background ingestion service of :mod:`helpers.ingestion.ingest`."""
from __future__ import annotations

import pandas as pd

from helpers.ingestion import ingest
from helpers.ingestion.interface import ClockSpeed, DriftApplied, StreamStatus
from helpers.local.config import Paths


def stream_status(paths: Paths, current: dict) -> StreamStatus:
    """The service's status file, typed; ``where`` names its process and log."""
    where = f"pid {current['pid']}, logs in {paths.ingest_log}" if "pid" in current else f"logs in {paths.ingest_log}"
    return StreamStatus(state=current["state"], running=current["running"], where=where, source=current.get("source"),
                        log_events=current.get("log_events", 0), windows_emitted=current.get("windows_emitted", 0),
                        watermark=current.get("watermark"), detail=current)


class LocalStream:
    def __init__(self, paths: Paths):
        self.paths = paths

    def start(self, source: str = "simulator", **settings) -> StreamStatus:
        return stream_status(self.paths, ingest.start(self.paths.root, source=source, **settings))

    def ensure_running(self) -> StreamStatus:
        return stream_status(self.paths, ingest.ensure_running(self.paths.root))

    def wait_until_caught_up(self, timeout_s: float = 900) -> StreamStatus:
        return stream_status(self.paths, ingest.wait_until_caught_up(self.paths.root, timeout_s))

    def status(self) -> StreamStatus:
        return stream_status(self.paths, ingest.status(self.paths.root))

    def describe(self) -> pd.DataFrame:
        return ingest.describe(self.paths.root)

    def dead_letters(self, limit: int = 10) -> pd.DataFrame:
        return ingest.dead_letters(self.paths.root, limit)

    def set_speed(self, speed: float) -> ClockSpeed:
        return ClockSpeed(**ingest.set_speed(self.paths.root, speed))

    def inject_drift(self, fee_factor: float = 3.0, rate_factor: float = 1.0) -> DriftApplied:
        return DriftApplied(**ingest.inject_drift(self.paths.root, fee_factor=fee_factor, rate_factor=rate_factor))

    def stop(self) -> StreamStatus:
        return stream_status(self.paths, ingest.stop(self.paths.root))
