"""The local twin of CloudWatch: custom metrics and alarms, with CloudWatch's semantics.

- :class:`MetricStore` is PutMetricData / GetMetricStatistics. A datapoint is keyed by
  (namespace, metric, dimensions, timestamp), so publishing the same hour twice stores it once.
- :func:`evaluate` is an alarm's state rule, as CloudWatch documents it ("How alarm state is
  evaluated when data is missing"): it reads the last ``evaluation_periods + 2`` periods (the
  evaluation range); with at least N real datapoints it judges the newest N; with fewer, it fills
  the gap with the missing-data treatment, as few times as possible, and keeps every real one.
  M of those N breaching -> ALARM, else OK; INSUFFICIENT_DATA until the alarm first evaluates.
- :class:`AlarmStore` keeps each alarm's settings, state and history of transitions (DescribeAlarms,
  DescribeAlarmHistory). Times are event time (the simulated clock), as UTC unix seconds.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from helpers.core.times import minute_iso
from helpers.local.sqlite import SQLiteFile

# The settings and names are CloudWatch's, shared with the AWS twin (pure, in helpers.monitoring.cloudwatch);
# importing them from here still works.
from helpers.monitoring.cloudwatch import (
    ALARM,
    COMPARISONS,
    INSUFFICIENT_DATA,
    MISSING_DATA,
    NAMESPACE,
    OK,
    STATISTICS,
    THRESHOLD_METRIC,
    WQL_METRIC,
    AlarmSettings,
)

__all__ = ["ALARM", "COMPARISONS", "INSUFFICIENT_DATA", "MISSING_DATA", "NAMESPACE", "OK", "STATISTICS",
           "THRESHOLD_METRIC", "WQL_METRIC", "AlarmSettings", "AlarmStore", "MetricStore", "evaluate", "open_stores"]


def evaluate(values: list[float | None], threshold: float, settings: AlarmSettings, state: str) -> tuple[str, str]:
    """The alarm's new state and why, from the evaluation range's datapoints (oldest first; None = missing)."""
    breaches = COMPARISONS[settings.comparison]
    real = [v for v in values if v is not None]
    n, m = settings.evaluation_periods, settings.datapoints_to_alarm
    if len(real) >= n:
        judged = [breaches(v, threshold) for v in real[-n:]]
    else:
        fill = {"notBreaching": [False], "breaching": [True], "ignore": []}[settings.treat_missing_data]
        judged = [breaches(v, threshold) for v in real] + fill * (n - len(real))
        if settings.treat_missing_data == "ignore" and sum(judged) < m and all(judged):
            return state, f"too few datapoints ({len(real)} of {n}), missing data ignored: state kept"
    verb = settings.comparison.removesuffix("Threshold")
    shown = ", ".join("missing" if v is None else f"{v:.4f}" for v in values)
    reason = (f"{sum(judged)} of the {n} datapoints of {settings.label} judged were {verb} {threshold:.4f} "
              f"([{shown}])")
    return (ALARM if sum(judged) >= m else OK), reason


class MetricStore(SQLiteFile):
    """Custom metrics: one row per (namespace, metric, dimensions, timestamp); a repeated put is ignored."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS datapoints (
        namespace TEXT NOT NULL, metric TEXT NOT NULL, dimensions TEXT NOT NULL, timestamp REAL NOT NULL,
        value REAL NOT NULL, unit TEXT NOT NULL,
        PRIMARY KEY (namespace, metric, dimensions, timestamp));
    """

    def put_metric_data(self, namespace: str, metric_data: list[dict]) -> int:
        """PutMetricData's shape: [{MetricName, Dimensions: [{Name, Value}], Timestamp (unix s), Value, Unit}].
        Returns how many datapoints were new."""
        rows = [(namespace, d["MetricName"], _dimensions_key(d.get("Dimensions", [])), float(d["Timestamp"]),
                 float(d["Value"]), d.get("Unit", "None")) for d in metric_data]
        with self._conn:
            before = self._conn.total_changes
            self._conn.executemany("INSERT OR IGNORE INTO datapoints VALUES (?, ?, ?, ?, ?, ?)", rows)
            return self._conn.total_changes - before

    def statistics(self, namespace: str, metric: str, dimensions: dict, start: float, end: float, period: int,
                   statistic: str) -> dict[float, float]:
        """GetMetricStatistics: {period start: statistic of the datapoints in it} for [start, end)."""
        rows = self._conn.execute(
            "SELECT timestamp, value FROM datapoints WHERE namespace = ? AND metric = ? AND dimensions = ?"
            " AND timestamp >= ? AND timestamp < ?", (namespace, metric, _dimensions_key(dimensions), start, end))
        by_period: dict[float, list[float]] = {}
        for timestamp, value in rows:
            by_period.setdefault(start + (timestamp - start) // period * period, []).append(value)
        return {p: float(STATISTICS[statistic](values)) for p, values in sorted(by_period.items())}

    def alarm_series(self, settings: AlarmSettings, start: float, end: float) -> dict[float, float]:
        """The series an alarm judges over [start, end), by period: its metric, or its metric math (a period
        with either metric missing is missing, as in CloudWatch)."""
        values = self.statistics(settings.namespace, settings.metric_name, settings.dimensions, start, end,
                                 settings.period, settings.statistic)
        if settings.threshold_metric is None:
            return values
        bars = self.statistics(settings.namespace, settings.threshold_metric, settings.dimensions, start, end,
                               settings.period, settings.statistic)
        return {p: v - bars[p] for p, v in values.items() if p in bars}

    def frame(self, namespace: str = NAMESPACE) -> pd.DataFrame:
        """Every datapoint of ``namespace``: timestamp (UTC), metric, dimensions, value."""
        frame = pd.read_sql("SELECT metric, dimensions, timestamp, value FROM datapoints WHERE namespace = ?"
                            " ORDER BY timestamp", self._conn, params=(namespace,))
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="s", utc=True)
        return frame


def _dimensions_key(dimensions) -> str:
    """Dimensions as one canonical string, from {name: value} or [{Name, Value}]."""
    if isinstance(dimensions, dict):
        dimensions = [{"Name": k, "Value": v} for k, v in dimensions.items()]
    return json.dumps(sorted((d["Name"], str(d["Value"])) for d in dimensions))


class AlarmStore(SQLiteFile):
    """Alarms, their current state and the history of their transitions."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS alarms (
        name TEXT PRIMARY KEY, settings TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL,
        updated REAL NOT NULL, evaluated_through REAL);
    CREATE TABLE IF NOT EXISTS history (
        id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, at REAL NOT NULL, old_state TEXT NOT NULL,
        new_state TEXT NOT NULL, threshold REAL, reason TEXT NOT NULL);
    """

    def put_alarm(self, settings: AlarmSettings, at: float) -> None:
        """PutMetricAlarm: a new alarm starts INSUFFICIENT_DATA; an existing one keeps its state, new settings."""
        self._conn.execute("INSERT INTO alarms VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT(name) DO UPDATE SET"
                           " settings = excluded.settings",
                           (settings.name, json.dumps(asdict(settings)), INSUFFICIENT_DATA, "just created", at))

    def settings(self, name: str) -> AlarmSettings:
        return AlarmSettings(**json.loads(self._row(name)["settings"]))

    def describe(self, name: str) -> dict:
        row = self._row(name)
        return {"AlarmName": name, "StateValue": row["state"], "StateReason": row["reason"],
                "StateUpdated": minute_iso(row["updated"]), "EvaluatedThrough": row["evaluated_through"]}

    def _row(self, name: str) -> dict:
        cursor = self._conn.execute("SELECT * FROM alarms WHERE name = ?", (name,))
        row = cursor.fetchone()
        if row is None:
            raise KeyError(f"no alarm {name!r}: the monitor creates its alarms when it starts")
        return dict(zip([d[0] for d in cursor.description], row))

    def record(self, name: str, period_end: float, state: str, reason: str, threshold: float) -> str:
        """Save an evaluation through ``period_end``; returns the state before it. Transitions go to the history."""
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            old = self._row(name)["state"]
            self._conn.execute("UPDATE alarms SET evaluated_through = ? WHERE name = ?", (period_end, name))
            if state != old:
                self._conn.execute("UPDATE alarms SET state = ?, reason = ?, updated = ? WHERE name = ?",
                                   (state, reason, period_end, name))
                self._conn.execute("INSERT INTO history (name, at, old_state, new_state, threshold, reason)"
                                   " VALUES (?, ?, ?, ?, ?, ?)", (name, period_end, old, state, threshold, reason))
        return old

    def history(self) -> pd.DataFrame:
        frame = pd.read_sql("SELECT name, at, old_state, new_state, threshold, reason FROM history ORDER BY id",
                            self._conn)
        frame["at"] = pd.to_datetime(frame["at"], unit="s", utc=True)
        return frame


def open_stores(directory: Path) -> tuple[MetricStore, AlarmStore]:
    return MetricStore(Path(directory) / "metrics.db"), AlarmStore(Path(directory) / "alarms.db")
