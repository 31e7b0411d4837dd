"""The ingestion service: source -> event log -> stream job -> feature store.

It runs in the background, outlives the notebook kernel that started it, logs
to the state directory, stops cleanly on SIGTERM and resumes without loss after
a crash. Control it from a notebook (:func:`start`, :func:`stop`,
:func:`status`) or a shell (``python -m helpers start|stop|status``).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from helpers.core.times import as_unix, first_now, minute_iso
from helpers.feature_store import open_tx_per_minute
from helpers.ingestion.eventlog import EventLog
from helpers.ingestion.stream import StreamJob
from helpers.local import daemon
from helpers.local.clock import SharedClock, SimClock, write_json_atomic
from helpers.local.clock import set_speed as set_clock_speed
from helpers.local.config import Paths

log = logging.getLogger("helpers.ingestion.ingest")

SOURCES = ("simulator", "blockchain", "replay")
STATUS_INTERVAL_S = 1.0
IDLE_WAIT_S = 0.05
SOURCE_RETRY_S = 5.0
COMPACT_INTERVAL_S = 60.0  # wall seconds between compactions of the offline store
CAUGHT_UP_LAG_S = 300  # simulated "now" minus watermark when the backlog counts as done


@dataclass
class IngestConfig:
    """What the service runs; saved in the state directory so a restart resumes the same stream."""

    source: str = "simulator"
    seed: int = 42
    backfill_days: float = 7.0  # simulator history before "now"
    speed: float = 60.0  # simulated seconds per wall second once live
    # simulator: the simulated "now" at the first start (default: $MLOPS_PINNED_NOW if set, else the wall clock)
    now: float | str | None = None
    start: float | None = None  # simulator start, unix s (default: now - backfill_days)
    until: float | None = None  # simulator end, unix s (default: run forever)
    url: str | None = None  # blockchain poller URL (default: the blockchain.com API)
    interval_s: float = 15.0  # blockchain poll interval
    record_to: str | None = None  # blockchain: record raw responses here for replay
    replay_file: str | None = None
    replay_speed: float | None = None  # None: as fast as possible
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source={self.source!r}: use one of {SOURCES}")
        if self.source == "replay" and not self.replay_file:
            raise ValueError("source='replay' needs replay_file: the path of a recording made with record_to")
        if self.backfill_days < 0 or self.speed <= 0:
            raise ValueError("backfill_days must be >= 0 and speed > 0")
        if self.now is not None:
            self.now = as_unix(self.now, "now")


def make_source(config: IngestConfig, paths: Paths):
    if config.source == "simulator":
        from helpers.ingestion.sources.simulator import Simulator, SimulatorConfig

        return Simulator(SimulatorConfig(seed=config.seed), start=config.start, clock=SharedClock(paths.clock),
                         until=config.until, drift_file=paths.drifts)
    if config.source == "blockchain":
        from helpers.ingestion.sources.blockchain import DEFAULT_URL, BlockchainPoller

        record_to = Path(config.record_to) if config.record_to else None
        return BlockchainPoller(url=config.url or DEFAULT_URL, interval_s=config.interval_s, record_to=record_to)
    from helpers.ingestion.sources.replay import ReplaySource

    return ReplaySource(Path(config.replay_file), speed=config.replay_speed)


def append_all(source, event_log: EventLog, stop: threading.Event, progress=None) -> None:
    """Append the source's batches to the log, resuming after the last batch it stored."""
    for batch in source.batches(stop, resume_from=event_log.last_source_pos(source.name)):
        event_log.append(batch, source.name)
        if progress is not None:
            progress.update(len(batch))


# ---------------------------------------------------------------- the service itself


