"""Event-time aggregation: dedupe, 1-minute tumbling windows, watermark, lateness.

The local twin of the Managed Flink job, and the window rules that job runs.
Events are processed one at a time, in arrival order: the output depends only
on that order, never on how events are batched into log records (or Kinesis
reads). A batch is processed vectorised, with exactly the result of feeding its
events one by one, so the local engine and the Flink job (which sees one event
at a time) give the same windows, revisions and dead letters on the same
events; and replaying from a checkpoint gives the same output, which, plus an
atomic checkpoint, makes the pipeline exactly-once (see
:mod:`helpers.ingestion.checkpoint`).

Rules (all in event time, ``t`` = a transaction's first-seen ``time``):

- watermark ``W`` = max event time seen so far - ``out_of_orderness_s`` (60 s);
- the window ``[m, m+60)`` is emitted (revision 0) as soon as ``W >= m + 60``;
- an event arriving after that but while ``W < m + 60 + allowed_lateness_s``
  updates the window, which is emitted again at once as revision 1, 2, ...;
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

    def add(self, stats: list[int]) -> None:
        count, fee, size, low, high = self.stats
        self.stats = [count + stats[0], fee + stats[1], size + stats[2], min(low, stats[3]), max(high, stats[4])]


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


def dead_letter_rows(events: np.ndarray, watermarks: np.ndarray, reason: str) -> list[tuple]:
    """One row per event: (hash, time, fee, size, weight, the watermark when it arrived, reason)."""
    return [
        (h, int(t), int(f), int(s), int(w), int(wm), reason)
        for h, t, f, s, w, wm in zip(hash_hex(events), events["time"], events["fee"], events["size"],
                                     events["weight"], watermarks)
    ]


class Aggregator:
    def __init__(self, config: WindowConfig = WindowConfig(), state: AggregatorState | None = None,
                 dedupe: bool = True):
        """``dedupe=False`` where duplicates were already dropped upstream (the Flink job's SQL dedupe)."""
        self.config = config
        self.state = state or AggregatorState()
        self.dedupe = dedupe

    @property
    def watermark(self) -> int | None:
        t = self.state.max_event_time
        return None if t is None else t - self.config.out_of_orderness_s

    def process(self, events: np.ndarray) -> tuple[list[dict], list[tuple]]:
        """Process a batch of events in arrival order; returns (feature records emitted, dead-letter rows)."""
        self.state.counters.events_in += len(events)
        fresh = self._dedupe(events) if self.dedupe else events
        emitted, dead_letters = self._aggregate(fresh) if len(fresh) else ([], [])
        self._forget_expired_hashes()
        return emitted, dead_letters

    def _dedupe(self, events: np.ndarray) -> np.ndarray:
        """Drop duplicates within the batch and against remembered hashes; remember the new ones."""
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

    def _aggregate(self, events: np.ndarray) -> tuple[list[dict], list[tuple]]:
        """Window the events with the watermark each one saw on arrival, as if fed one at a time.

        On-time events join their window in one vectorised pass: they all arrive before it closes. What
        happens at a given event (a late event revising its window, windows the watermark closes) is rare,
        a few per minute, and walked in arrival order.
        """
        cfg = self.config
        previous_max = self.state.max_event_time
        running_max = np.maximum.accumulate(events["time"])
        if previous_max is not None:
            running_max = np.maximum(running_max, previous_max)
        watermark_after = running_max - cfg.out_of_orderness_s  # after event i
        no_watermark = np.iinfo(np.int64).min // 2
        watermark_before = np.r_[no_watermark if previous_max is None else previous_max - cfg.out_of_orderness_s,
                                 watermark_after[:-1]]  # when event i arrived
        minutes = events["time"] // cfg.window_s * cfg.window_s
        closed = minutes + cfg.window_s <= watermark_before
        dead = minutes + cfg.window_s + cfg.allowed_lateness_s <= watermark_before
        for minute, stats in zip(*_minute_stats(minutes[~closed], events[~closed])):
            window = self.state.windows.get(minute)
            if window is None:
                self.state.windows[minute] = Window(stats=stats)
            else:
                window.add(stats)

        late = np.flatnonzero(closed & ~dead)
        closings = [(int(np.searchsorted(watermark_after, minute + cfg.window_s)), minute)
                    for minute, window in self.state.windows.items() if window.revision < 0]
        moments = sorted([(int(i), 0, int(minutes[i])) for i in late] +  # the late event first, then what closes
                         [(i, 1, minute) for i, minute in closings if i < len(events)])
        emitted = []
        for i, kind, minute in moments:
            if kind == 0:
                emitted += self._add_late(events[i:i + 1], minute, int(watermark_after[i]))
            elif self.state.windows[minute].revision < 0:
                emitted.append(self._emit(minute, int(watermark_after[i])))

        self.state.max_event_time = int(running_max[-1])
        self._purge()
        self.state.counters.dead_lettered += int(dead.sum())
        dead_letters = dead_letter_rows(events[dead], watermark_before[dead], "beyond allowed lateness") \
            if dead.any() else []
        return emitted, dead_letters

    def _add_late(self, event: np.ndarray, minute: int, watermark: int) -> list[dict]:
        """A late event within the allowed lateness: its window, emitted already, is revised at once."""
        fee = int(event["fee"][0])
        stats = [1, fee, int(vsize(event)[0]), fee, fee]  # _STATS of one event
        window = self.state.windows.get(minute)
        if window is None:  # the first event of a minute that closed empty: revision 0
            self.state.windows[minute] = Window(stats=stats)
        else:
            window.add(stats)
            self.state.counters.late_accepted += 1
        return [self._emit(minute, watermark)]

    def _emit(self, minute: int, watermark: int) -> dict:
        window = self.state.windows[minute]
        window.revision += 1
        self.state.counters.windows_emitted += window.revision == 0
        self.state.counters.revisions_emitted += window.revision > 0
        return feature_record(minute, window, watermark)

    def _forget_expired_hashes(self) -> None:
        watermark = self.watermark
        if watermark is None or not len(self.state.seen_times):
            return
        keep = self.state.seen_times >= watermark - self.config.dedupe_ttl_s
        if not keep.all():
            self.state.seen_keys, self.state.seen_times = self.state.seen_keys[keep], self.state.seen_times[keep]

    def _purge(self) -> None:
        """Forget windows past their allowed lateness: any event for them now is dead-lettered."""
        horizon = self.watermark - self.config.window_s - self.config.allowed_lateness_s
        for minute in [m for m in self.state.windows if m <= horizon]:
            del self.state.windows[minute]


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
