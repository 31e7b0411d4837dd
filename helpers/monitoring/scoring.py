"""Scoring a stage on its own forecasts against what really happened: the part of the monitor both twins run.

Pure (json, numpy, pandas; no SQLite, no boto3). Each twin reads its stage's data capture its own way (local files
under ``<endpoint>/<variant>/YYYY/MM/DD/HH/``; the same layout in S3 under ``data-capture/<endpoint name>/``),
then shares every rule:

- :func:`forecasts_in_event`: a captured event (SageMaker's capture format) -> its forecasts, each with its origin
  (the minute after the history it was sent) and the model version (from the production variant in the path);
- :func:`score_period`: mean wQL over every point, forecast by the stage, whose minute falls in one period, of any
  length (an hour locally; the stack's ``ScoringPeriodMinutes`` on AWS);
- :func:`metric_data`: the PutMetricData datapoints of a scored period (``StageName``, and ``ModelVersion`` too
  when one version served it alone);
- the periods due (:func:`due_periods`), and what the waits and reports read from a timeline.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from helpers.core.aggregator import WindowConfig
from helpers.core.deepar_json import forecast_origin, quantile_arrays
from helpers.core.metrics import QUANTILE_NAMES, mean_weighted_quantile_loss
from helpers.monitoring.cloudwatch import THRESHOLD_METRIC, WQL_METRIC, metric_dimensions

HOUR = 3600
CAPTURE_PREFIX = "data-capture"  # SageMaker's DestinationS3Uri s3://<bucket>/data-capture
# SageMaker Feature Store replicates a record to the offline store (S3, Athena) within about 15 minutes.
OFFLINE_STORE_LAG_S = 900


# ---------------------------------------------------------------- the captured forecasts


@dataclass(frozen=True)
class Forecast:
    """One forecast a stage served: from ``origin`` (unix s), one point a minute for ``horizon`` minutes."""

    event_id: str
    model_version: int | None
    origin: float
    quantiles: dict[str, np.ndarray]  # "0.1" .. "0.9"

    @property
    def horizon(self) -> int:
        return len(self.quantiles[QUANTILE_NAMES[0]])

    def covers(self, start: float, end: float) -> bool:
        """Has it a point in [start, end)?"""
        return self.origin < end and self.origin + self.horizon * 60 > start


def _payload(capture: dict) -> str:
    """The request or response a capture holds: JSON as it is, or base64 (a content type not captured as JSON)."""
    data = capture["data"]
    return base64.b64decode(data).decode() if capture.get("encoding") == "BASE64" else data


def forecasts_in_event(event: dict, model_version: int | None) -> list[Forecast]:
    """One forecast per instance of a captured request; none when the event is not a DeepAR request answered with
    the quantiles wQL needs (an error the endpoint answered, other quantiles, a malformed event)."""
    try:
        event_id = event["eventMetadata"]["eventId"]
        data = event["captureData"]
        instances = json.loads(_payload(data["endpointInput"]))["instances"]
        predictions = json.loads(_payload(data["endpointOutput"]))["predictions"]
    except (ValueError, KeyError, TypeError):
        return []
    found = []
    for i, (instance, prediction) in enumerate(zip(instances, predictions)):
        try:
            quantiles = quantile_arrays(prediction)
            origin = forecast_origin(instance)
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if quantiles is None:
            continue  # asked for other quantiles: wQL over 0.1..0.9 cannot be computed
        found.append(Forecast(f"{event_id}-{i}", model_version, origin, quantiles))
    return found


def capture_events(data: bytes) -> tuple[list[dict], int]:
    """The events of a capture file (JSON Lines), and how many lines were malformed (skipped)."""
    events, malformed = [], 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            malformed += 1
            continue
        if isinstance(event, dict):
            events.append(event)
        else:
            malformed += 1
    return events, malformed


@dataclass(frozen=True)
class CaptureKey:
    """Where SageMaker put a capture file: ``<prefix>/<endpoint>/<variant>/YYYY/MM/DD/HH/<file>.jsonl``."""

    endpoint: str
    variant: str
    hour: float  # the UTC hour it was captured in (unix s)


def parse_capture_key(key: str, prefix: str = CAPTURE_PREFIX) -> CaptureKey | None:
    """The endpoint, variant and hour of a capture file's key; None for any other key."""
    parts = key.removeprefix(prefix.rstrip("/") + "/").split("/")
    if not key.startswith(prefix.rstrip("/") + "/") or len(parts) != 7 or not parts[6].endswith(".jsonl"):
        return None
    endpoint, variant, year, month, day, hour, _ = parts
    try:
        at = pd.Timestamp(f"{year}-{month}-{day}T{hour}:00:00", tz="UTC")
    except ValueError:
        return None
    return CaptureKey(endpoint, variant, at.timestamp())


def capture_hour_prefix(endpoint: str, variant: str, hour: float, prefix: str = CAPTURE_PREFIX) -> str:
    """The key prefix of one hour of one variant's capture files."""
    return f"{prefix.rstrip('/')}/{endpoint}/{variant}/{pd.Timestamp(hour, unit='s', tz='UTC'):%Y/%m/%d/%H}/"


# ---------------------------------------------------------------- scoring a period