class Service:
    def __init__(self, paths: Paths):
        self.paths = paths
        self.config = IngestConfig(**json.loads(paths.ingest_config.read_text()))
        self.stop = threading.Event()
        self.source = make_source(self.config, paths)
        self.source_done = False
        self.started_at = time.time()

    def produce(self) -> None:
        """Source -> log. A failing source is logged and restarted where it left off, never fatal."""
        event_log = EventLog(self.paths.event_log)
        try:
            while not self.stop.is_set():
                try:
                    append_all(self.source, event_log, self.stop)
                    self.source_done = not self.stop.is_set()
                    return
                except Exception:
                    log.exception("source %s failed; restarting it in %.0f s", self.source.name, SOURCE_RETRY_S)
                    self.stop.wait(SOURCE_RETRY_S)
        finally:
            event_log.close()

    def compact_regularly(self) -> None:
        """Merge the offline store's small files now and then, as the original's hourly Glue job did."""
        features = open_tx_per_minute(self.paths.feature_store)
        try:
            while not self.stop.wait(COMPACT_INTERVAL_S):
                try:
                    log.info("compaction: %s", features.compact())
                except Exception:
                    log.exception("compaction failed; the store is unchanged, retrying later")
        finally:
            features.close()

    def run(self) -> None:
        producer = threading.Thread(target=self.produce, name="producer", daemon=True)
        compactor = threading.Thread(target=self.compact_regularly, name="compactor", daemon=True)
        job = StreamJob(self.paths)
        producer.start()
        compactor.start()
        log.info("ingestion service started: pid %d, source %s", os.getpid(), self.config.source)
        next_status = 0.0
        try:
            while not self.stop.is_set():
                if job.step() == 0:
                    self.stop.wait(IDLE_WAIT_S)
                if time.monotonic() >= next_status:
                    self.write_status(job, "running")
                    next_status = time.monotonic() + STATUS_INTERVAL_S
        finally:
            producer.join(timeout=30)
            compactor.join(timeout=30)
            job.commit()
            self.write_status(job, "stopped")
            job.close()
            log.info("ingestion service stopped cleanly")

    def write_status(self, job: StreamJob, state: str) -> None:
        status = {
            "state": state,
            "pid": os.getpid(),
            "source": self.config.source,
            "source_done": self.source_done,
            "source_stats": getattr(self.source, "stats", {}),
            "started_at": self.started_at,
            "updated_at": time.time(),
            **job.status(),
        }
        totals = job.log.totals()
        status["log_events"], status["malformed"] = totals["events"], totals["malformed"]
        if self.config.source == "simulator":
            sim_now = SimClock.load(self.paths.clock).now()
            status["sim_now"], status["sim_now_unix"] = minute_iso(sim_now), sim_now
            if status["watermark_unix"] is not None:
                status["event_time_lag_s"] = sim_now - status["watermark_unix"]
        write_json_atomic(self.paths.ingest_status, status)


def serve(state_dir: str | Path | None = None) -> None:
    """Run the service in the foreground until SIGTERM or SIGINT (what ``start`` spawns)."""
    paths = Paths.at(state_dir)
    daemon.log_to(paths.ingest_log)
    with daemon.holding_pid_file(paths.pid_file("ingest"), "ingestion service"):
        service = Service(paths)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: service.stop.set())
        service.run()


# ---------------------------------------------------------------- control from a notebook or shell


def start(state_dir: str | Path | None = None, wait_s: float = 60, **settings) -> dict:
    """Start the background service (a no-op if it runs). ``settings`` are :class:`IngestConfig` fields.

    The first start of a state directory saves its settings; later starts resume
    that stream and ignore new settings (``python -m helpers reset`` starts over).
    """
    paths = Paths.at(state_dir)
    if daemon.running(paths.pid_file("ingest")):
        return status(paths.root)
    if paths.ingest_config.exists() and settings:
        log.warning("state %s exists: resuming its stream, ignoring %s", paths.root, sorted(settings))
    _save_new_config(paths, IngestConfig(**settings))

    def reporting_running(process) -> bool:  # its own status, not one a crashed predecessor left
        current = status(paths.root)
        return current.get("pid") == process.pid and current.get("state") == "running"

    daemon.start(paths.root, ["serve-ingest"], paths.root / "logs" / "ingest.out", reporting_running, wait_s,
                 "ingestion service")
    return status(paths.root)


def _save_new_config(paths: Paths, config: IngestConfig) -> None:
    """Save the stream's settings (and the simulator's clock) on a state directory's first start."""
    if paths.ingest_config.exists():
        return
    if config.source == "simulator":
        clock = SimClock.starting_now(sim_now=first_now(config.now), speed=config.speed)
        if config.start is None:
            config.start = (clock.anchor_sim - config.backfill_days * 86400) // 60 * 60
        clock.save(paths.clock)
    write_json_atomic(paths.ingest_config, asdict(config))


