"""The alarm action: retrain on the latest data, one retrain at a time per project.

An alarm in ALARM asks for a retrain every period (as CloudWatch repeats Auto Scaling actions),
so a retrain whose model failed the quality gate (too little of the new regime in its data yet)
is tried again an hour later on more data. Each request is recorded, started or skipped:

- skipped while another retrain is in flight: a lock file held by the retrain's process (released
  by the kernel if that process dies) makes it one per project, however many alarms fire;
- skipped while a model version waits for a human's approval: retraining again would only pile up
  versions nobody decided on.

The retrain runs the model build pipeline in its own process (training must not stall the monitor).
Its model lands PendingManualApproval; with the monitor's ``auto_approve`` it is approved, deployed
to staging, smoke-tested and, if that passed, promoted to production.
"""
from __future__ import annotations

import fcntl
import json
import logging
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Iterator

import pandas as pd

from helpers.core.policies import retrain_skip_reason
from helpers.local import daemon
from helpers.local.clock import SimClock
from helpers.local.config import Paths
from helpers.local.sqlite import SQLiteFile
from helpers.registry import ModelRegistry

log = logging.getLogger("helpers.monitoring.retrain")

SPAWN_GRACE_S = 120  # a requested retrain counts as in flight this long before its process holds the lock


class RetrainLog(SQLiteFile):
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS retrains (
        id INTEGER PRIMARY KEY AUTOINCREMENT, requested_by TEXT NOT NULL, reason TEXT NOT NULL,
        status TEXT NOT NULL, execution_id TEXT, model_version INTEGER, detail TEXT NOT NULL DEFAULT '{}',
        requested_at REAL NOT NULL, ended_at REAL, requested_sim REAL, ended_sim REAL);
    """

    def __init__(self, paths: Paths):
        super().__init__(paths.monitoring / "retrains.db")
        self.clock = paths.clock  # times are kept in both clocks: wall (for people) and event (for the timeline)

    def add(self, requested_by: str, reason: str, status: str, **detail) -> int:
        return self._conn.execute("INSERT INTO retrains (requested_by, reason, status, detail, requested_at,"
                                  " requested_sim) VALUES (?, ?, ?, ?, ?, ?)",
                                  (requested_by, reason, status, json.dumps(detail), time.time(),
                                   self._sim_now())).lastrowid

    def update(self, retrain_id: int, status: str, **fields) -> None:
        assignments = "".join(f", {name} = ?" for name in fields)
        self._conn.execute(f"UPDATE retrains SET status = ?, ended_at = ?, ended_sim = ?{assignments} WHERE id = ?",
                           (status, time.time(), self._sim_now(), *fields.values(), retrain_id))

    def _sim_now(self) -> float | None:
        return SimClock.load(self.clock).now() if self.clock.exists() else None

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            yield

    def requested_detail(self, retrain_id: int) -> dict:
        row = self._conn.execute("SELECT detail FROM retrains WHERE id = ?", (retrain_id,)).fetchone()
        return json.loads(row[0]) if row else {}

    def starting(self, within_s: float = SPAWN_GRACE_S) -> bool:
        """Was a retrain requested moments ago whose process has not taken the lock yet?"""
        return self._conn.execute("SELECT 1 FROM retrains WHERE status = 'Requested' AND requested_at > ?",
                                  (time.time() - within_s,)).fetchone() is not None

    def frame(self) -> pd.DataFrame:
        frame = pd.read_sql("SELECT * FROM retrains ORDER BY id", self._conn)
        for column in ("requested_at", "ended_at", "requested_sim", "ended_sim"):
            frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
        return frame


def _lock_file(paths: Paths) -> Path:
    paths.monitoring.mkdir(parents=True, exist_ok=True)
    return paths.monitoring / "retrain.lock"


@contextmanager
def single_flight(paths: Paths) -> Iterator[bool]:
    """Hold the project's retrain lock if it is free; yields whether this caller holds it."""
    with open(_lock_file(paths), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def in_flight(paths: Paths) -> bool:
    with single_flight(paths) as free:
        return not free


def request(paths: Paths, requested_by: str, reason: str, data_end: float | None = None) -> str:
    """The alarm action: start a retrain in the background unless one is in flight or a version awaits
    approval. ``data_end``: the end of the data it trains on (the alarm's period, final by then), so that what it
    learns does not hang on how far the simulated clock ran before its process started; None: the newest minute.
    Returns what happened: "started", "skipped: ..."."""
    pending = ModelRegistry(paths.registry).latest(status="PendingManualApproval")
    retrains = RetrainLog(paths)
    try:
        with retrains.exclusive():  # check and record in one transaction: concurrent alarms see each other
            why = retrain_skip_reason(in_flight(paths) or retrains.starting(), pending.version if pending else None)
            if why:
                return _skip(retrains, requested_by, reason, why)
            retrain_id = retrains.add(requested_by, reason, "Requested",
                                      **({} if data_end is None else {"data_end": data_end}))
    finally:
        retrains.close()
    daemon.spawn(paths.root, ["retrain", str(retrain_id)], paths.root / "logs" / "retrain.out")
    log.warning("retrain %d started: %s", retrain_id, reason)
    return "started"


def stop(paths: Paths, timeout_s: float = 30) -> None:
    """Stop the retrain in flight, one requested moments ago included: it is given the time to take its lock (and
    write its pid) first, so a retrain an alarm started just before a teardown is not left running."""
    retrains = RetrainLog(paths)
    deadline = time.monotonic() + timeout_s
    try:
        while retrains.starting() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        retrains.close()
    daemon.terminate(paths.pid_file("retrain"))


def _skip(retrains: RetrainLog, requested_by: str, reason: str, why: str) -> str:
    retrains.add(requested_by, reason, "Skipped", why=why)
    log.info("retrain not started (%s): %s", why, reason)
    return f"skipped: {why}"


def run(state_dir, retrain_id: int) -> str:
    """Run retrain ``retrain_id`` in this process, holding the lock; returns its final status."""
    paths = Paths.at(state_dir)
    retrains = RetrainLog(paths)
    try:
        with single_flight(paths) as holding:
            if not holding:
                retrains.update(retrain_id, "Skipped", detail=json.dumps({"why": "another retrain got there first"}))
                return "Skipped"
            try:
                with daemon.holding_pid_file(paths.pid_file("retrain"), "retrain"):
                    data_end = retrains.requested_detail(retrain_id).get("data_end")
                    retrains.update(retrain_id, "Executing")
                    status, fields = _build_and_ship(paths, data_end)
                    if _sigterm_received:  # a library swallowed its SystemExit (DuckDB: "Query interrupted")
                        raise SystemExit(STOPPED_BY_SIGTERM)
            except BaseException as error:  # a crash, or teardown's SIGTERM: never leave a retrain "Executing"
                retrains.update(retrain_id, "Stopped" if isinstance(error, SystemExit) else "Failed",
                                detail=json.dumps({"why": str(error) or type(error).__name__}))
                raise
            retrains.update(retrain_id, status, **fields)
            return status
    finally:
        retrains.close()


STOPPED_BY_SIGTERM = "stopped by SIGTERM (a teardown: python -m helpers stop)"
_sigterm_received: list[int] = []  # not empty once a teardown's SIGTERM arrived


def stop_on_sigterm() -> None:
    """Turn the SIGTERM of a teardown into SystemExit, so that :func:`run` records the retrain as Stopped, even
    when the SystemExit is raised inside a library that turns it into an error of its own."""
    def stop(signum, _frame):
        _sigterm_received.append(signum)
        raise SystemExit(STOPPED_BY_SIGTERM)
    signal.signal(signal.SIGTERM, stop)


def _build_and_ship(paths: Paths, data_end: float | None) -> tuple[str, dict]:
    from helpers.endpoints import deploy
    from helpers.monitoring.monitor_config import MonitorConfig
    from helpers.training import deepar, model_build

    deepar.use_inference_threads()  # one thread: the stream, endpoints and monitor share these cores
    config = MonitorConfig.load(paths)
    # the build the AWS retrain Lambda starts; there the data ends where the offline store does, on the wall clock
    settings = replace(config.retrain_settings(), end=data_end)
    execution = model_build.run(paths.root, settings)
    fields = {"execution_id": execution.execution_id}
    if not execution.succeeded:
        return execution.status, {**fields, "detail": json.dumps({"why": execution.failure_reason})}
    version = execution.outputs["model_version"]
    fields["model_version"] = version
    if not MonitorConfig.load(paths).auto_approve:
        return "PendingManualApproval", fields
    who, why = "auto_approve", f"retrained after an alarm (execution {execution.execution_id})"
    approval = deploy.approve(paths.root, version, by=who, reason=why)
    if not approval.smoke_test.passed:
        return "StagingSmokeTestFailed", {**fields, "detail": json.dumps(asdict(approval.smoke_test), default=str)}
    deploy.promote(paths.root, version, by=who, reason=why)
    return "Deployed", fields
