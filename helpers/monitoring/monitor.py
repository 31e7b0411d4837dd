"""Hourly model monitoring per stage, its alarms, and the retrain they start: the loop's last step (notebook 05).

Every hour of event time, for each endpoint (staging, prod) separately:

1. Read the forecasts that endpoint served from its own data capture (never the other stage's: the
   original's production monitor scored staging).
2. Take every forecast point whose minute falls in the hour, now that the hour has matured (the
   stream's watermark is past it plus the allowed lateness, so no revision can change its actuals),
   and compare it with the feature store: mean wQL over all of them (hundreds of points, not 5).
3. Publish ``weighted_quantile_loss`` and ``weighted_quantile_loss_threshold`` (the threshold in force, read
   from the parameter store now) to the namespace ``CustomModelMonitoring`` with dimension ``StageName``,
   stamped with the hour; an hour one version served alone also with ``StageName`` and ``ModelVersion``.
   The metric store keeps one datapoint per hour, so re-running an hour (after a crash, or "run now")
   never double-publishes.
4. Evaluate the stage's alarm, as CloudWatch would: on the metric math ``wQL - threshold`` of the
   version the endpoint serves (dimension ``ModelVersion``), Maximum, 3600 s, 3 of the last 5 >= 0,
   missing data not breaching. While it is in ALARM, each period it asks for a retrain
   (:mod:`helpers.monitoring.retrain`), which runs one at a time per project.

A fresh model is judged on its own forecasts only: its alarm watches its own ``ModelVersion``, so the hours
before it served alone are missing data, not breaching. Together with the threshold floor applied at
approval (see :func:`helpers.core.policies.threshold_after_approval`), a retrained model does not inherit
its predecessor's breaches.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import asdict

import numpy as np
import pandas as pd

from helpers.core.aggregator import WindowConfig
from helpers.core.deepar_json import deepar_request
from helpers.core.times import minute_iso
from helpers.endpoints import deploy
from helpers.endpoints.deploy import ENDPOINTS, capture_dir
from helpers.endpoints.interface import variant_version
from helpers.endpoints.serving import read_capture_file
from helpers.feature_store import open_tx_per_minute
from helpers.local import daemon
from helpers.local.clock import SharedClock, write_json_atomic
from helpers.local.config import Paths
from helpers.local.sqlite import SQLiteFile
from helpers.monitoring import alarms, scoring
from helpers.monitoring.cloudwatch import stage_alarm
from helpers.monitoring.monitor_config import MonitorConfig
from helpers.training.interface import WQL_THRESHOLD
from helpers.training.params import ParameterStore

log = logging.getLogger("helpers.monitoring.monitor")

HOUR = scoring.HOUR
LOOP_INTERVAL_S = 0.5  # wall seconds between checks for a matured hour


def alarm_name(stage: str) -> str:
    return f"btc-avg-fee-wql-{stage}"


def alarm_settings(stage: str, config: MonitorConfig, model_version: int | None) -> alarms.AlarmSettings:
    """The stage's alarm, on the version it serves (a deploy moves the alarm to the new version's metrics)."""
    return stage_alarm(alarm_name(stage), stage, model_version, config.evaluation_periods,
                       config.datapoints_to_alarm)


# ---------------------------------------------------------------- the forecasts each stage served


class Ledger(SQLiteFile):
    """The forecasts read from each stage's capture, and each evaluated hour."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS forecasts (
        event_id TEXT PRIMARY KEY, stage TEXT NOT NULL, model_version INTEGER, origin REAL NOT NULL,
        horizon INTEGER NOT NULL, quantiles TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS forecasts_by_origin ON forecasts (stage, origin);
    CREATE TABLE IF NOT EXISTS capture_offsets (path TEXT PRIMARY KEY, offset INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS evaluations (
        stage TEXT NOT NULL, hour REAL NOT NULL, wql REAL, points INTEGER NOT NULL, forecasts INTEGER NOT NULL,
        versions TEXT NOT NULL, threshold REAL NOT NULL, evaluated_at REAL NOT NULL, PRIMARY KEY (stage, hour));
    """

    def __init__(self, paths: Paths):
        super().__init__(paths.monitoring / "monitor.db")

    def read_captures(self, paths: Paths, stage: str) -> int:
        """Add the forecasts captured since the last read; returns how many."""
        added = 0
        root = capture_dir(paths, stage)
        for path in sorted(root.rglob("*.jsonl")):
            row = self._conn.execute("SELECT offset FROM capture_offsets WHERE path = ?", (str(path),)).fetchone()
            events, offset = read_capture_file(path, row[0] if row else 0)
            version = variant_version(path.relative_to(root).parts[0])  # SageMaker's layout: <endpoint>/<variant>/
            rows = [forecast for event in events for forecast in _forecasts(event, stage, version)]
            with self._conn:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany("INSERT OR IGNORE INTO forecasts VALUES (?, ?, ?, ?, ?, ?)", rows)
                self._conn.execute("INSERT OR REPLACE INTO capture_offsets VALUES (?, ?)", (str(path), offset))
            added += len(rows)
        return added

    def forecasts_for(self, stage: str, start: float, end: float) -> list[tuple]:
        """(model_version, origin, horizon, quantiles) of the forecasts with a point in [start, end)."""
        return self._conn.execute(
            "SELECT model_version, origin, horizon, quantiles FROM forecasts WHERE stage = ? AND origin < ?"
            " AND origin + horizon * 60 > ?", (stage, end, start)).fetchall()

    def first_origin(self, stage: str) -> float | None:
        return self._conn.execute("SELECT MIN(origin) FROM forecasts WHERE stage = ?", (stage,)).fetchone()[0]

    def last_evaluated(self, stage: str) -> float | None:
        return self._conn.execute("SELECT MAX(hour) FROM evaluations WHERE stage = ?", (stage,)).fetchone()[0]

    def record(self, stage: str, hour: float, result: dict, threshold: float) -> None:
        self._conn.execute("INSERT OR IGNORE INTO evaluations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (stage, hour, result["wql"], result["points"], result["forecasts"],
                            json.dumps(result["versions"]), threshold, time.time()))

    def evaluations(self) -> pd.DataFrame:
        frame = pd.read_sql("SELECT stage, hour, wql, points, forecasts, versions, threshold FROM evaluations"
                            " ORDER BY hour, stage", self._conn)
        frame["hour"] = pd.to_datetime(frame["hour"], unit="s", utc=True)
        return frame


def _forecasts(event: dict, stage: str, model_version: int | None) -> list[tuple]:
    """One row per instance of a captured request: its origin is the minute after the history it was sent."""
    return [(forecast.event_id, stage, forecast.model_version, forecast.origin, forecast.horizon,
             json.dumps({q: v.tolist() for q, v in forecast.quantiles.items()}))
            for forecast in scoring.forecasts_in_event(event, model_version)]


# ---------------------------------------------------------------- scoring an hour


def score_hour(ledger: Ledger, actuals: pd.Series, stage: str, hour: float) -> dict:
    """Mean wQL over every point, forecast by ``stage``, whose minute is in [hour, hour + 1 h)."""
    forecasts = [scoring.Forecast("", version, origin, {q: np.asarray(v, dtype=float)
                                                        for q, v in json.loads(quantiles).items()})
                 for version, origin, _horizon, quantiles in ledger.forecasts_for(stage, hour, hour + HOUR)]
    return scoring.score_period(forecasts, actuals, hour, hour + HOUR)


def _actuals(paths: Paths, start: float, end: float) -> pd.Series:
    features = open_tx_per_minute(paths.feature_store)
    try:
        return features.training_dataset(pd.Timestamp(start, unit="s", tz="UTC"), pd.Timestamp(end, unit="s", tz="UTC"),
                                         features=["avg_fee"]).frame["avg_fee"]
    finally:
        features.close()


def mature_until(paths: Paths) -> float | None:
    """Minutes before this instant are final: the newest closed minute, less the allowed lateness."""
    features = open_tx_per_minute(paths.feature_store)
    try:
        newest = features.newest_slot()
    finally:
        features.close()
    window = WindowConfig()  # the stream's rules: a minute is revised up to allowed_lateness_s after it closed
    return newest.timestamp() + window.window_s - window.allowed_lateness_s if newest is not None else None


# ---------------------------------------------------------------- one run: every matured hour, then the alarms


def run_now(state_dir=None) -> list[dict]:
    """Evaluate every hour that matured since the last run, for each stage; publish; evaluate the alarms and
    start their action. Safe to call any time, from anywhere: an hour is published once."""
    paths = Paths.at(state_dir)
    config = MonitorConfig.load(paths)
    ledger, (metrics, alarm_store) = Ledger(paths), alarms.open_stores(paths.monitoring)
    params = ParameterStore(paths.params)
    done = []
    try:
        until = mature_until(paths)
        for stage in ENDPOINTS:
            serving = deploy.describe(paths.root, stage).get("ModelVersion")  # the endpoint's config says
            alarm_store.put_alarm(alarm_settings(stage, config, serving), at=until or 0)
            ledger.read_captures(paths, stage)
            for hour in _due_hours(ledger, stage, until):
                result = evaluate_hour(paths, ledger, metrics, params, stage, hour)
                result["alarm"] = evaluate_alarm(paths, metrics, alarm_store, stage, hour + HOUR)
                done.append(result)
    finally:
        for store in (ledger, metrics, alarm_store, params):
            store.close()
    return done


def _due_hours(ledger: Ledger, stage: str, until: float | None) -> list[float]:
    first = ledger.first_origin(stage)
    if until is None or first is None:
        return []
    last = ledger.last_evaluated(stage)
    start = last + HOUR if last is not None else first // HOUR * HOUR
    return scoring.due_periods(start, until, HOUR)


def evaluate_hour(paths: Paths, ledger: Ledger, metrics: alarms.MetricStore, params: ParameterStore, stage: str,
                  hour: float) -> dict:
    result = score_hour(ledger, _actuals(paths, hour, hour + HOUR), stage, hour)
    threshold = params.get_float(WQL_THRESHOLD)
    if result["wql"] is not None:  # no forecast, no datapoint: the alarm sees missing data
        metrics.put_metric_data(alarms.NAMESPACE, scoring.metric_data(stage, result, threshold, hour))
    ledger.record(stage, hour, result, threshold)
    log.info("%s %s: wQL %s over %d points of %d forecasts (versions %s)", stage, minute_iso(hour),
             "n/a" if result["wql"] is None else f"{result['wql']:.4f}", result["points"], result["forecasts"],
             result["versions"])
    return {"stage": stage, "hour": minute_iso(hour), **result, "threshold": threshold}


def evaluate_alarm(paths: Paths, metrics: alarms.MetricStore, alarm_store: alarms.AlarmStore, stage: str,
                   period_end: float) -> str:
    """Evaluate the stage's alarm through ``period_end``; while it is in ALARM, ask for a retrain."""
    settings = alarm_store.settings(alarm_name(stage))
    start = period_end - settings.evaluation_range * settings.period
    series = metrics.alarm_series(settings, start, period_end)
    judged = [series.get(start + k * settings.period) for k in range(settings.evaluation_range)]
    old = alarm_store.describe(settings.name)["StateValue"]
    state, reason = alarms.evaluate(judged, settings.threshold, settings, old)
    alarm_store.record(settings.name, period_end, state, reason, _threshold_published(metrics, settings, period_end))
    if state != old:
        log.warning("alarm %s: %s -> %s: %s", settings.name, old, state, reason)
    if state == alarms.ALARM:
        from helpers.monitoring import retrain

        retrain.request(paths, requested_by=settings.name, data_end=period_end,
                        reason=f"{settings.name} in ALARM at {minute_iso(period_end)}: {reason}")
    return state


def _threshold_published(metrics: alarms.MetricStore, settings: alarms.AlarmSettings,
                         period_end: float) -> float | None:
    """The threshold published with the stage's newest hour: what the alarm compared with, for its history."""
    stage_only = {"StageName": settings.dimensions["StageName"]}
    published = metrics.statistics(settings.namespace, alarms.THRESHOLD_METRIC, stage_only,
                                   period_end - settings.period, period_end, settings.period, "Maximum")
    return next(iter(published.values()), None)


# ---------------------------------------------------------------- reading the results


def timeline(state_dir=None) -> pd.DataFrame:
    """One row per (hour, stage): wQL, threshold, points, versions."""
    ledger = Ledger(Paths.at(state_dir))
    try:
        return ledger.evaluations()
    finally:
        ledger.close()


# ---------------------------------------------------------------- the monitor service


def request_forecasts(paths: Paths, config: MonitorConfig, clock: SharedClock, stop: threading.Event) -> None:
    """The application's side: every ``forecast_every_minutes`` of event time, ask each endpoint in service for
    the next 30 minutes, with the latest features. These are the forecasts the monitor later scores."""
    every = config.forecast_every_minutes * 60
    due = math.ceil(clock.now() / every) * every
    runtime = deploy.runtime_client(paths.root)
    while not stop.is_set():
        now = clock.now()
        if now < due:
            stop.wait(min(0.25, clock.wall_seconds(due - now)))
            continue
        due = max(due + every, math.floor(now / every) * every + every)  # after a stall, skip to the next slot
        try:
            request = deepar_request(deploy.latest_minutes(paths.root, config.history_minutes))
            for stage in ENDPOINTS:
                if deploy.describe(paths.root, stage).get("EndpointStatus") == "InService":
                    deploy.invoke(paths.root, stage, request, client=runtime)
        except Exception:
            log.exception("forecast request failed; trying again at the next slot")


def serve(state_dir=None) -> None:
    """Run the monitor in the foreground until SIGTERM: forecast requests, and every matured hour evaluated."""
    paths = Paths.at(state_dir)
    daemon.log_to(paths.root / "logs" / "monitor.log")
    with daemon.holding_pid_file(paths.pid_file("monitor"), "monitor"):
        _serve(paths)


def _serve(paths: Paths) -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    clock = SharedClock(paths.clock)
    traffic = threading.Thread(target=request_forecasts, args=(paths, MonitorConfig.load(paths), clock, stop),
                               name="forecasts", daemon=True)
    traffic.start()
    log.info("monitor started: pid %d", os.getpid())
    try:
        while not stop.is_set():
            try:
                run_now(paths.root)
            except Exception:
                log.exception("monitor run failed; retrying")
            write_json_atomic(paths.monitoring / "status.json", {"pid": os.getpid(), "updated_at": time.time(),
                                                                 "sim_now": minute_iso(clock.now())})
            stop.wait(LOOP_INTERVAL_S)
    finally:
        traffic.join(timeout=30)
        log.info("monitor stopped cleanly")


def start(state_dir=None, wait_s: float = 30, **settings) -> dict:
    """Start the monitor in the background (a no-op if it runs); ``settings`` are :class:`MonitorConfig` fields,
    saved for this and later runs."""
    paths = Paths.at(state_dir)
    MonitorConfig(**{**asdict(MonitorConfig.load(paths)), **settings}).save(paths)
    if not running(paths.root):
        daemon.start(paths.root, ["serve-monitor"], paths.root / "logs" / "monitor.out",
                     lambda _: running(paths.root), wait_s, "monitor")
    return status(paths.root)


def stop(state_dir=None) -> None:
    daemon.terminate(Paths.at(state_dir).pid_file("monitor"))


def running(state_dir=None) -> bool:
    return daemon.running(Paths.at(state_dir).pid_file("monitor"))


def status(state_dir=None) -> dict:
    """Whether the monitor runs, its settings, and each alarm's state."""
    paths = Paths.at(state_dir)
    metrics, alarm_store = alarms.open_stores(paths.monitoring)
    try:
        states = {}
        for stage in ENDPOINTS:
            try:
                states[stage] = alarm_store.describe(alarm_name(stage))
            except KeyError:
                states[stage] = {"StateValue": "not created yet"}
    finally:
        metrics.close()
        alarm_store.close()
    return {"running": running(paths.root), "config": asdict(MonitorConfig.load(paths)), "alarms": states}


# ---------------------------------------------------------------- waiting for the loop, from a notebook


def retrains(state_dir=None) -> pd.DataFrame:
    """Every retrain an alarm asked for: started, skipped (and why), its execution, model version and outcome."""
    from helpers.monitoring.retrain import RetrainLog

    log_ = RetrainLog(Paths.at(state_dir))
    try:
        return log_.frame()
    finally:
        log_.close()


def alarm_history(state_dir=None) -> pd.DataFrame:
    _, alarm_store = alarms.open_stores(Paths.at(state_dir).monitoring)
    try:
        return alarm_store.history()
    finally:
        alarm_store.close()


def wait_for_hours(state_dir=None, hours: int = 1, stage: str = "prod", timeout_s: float = 300) -> pd.DataFrame:
    """Block until ``stage`` has ``hours`` scored hours; returns them."""
    return _wait(state_dir, lambda: scoring.scored(timeline(state_dir), stage, hours),
                 f"{hours} scored hour(s) of {stage}", timeout_s)


def wait_for_recovery(state_dir=None, after_version: int = 1, stage: str = "prod", hours: int = 2,
                      timeout_s: float = 600) -> pd.DataFrame:
    """Block until a version newer than ``after_version`` has served ``stage`` alone for the last ``hours``
    scored hours, each below the threshold in force then; returns those hours. A retrained model that breaches
    instead lets its alarm fire again, and the wait goes on for the next one."""
    return _wait(state_dir, lambda: scoring.recovered(timeline(state_dir), after_version, stage, hours),
                 f"{stage} to recover on a version after {after_version}", timeout_s)


def wait_for_alarm(state_dir=None, timeout_s: float = 300) -> pd.DataFrame:
    """Block until an alarm goes into ALARM; returns the alarm history."""
    seen = len(alarm_history(state_dir))

    def fired():
        history = alarm_history(state_dir).iloc[seen:]
        return history if (history["new_state"] == alarms.ALARM).any() else None
    _wait(state_dir, fired, "an alarm", timeout_s)
    return alarm_history(state_dir)


def wait_for_retrain(state_dir=None, outcome: str = "Deployed", timeout_s: float = 600,
                     within_hours: float | None = None) -> pd.Series | None:
    """Block until a retrain ends with ``outcome`` (Deployed; PendingManualApproval without auto_approve). With
    ``within_hours``: None once that much event time has passed since the first alarm with none that did (every
    retrain rejected by the quality gate, say): an outcome to report, not an error."""
    paths = Paths.at(state_dir)

    def ended():
        frame = retrains(state_dir)
        done = frame[frame["status"] == outcome]
        if len(done):
            return done.iloc[-1]
        fired = alarm_history(state_dir).query("new_state == 'ALARM'")["at"]
        late = within_hours is not None and len(fired) and \
            SharedClock(paths.clock).now() > fired.min().timestamp() + within_hours * HOUR
        return GAVE_UP if late and not in_flight(frame) else None
    result = _wait(state_dir, ended, f"a retrain {outcome}", timeout_s)
    return None if result is GAVE_UP else result


GAVE_UP = object()  # wait_for_retrain's predicate: time is up, and no retrain is still running


def in_flight(requests: pd.DataFrame) -> bool:
    return bool(requests["status"].isin(["Requested", "Executing"]).any())


def loop_summary(state_dir, first_version: int, drift_at: pd.Timestamp, stage: str = "prod") -> str:
    """How the stale version did after the drift, and how the version serving now does, hour by hour means."""
    return scoring.loop_summary(timeline(state_dir), first_version, drift_at, stage)


def retrain_report(state_dir=None) -> str:
    """Each retrain started, and how it ended (the quality gate's verdict with its numbers for a rejection)."""
    return scoring.retrain_report(retrains(state_dir))


def _wait(state_dir, predicate, what: str, timeout_s: float):
    from tqdm.auto import tqdm

    paths = Paths.at(state_dir)
    deadline = time.monotonic() + timeout_s
    with tqdm(desc=f"waiting for {what}", bar_format="{desc} {elapsed} {postfix}") as bar:
        while (result := predicate()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {timeout_s:.0f} s; see {paths.root / 'logs' / 'monitor.log'}")
            if not running(paths.root):
                raise RuntimeError(f"the monitor is not running; see {paths.root / 'logs' / 'monitor.out'}")
            states = {s: a["StateValue"] for s, a in status(paths.root)["alarms"].items()}
            bar.set_postfix_str(f"event time {minute_iso(SharedClock(paths.clock).now())}, alarms {states}")
            time.sleep(1)
    return result