def score_period(forecasts, actuals: pd.Series, start: float, end: float) -> dict:
    """Mean wQL over every point of ``forecasts`` whose minute is in [start, end), against ``actuals`` (one value
    per minute, indexed by UTC minute; NaN or absent minutes are skipped). ``wql`` is None when no point has an
    actual (or every actual is 0): no datapoint, so the alarm sees missing data."""
    ys, predicted, versions, count = [], {q: [] for q in QUANTILE_NAMES}, set(), 0
    for forecast in forecasts:
        if not forecast.covers(start, end):
            continue
        minutes = forecast.origin + 60 * np.arange(forecast.horizon)
        inside = (minutes >= start) & (minutes < end)
        ys.extend(actuals.reindex(pd.to_datetime(minutes[inside], unit="s", utc=True)).to_numpy(float))
        for q in predicted:
            predicted[q].extend(np.asarray(forecast.quantiles[q], dtype=float)[inside])
        versions.add(forecast.model_version)
        count += 1
    y = np.array(ys)
    observed = ~np.isnan(y)
    wql = mean_weighted_quantile_loss(y[None, :], {q: np.array(v)[None, :] for q, v in predicted.items()}) \
        if observed.any() and np.abs(y[observed]).sum() > 0 else None
    return {"wql": wql, "points": int(observed.sum()), "forecasts": count, "versions": sorted(versions)}


def served_alone(result: dict) -> int | None:
    """The version that served every forecast of a scored period, if there was only one."""
    return result["versions"][0] if len(result["versions"]) == 1 else None


def metric_data(stage: str, result: dict, threshold: float, timestamp) -> list[dict]:
    """PutMetricData's datapoints for a scored period, stamped with its start: wQL and the threshold in force, with
    ``StageName``, and with ``StageName`` + ``ModelVersion`` when one version served it alone. None for a period
    without a score."""
    if result["wql"] is None:
        return []
    alone = served_alone(result)
    dimension_sets = [metric_dimensions(stage)] + ([metric_dimensions(stage, alone)] if alone is not None else [])
    return [{"MetricName": name, "Dimensions": [{"Name": k, "Value": v} for k, v in dimensions.items()],
             "Timestamp": timestamp, "Value": value}
            for dimensions in dimension_sets
            for name, value in ((WQL_METRIC, result["wql"]), (THRESHOLD_METRIC, threshold))]


# ---------------------------------------------------------------- which periods are due


def due_periods(first_start: float, until: float, period_s: int) -> list[float]:
    """The starts of the periods from ``first_start`` on that ended by ``until``."""
    return [float(p) for p in range(int(first_start), int(until) - period_s + 1, period_s)]


def offline_mature_until(now: float, window: WindowConfig = WindowConfig()) -> float:
    """On AWS, minutes before this instant are final in the offline store: a minute is revised until the watermark
    (the stream's out-of-orderness behind) is the allowed lateness past its end, and reaches Athena within
    :data:`OFFLINE_STORE_LAG_S` after that. With 10-minute periods, a period is scored 21 to 26 minutes after it
    ends (the scoring schedule runs every few minutes)."""
    return now - window.out_of_orderness_s - window.allowed_lateness_s - OFFLINE_STORE_LAG_S


# ---------------------------------------------------------------- reading a timeline (both twins' waits and reports)


def scored(timeline: pd.DataFrame, stage: str, periods: int) -> pd.DataFrame | None:
    """The stage's scored periods, once there are at least ``periods`` of them."""
    frame = timeline[(timeline["stage"] == stage) & timeline["wql"].notna()]
    return frame if len(frame) >= periods else None


def recovered(timeline: pd.DataFrame, after_version: int, stage: str, periods: int) -> pd.DataFrame | None:
    """The last ``periods`` scored periods of ``stage``, if one version newer than ``after_version`` served them all
    alone, each below the threshold in force then."""
    last = timeline[(timeline["stage"] == stage) & timeline["wql"].notna()].tail(periods)
    served = set(last["versions"])
    if len(last) < periods or len(served) != 1:
        return None
    versions = json.loads(served.pop())
    alone_and_newer = len(versions) == 1 and versions[0] > after_version
    return last if alone_and_newer and (last["wql"] < last["threshold"]).all() else None


def loop_summary(timeline: pd.DataFrame, first_version: int, drift_at: pd.Timestamp, stage: str = "prod",
                 period_s: int = HOUR) -> str:
    """How the stale version did after the drift, and how the version serving now does, in period means."""
    mean, unit = ("mean hourly wQL", "hours") if period_s == HOUR else (f"mean wQL per {period_s // 60}-minute period",
                                                                       "periods")
    hours = timeline[(timeline["stage"] == stage) & timeline["wql"].notna()]
    stale = hours[(hours["hour"] >= drift_at.floor(f"{period_s}s")) & (hours["versions"] == f"[{first_version}]")]
    text = f"{stage}, version {first_version} after the drift: {mean} {stale['wql'].mean():.3f} over " \
           f"{len(stale)} {unit}"
    latest = hours.tail(2)
    if len(latest) and (latest["versions"] != f"[{first_version}]").all():
        text += f"; {latest['versions'].iloc[-1]} now: {latest['wql'].mean():.3f} over its last {len(latest)} {unit}"
    return text


def retrain_report(retrains: pd.DataFrame) -> str:
    """Each retrain started, and how it ended (the quality gate's verdict with its numbers for a rejection)."""
    started = retrains.query("status != 'Skipped'")
    lines = [f"{row.requested_sim:%H:%M} UTC: {row.status}" + (f", version {int(row.model_version)}"
                                                               if pd.notna(row.model_version) else "") +
             (f": {json.loads(row.detail)['why'].removeprefix('QualityGate: ')}" if "why" in row.detail else "")
             for row in started.itertuples()]
    return "\n".join(lines) or "no retrain has started"
