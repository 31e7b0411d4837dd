"""Event-time aggregation: dedupe, 1-minute tumbling windows, watermark, lateness.

The local twin of the Managed Flink job. Each log record is processed as one
unit: events are deduplicated by hash, added to their minute's window, then the
watermark advances and windows it has passed are emitted. Because processing
depends only on the sequence of records, replaying from a checkpoint gives
exactly the same output: that, plus an atomic checkpoint, is what makes the
pipeline exactly-once (see :mod:`helpers.ingestion.checkpoint`).

Rules (all in event time, ``t`` = a transaction's first-seen ``time``):

- watermark ``W`` = max event time seen - ``out_of_orderness_s`` (60 s);
- the window ``[m, m+60)`` is emitted (revision 0) once ``W >= m + 60``;
- an event arriving after that but while ``W < m + 60 + allowed_lateness_s``
  updates the window, which is emitted again as revision 1, 2, ...;
  the latest revision of a minute wins, online and offline;
- an event later than that is dead-lettered: kept, counted, never dropped silently;
- a hash is remembered until ``W`` passes its event time + ``dedupe_ttl_s`` (3 h,
  like the original DynamoDB TTL, but in event time so replays are deterministic);
- a minute with no events emits nothing: it is a gap, filled as NaN downstream.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from helpers.core.events import HASH_KEY_DTYPE, hash_hex, hash_keys, vsize
from helpers.core.times import minute_iso


@dataclass(frozen=True)
class WindowConfig:
    window_s: int = 60
    out_of_orderness_s: int = 60
    allowed_lateness_s: int = 300
    dedupe_ttl_s: int = 3 * 3600


# Per-window running statistics, in this order.
_STATS = ("tx_count", "total_fee", "total_vsize", "min_fee", "max_fee")


@dataclass
class Window:
    stats: list[int]  # values of _STATS
    revision: int = -1  # last emitted revision; -1 = not emitted yet
    dirty: bool = False  # changed since it was last emitted

    def add(self, stats: list[int]) -> None:
        count, fee, size, low, high = self.stats
        self.stats = [count + stats[0], fee + stats[1], size + stats[2], min(low, stats[3]), max(high, stats[4])]
        self.dirty = True


@dataclass
class Counters:
    events_in: int = 0
    duplicates_dropped: int = 0
    late_accepted: int = 0  # arrived after their window was emitted; caused a revision
    dead_lettered: int = 0
    windows_emitted: int = 0
    revisions_emitted: int = 0


@dataclass
class AggregatorState:
    """Everything a checkpoint must hold to resume exactly."""

    max_event_time: int | None = None
    windows: dict[int, Window] = field(default_factory=dict)
    seen_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=HASH_KEY_DTYPE))  # sorted
    seen_times: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="<i8"))
    counters: Counters = field(default_factory=Counters)


def feature_record(minute: int, window: Window, watermark: int) -> dict:
    """A feature-store record for one window; avg_fee is a float, never truncated.

    ``event_time`` is the watermark when this revision was emitted: the event
    time from which the stream knew it. It grows with each revision, so "the
    latest event_time wins" (SageMaker's online-store rule) picks the latest
    revision, and an as-of read by event time replays what was known when.
    """
    count, fee, size, low, high = window.stats
    return {
        "tx_minute": minute_iso(minute),
        "window_start": float(minute),
        "event_time": float(watermark),
        "revision": window.revision,
        "tx_count": count,
        "total_fee": fee,
        "avg_fee": fee / count,
        "total_vsize": size,
        "avg_fee_rate": fee / size,  # sat/vB
        "min_fee": low,
        "max_fee": high,
    }


def dead_letter_rows(events: np.ndarray, watermark: int, reason: str) -> list[tuple]:
    return [
        (h, int(t), int(f), int(s), int(w), watermark, reason)
        for h, t, f, s, w in zip(hash_hex(events), events["time"], events["fee"], events["size"], events["weight"])
    ]


class Aggregator:
    def __init__(self, config: WindowConfig = WindowConfig(), state: AggregatorState | None = None):
        self.config = config
        self.state = state or AggregatorState()

    @property
    def watermark(self) -> int | None:
        t = self.state.max_event_time
        return None if t is None else t - self.config.out_of_orderness_s

    def process(self, events: np.ndarray) -> tuple[list[dict], list[tuple]]:
        """Process one log record; returns (feature records emitted, dead-letter rows)."""
        self.state.counters.events_in += len(events)
        fresh = self._dedupe(events)
        dead_letters = self._add_to_windows(fresh)
        if len(events):
            latest = int(events["time"].max())
            current = self.state.max_event_time
            self.state.max_event_time = latest if current is None else max(current, latest)
        self._forget_expired_hashes()
        return self._emit_and_purge(), dead_letters

    def _dedupe(self, events: np.ndarray) -> np.ndarray:
        """Drop duplicates within the record and against remembered hashes; remember the new ones."""
        keys = hash_keys(events)
        unique_keys, first_index = np.unique(keys, return_index=True)
        seen = self.state.seen_keys
        pos = np.searchsorted(seen, unique_keys)
        known = (pos < len(seen)) & (seen[np.minimum(pos, len(seen) - 1)] == unique_keys) if len(seen) else \
            np.zeros(len(unique_keys), dtype=bool)
        new = ~known
        self.state.seen_keys = np.insert(seen, pos[new], unique_keys[new])
        self.state.seen_times = np.insert(self.state.seen_times, pos[new], events["time"][first_index[new]])
        self.state.counters.duplicates_dropped += len(events) - int(new.sum())
        return events[np.sort(first_index[new])]  # keep arrival order

    def _add_to_windows(self, events: np.ndarray) -> list[tuple]:
        cfg, watermark = self.config, self.watermark
        minutes = events["time"] // cfg.window_s * cfg.window_s
        too_late = (minutes + cfg.window_s + cfg.allowed_lateness_s <= watermark) if watermark is not None else \
            np.zeros(len(events), dtype=bool)
        dead = dead_letter_rows(events[too_late], watermark, "beyond allowed lateness") if too_late.any() else []
        self.state.counters.dead_lettered += len(dead)
        on_time = ~too_late
        for minute, stats in zip(*_minute_stats(minutes[on_time], events[on_time])):
            window = self.state.windows.get(minute)
            if window is None:
                self.state.windows[minute] = Window(stats=stats)
            else:
                if window.revision >= 0:
                    self.state.counters.late_accepted += stats[0]
                window.add(stats)
        return dead

    def _forget_expired_hashes(self) -> None:
        watermark = self.watermark
        if watermark is None or not len(self.state.seen_times):
            return
        keep = self.state.seen_times >= watermark - self.config.dedupe_ttl_s
        if not keep.all():
            self.state.seen_keys, self.state.seen_times = self.state.seen_keys[keep], self.state.seen_times[keep]

    def _emit_and_purge(self) -> list[dict]:
        cfg, watermark, counters = self.config, self.watermark, self.state.counters
        emitted = []
        for minute in sorted(self.state.windows):
            window = self.state.windows[minute]
            if minute + cfg.window_s > watermark:
                break  # windows are sorted: the rest are still open
            if window.revision < 0 or window.dirty:
                window.revision += 1
                window.dirty = False
                emitted.append(feature_record(minute, window, watermark))
                counters.windows_emitted += window.revision == 0
                counters.revisions_emitted += window.revision > 0
            if minute + cfg.window_s + cfg.allowed_lateness_s <= watermark:
                del self.state.windows[minute]
        return emitted


def _minute_stats(minutes: np.ndarray, events: np.ndarray) -> tuple[list[int], list[list[int]]]:
    """Exact integer statistics per minute, vectorised: sort once, reduce per run of equal minutes."""
    if not len(events):
        return [], []
    order = np.argsort(minutes, kind="stable")
    minutes, fees, sizes = minutes[order], events["fee"][order], vsize(events)[order]
    starts = np.flatnonzero(np.r_[True, minutes[1:] != minutes[:-1]])
    counts = np.diff(np.r_[starts, len(minutes)])
    columns = (counts, np.add.reduceat(fees, starts), np.add.reduceat(sizes, starts),
               np.minimum.reduceat(fees, starts), np.maximum.reduceat(fees, starts))
    return minutes[starts].tolist(), [list(row) for row in zip(*(c.tolist() for c in columns))]
