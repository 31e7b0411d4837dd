"""Ingestion benchmarks: backfill throughput (log -> feature store) and window freshness."""
from __future__ import annotations

import tempfile
import threading
import time

from bench.common import Record, percentile
from helpers.core.times import minute_iso
from helpers.feature_store import open_tx_per_minute
from helpers.ingestion import ingest
from helpers.ingestion.eventlog import EventLog
from helpers.ingestion.sources.simulator import Simulator, SimulatorConfig
from helpers.ingestion.stream import StreamJob
from helpers.local.clock import SimClock
from helpers.local.config import Paths

WEEK_START = 1_798_761_600  # 2027-01-01T00:00Z: a fixed week, so every run streams the same transactions


def backfill_throughput(days: float = 7.0) -> Record:
    """Fill a log with a simulated week (untimed), then time the stream job draining it into the feature store."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = Paths.at(tmp)
        until = WEEK_START + days * 86400
        clock = SimClock.starting_now(sim_now=until + 86400)  # all of it is history
        source = Simulator(SimulatorConfig(), start=WEEK_START, clock=clock, until=until)
        log = EventLog(paths.event_log)
        ingest.append_all(source, log, threading.Event())
        log.close()

        started = time.perf_counter()
        job = StreamJob(paths)
        while job.step():
            pass
        job.close()
        seconds = time.perf_counter() - started
        counters = job.aggregator.state.counters
        unique = counters.events_in - counters.duplicates_dropped
    return Record("ingest.backfill_throughput", unique / seconds, "tx/s", ">= 500000", {
        "unique_transactions": unique, "events_with_duplicates": counters.events_in, "seconds": seconds,
        "minutes_written": counters.windows_emitted, "events_per_s": counters.events_in / seconds,
    })


def freshness(seconds: float = 30.0, speed: float = 600.0) -> list[Record]:
    """Seconds from a window closing under the watermark until ``get_record`` returns it.

    A window closes when the log record that moves the watermark past its end is
    appended; a reader polling the online store every 2 ms notes when it appears.
    The service runs as a real background process.
    """
    with tempfile.TemporaryDirectory() as tmp:
        ingest.start(tmp, backfill_days=0.05, speed=speed)
        ingest.wait_until_caught_up(tmp, progress=False)
        seen_at = _watch_online(Paths.at(tmp), seconds)
        ingest.stop(tmp)
        closed_at = _window_close_times(Paths.at(tmp))
    delays = [seen_at[m] - closed_at[m] for m in seen_at if m in closed_at]
    details = {"windows": len(delays), "p50_s": percentile(delays, 50), "max_s": max(delays), "speed": speed}
    return [Record("ingest.freshness_p50", percentile(delays, 50), "s", "<= 1.0", details),
            Record("ingest.freshness_p99", percentile(delays, 99), "s", "<= 1.0", details)]


def _watch_online(paths: Paths, seconds: float) -> dict[str, float]:
    store = open_tx_per_minute(paths.feature_store)
    newest = store.latest_online(1)[0]["tx_minute"]
    seen_at: dict[str, float] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        latest = store.latest_online(1)[0]
        if latest["tx_minute"] > newest:
            newest = latest["tx_minute"]
            seen_at[newest] = time.time()
        time.sleep(0.002)
    store.close()
    return seen_at


def _window_close_times(paths: Paths) -> dict[str, float]:
    """For each minute, the append time of the record whose events moved the watermark past its end."""
    log = EventLog(paths.event_log)
    closed_at, max_time, next_minute = {}, None, None
    for record in log.scan():
        if not len(record.events):
            continue
        max_time = int(record.events["time"].max()) if max_time is None else max(max_time, record.events["time"].max())
        watermark = max_time - 60
        next_minute = next_minute or (watermark // 60 * 60 - 60)
        while next_minute + 60 <= watermark:
            closed_at.setdefault(minute_iso(next_minute), record.appended_at)
            next_minute += 60
    log.close()
    return closed_at


def run() -> list[Record]:
    return [backfill_throughput(), *freshness()]
