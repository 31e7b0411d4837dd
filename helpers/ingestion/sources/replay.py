"""Plays back API responses recorded by ``BlockchainPoller(record_to=...)``, offline.

Each line ``{"fetched_at": <unix float>, "body": <response text>}`` becomes one
batch, parsed exactly as the live poller parsed it (same ``parse_response``,
same ``now``), so a replay reproduces the live events and malformed counts.
"""
from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Iterator

from helpers.core.events import EventBatch, empty_events
from helpers.ingestion.sources.blockchain import parse_response

CORRUPT_LINE = "recording: corrupt line"


def _parse_line(line: bytes) -> tuple[float, str] | None:
    """(fetched_at, body) of one recorded line, or None if it is corrupt (e.g. cut short by a crash)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # ValueError covers bad JSON and bad UTF-8
        return None
    if not isinstance(record, dict):
        return None
    fetched_at, body = record.get("fetched_at"), record.get("body")
    if isinstance(fetched_at, bool) or not isinstance(fetched_at, (int, float)) or not isinstance(body, str):
        return None
    return float(fetched_at), body


class ReplaySource:
    """One batch per recorded line; ``source_pos`` is the line number, so a replay can resume."""

    name = "replay"

    def __init__(self, path: Path | str, speed: float | None = None) -> None:
        if speed is not None and speed <= 0:
            raise ValueError(f"speed={speed}: pass a positive factor (2.0 = twice as fast) or None for no waiting")
        self.path = Path(path)
        self.speed = speed

    def batches(self, stop: threading.Event, resume_from: str | None = None) -> Iterator[EventBatch]:
        """Yield the recording's batches after line ``resume_from`` until it ends or ``stop`` is set."""
        skip_through = int(resume_from) if resume_from is not None else 0
        last_fetched_at: float | None = None
        with self.path.open("rb") as lines:  # bytes: a damaged byte makes a corrupt line, not an exception
            for line_number, line in enumerate(lines, start=1):
                if stop.is_set():
                    return
                if line_number <= skip_through:
                    continue
                record = _parse_line(line)
                if record is None:
                    # No clock of its own: it takes the last good line's, or 0.0 before any.
                    yield EventBatch(
                        empty_events(), last_fetched_at or 0.0, Counter({CORRUPT_LINE: 1}), str(line_number)
                    )
                    continue
                fetched_at, body = record
                if self._wait(stop, last_fetched_at, fetched_at):
                    return
                last_fetched_at = fetched_at
                events, malformed = parse_response(body, now=fetched_at)
                yield EventBatch(events, fetched_at, malformed, str(line_number))

    def _wait(self, stop: threading.Event, previous: float | None, current: float) -> bool:
        """Wait the recorded gap scaled by ``speed``; True if ``stop`` was set meanwhile."""
        if self.speed is None or previous is None:
            return False
        return stop.wait(max(0.0, current - previous) / self.speed)