def stop(state_dir: str | Path | None = None, timeout_s: float = 30) -> dict:
    """SIGTERM the service and wait for it to finish its checkpoint; SIGKILL only past ``timeout_s``."""
    paths = Paths.at(state_dir)
    if daemon.terminate(paths.pid_file("ingest"), timeout_s):
        log.warning("the ingestion service ignored SIGTERM for %.0f s and was killed", timeout_s)
    return status(paths.root)


def status(state_dir: str | Path | None = None) -> dict:
    """The service's last reported status, with ``running`` checked against its process."""
    paths = Paths.at(state_dir)
    never = {"state": "never started"}
    current = json.loads(paths.ingest_status.read_text()) if paths.ingest_status.exists() else never
    running = daemon.running(paths.pid_file("ingest"))
    if not running and current.get("state") == "running":
        current["state"] = "crashed"  # it reported running but its process is gone
    current["running"] = running
    current["state_dir"] = str(paths.root)
    return current


def backfill(state_dir: str | Path | None = None, days: float = 7.0, seed: int = 42, progress: bool = True,
             start: float | None = None, now: float | str | None = None) -> dict:
    """Simulate history up to now into the feature store, in the foreground, then return.

    Facilitators run it before a workshop; a later :func:`start` goes on live
    from where it ended. Refused while the service runs (it does this itself).
    With ``now`` (a pinned simulated "now", unix s or ISO-8601 UTC) it simulates
    up to that instant; with ``start`` (unix s), exactly ``days`` from then: a
    fixed stretch of history, for benchmarks.
    """
    from tqdm.auto import tqdm

    paths = Paths.at(state_dir)
    if daemon.running(paths.pid_file("ingest")):
        raise RuntimeError("the ingestion service is running and backfills by itself; stop it first")
    _save_new_config(paths, IngestConfig(source="simulator", seed=seed, backfill_days=days, start=start, now=now))
    config = IngestConfig(**json.loads(paths.ingest_config.read_text()))
    if config.source != "simulator":
        raise ValueError(f"this state directory streams from {config.source!r}; backfill needs the simulator")
    source = make_source(config, paths)
    if start is not None:
        source.until = start + days * 86400
    else:
        source.until = SimClock.load(paths.clock).now() if now is None else as_unix(now, "now")
    event_log = EventLog(paths.event_log)
    with tqdm(desc="simulate into the log", unit=" tx", unit_scale=True, disable=not progress) as bar:
        append_all(source, event_log, threading.Event(), progress=bar)
    event_log.close()
    job = StreamJob(paths)
    with tqdm(desc="aggregate into the feature store", unit=" tx", unit_scale=True, disable=not progress) as bar:
        while processed := job.step():
            bar.update(processed)
    summary = job.status()
    job.close()
    return summary


def inject_drift(state_dir: str | Path | None = None, fee_factor: float = 3.0, rate_factor: float = 1.0,
                 start: float | None = None) -> dict:
    """Multiply the simulator's fees from ``start`` (default: simulated now) on, for the retraining demo."""
    from helpers.ingestion.sources.simulator import Drift
    from helpers.ingestion.sources.simulator import inject_drift as add_drift

    paths = Paths.at(state_dir)
    if not paths.clock.exists():
        raise RuntimeError("no simulator has run in this state directory; start one first")
    when = SimClock.load(paths.clock).now() if start is None else start
    drift = Drift(start=when, fee_factor=fee_factor, rate_factor=rate_factor)
    add_drift(paths.drifts, drift)
    return {"drift_from": minute_iso(when), "fee_factor": fee_factor, "rate_factor": rate_factor}


def set_speed(state_dir: str | Path | None = None, speed: float = 60.0) -> dict:
    """Run simulated time ``speed`` times faster than the wall clock from now on (the stream and the monitor
    follow at once): 60 shows an hour a minute, 600 an hour in six seconds."""
    paths = Paths.at(state_dir)
    if not paths.clock.exists():
        raise RuntimeError("no simulator has run in this state directory; start one first")
    clock = set_clock_speed(paths.clock, speed)
    return {"sim_now": minute_iso(clock.now()), "speed": clock.speed}


def wait_until_caught_up(state_dir: str | Path | None = None, timeout_s: float = 900, progress: bool = True) -> dict:
    """Block until the stream has worked through its backlog, showing progress.

    Simulator: the watermark is within a few minutes of simulated "now". Replay:
    the recording is consumed. Blockchain: the first minute has closed.
    """
    from tqdm.auto import tqdm

    paths = Paths.at(state_dir)
    config = IngestConfig(**json.loads(paths.ingest_config.read_text()))
    deadline = time.monotonic() + timeout_s
    with tqdm(total=100, desc="backlog", unit="%", disable=not progress) as bar:
        while True:
            current = status(paths.root)
            if not current["running"]:
                raise RuntimeError(f"the ingestion service is {current['state']}; see {paths.ingest_log}")
            done = _backlog_done_percent(config, current)
            bar.update(done - bar.n)
            if done >= 100:
                return current
            if time.monotonic() > deadline:
                raise TimeoutError(f"still {100 - done:.0f}% behind after {timeout_s} s; status: {current}")
            time.sleep(0.5)


def ensure_running(state_dir: str | Path | None = None, progress: bool = True, **settings) -> dict:
    """Make sure the stream runs and has worked through its backlog: what notebooks 02-05 start with.

    Starts it with ``settings`` if this state directory has none yet (the default: a
    7-day simulator backfill), resumes it if it was stopped, and waits until it caught up.
    """
    paths = Paths.at(state_dir)
    start(paths.root, **({} if paths.ingest_config.exists() else settings))
    return wait_until_caught_up(paths.root, progress=progress)


def _backlog_done_percent(config: IngestConfig, current: dict) -> float:
    drained = current.get("lag_records", 1) == 0
    if config.source == "simulator":
        sim_now, watermark = current.get("sim_now_unix"), current.get("watermark_unix")
        if sim_now is None or watermark is None:
            return 0.0
        if drained and sim_now - watermark <= CAUGHT_UP_LAG_S:
            return 100.0
        return min(99.0, max(0.0, 100 * (watermark - config.start) / max(sim_now - config.start, 1)))
    if config.source == "replay":
        return 100.0 if drained and current.get("source_done") else 0.0
    return 100.0 if current.get("windows_emitted", 0) > 0 else 0.0


# What each health figure means, for the notebook's status table.
STATUS_FIELDS = {
    "state": "running / stopped / crashed (its process is gone without a clean stop)",
    "source": "where transactions come from",
    "log_events": "events appended to the event log (duplicates included)",
    "events_in": "events the aggregator has read from the log",
    "duplicates_dropped": "events whose hash was already seen (overlapping polls)",
    "late_accepted": "events that arrived after their minute closed, within the allowed lateness (revised it)",
    "dead_lettered": "events later than the allowed lateness: kept in the dead-letter table, not counted",
    "windows_emitted": "minutes closed and written to the feature store",
    "revisions_emitted": "late revisions of already-written minutes",
    "last_window_closed": "the newest minute in the online store",
    "watermark": "event time up to which minutes are complete",
    "event_time_lag_s": "simulated now minus the watermark, seconds",
    "lag_records": "log records not yet processed by the aggregator",
    "malformed": "transactions the source rejected, by reason",
}


def dead_letters(state_dir: str | Path | None = None, limit: int = 10):
    """The newest events that came later than the allowed lateness: kept, not counted, with how late they were."""
    import pandas as pd

    from helpers.ingestion.checkpoint import Checkpoint

    paths = Paths.at(state_dir)
    if not paths.checkpoint.exists():
        return pd.DataFrame(columns=["hash", "event_time", "fee", "late_by_s", "reason"])
    checkpoint = Checkpoint(paths.checkpoint)
    rows = pd.DataFrame(checkpoint.dead_letters(limit),
                        columns=["id", "log_offset", "hash", "time", "fee", "size", "weight", "watermark", "reason"])
    checkpoint.close()
    rows["event_time"] = pd.to_datetime(rows["time"], unit="s", utc=True)
    rows["late_by_s"] = rows["watermark"] - rows["time"]  # behind the watermark when it arrived
    return rows[["hash", "event_time", "fee", "late_by_s", "reason"]]


def describe(state_dir: str | Path | None = None):
    """The service's health as a two-column table: value and meaning."""
    import pandas as pd

    current = status(state_dir)
    return pd.DataFrame(
        {"value": [current.get(name) for name in STATUS_FIELDS], "meaning": list(STATUS_FIELDS.values())},
        index=list(STATUS_FIELDS),
    )
