"""What a model build computes the same way on both backends: the series it extracts, DeepAR's channels, the
evaluation, the gate's decision, and the artifacts a report is read back from.

The local steps (:mod:`helpers.training.model_build`) and the SageMaker Pipeline's processing jobs
(:mod:`helpers.training.sagemaker_jobs`) both call these, so a build on AWS prepares, scores and judges exactly as
one here does. Only numpy, pandas and the core: the processing container has nothing else of ours.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.core import gate
from helpers.core.deepar_json import START_FORMAT
from helpers.core.gate import GateDecision
from helpers.core.metrics import evaluate, mean_weighted_quantile_loss
from helpers.core.preparation import BuildSettings, Split
from helpers.core.times import as_unix

log = logging.getLogger("helpers.training.build_steps")

TARGET = "avg_fee"
MODEL = "deepar"  # the forecaster the gate judges; every other one in an evaluation is a baseline
# The artifacts a build's report is read back from (locally under the execution's directory, on AWS in S3).
EVALUATION_FILE, FORECASTS_FILE, GATE_FILE = "evaluation.json", "test_forecasts.npz", "gate.json"


def extract_series(features, settings: BuildSettings) -> tuple[np.ndarray, pd.Timestamp, dict]:
    """One value of the target per minute from a feature group (local or AWS: ``FeatureGroupQueries``), on a
    complete grid, gaps as NaN; with what it read, as the Extract step records it."""
    newest = features.newest_slot()
    if newest is None:
        raise ValueError("the feature store is empty: start the stream first (notebook 01 or python -m helpers start)")
    end = newest + pd.Timedelta(minutes=1) if settings.end is None else \
        pd.Timestamp(as_unix(settings.end, "end"), unit="s", tz="UTC")
    first_held = features.time_range()[0]  # minutes before the stream began are not gaps: they never existed
    dataset = features.training_dataset(max(end - pd.Timedelta(days=settings.training_days), first_held), end,
                                        features=[TARGET])
    log.info("extracted %d minutes from %s to %s (%d gaps)", len(dataset.frame), dataset.start, dataset.end,
             dataset.gaps)
    return dataset.frame[TARGET].to_numpy(dtype=float), dataset.start, {
        "data_start": str(dataset.start), "data_end": str(dataset.end), "minutes": len(dataset.frame),
        "gaps": dataset.gaps, "feature_group": features.name}


def split_outputs(windows: Split, series_start: pd.Timestamp, settings: BuildSettings) -> dict:
    """What the Prepare step records about its split."""
    at = lambda i: str(series_start + pd.Timedelta(minutes=i))  # noqa: E731
    return {"train_minutes": windows.train_end, "validation_from": at(windows.train_end),
            "test_from": at(windows.test_origins[0]), "test_windows": settings.n_test_windows,
            "validation_windows": settings.n_validation_windows}


# ---------------------------------------------------------------- DeepAR's JSON lines (the built-in algorithm)

def deepar_line(series_start: pd.Timestamp, values: np.ndarray) -> str:
    """One series as a line of DeepAR's training or inference input; gaps as "NaN", as DeepAR reads them."""
    return json.dumps({"start": series_start.strftime(START_FORMAT),
                       "target": [float(v) if np.isfinite(v) else "NaN" for v in values]})


def deepar_channels(series: np.ndarray, series_start: pd.Timestamp, windows: Split) -> dict[str, str]:
    """The built-in DeepAR's inputs, split as the local build splits: ``train`` (the training minutes), ``test``
    (one line per validation window, which DeepAR scores on each line's last prediction_length points) and
    ``forecast`` (one line per test window: the history before it, for the batch transform)."""
    lines = {"train": [deepar_line(series_start, series[:windows.train_end])],
             "test": [deepar_line(series_start, series[:end]) for end in windows.validation_ends],
             "forecast": [deepar_line(series_start, series[:origin]) for origin in windows.test_origins]}
    return {channel: "\n".join(channel_lines) + "\n" for channel, channel_lines in lines.items()}


# ---------------------------------------------------------------- evaluation and the gate

def evaluate_forecasters(actuals: np.ndarray, forecasts: dict[str, dict], horizon: int) -> dict[str, dict]:
    """Mean wQL (0.1..0.9), per-quantile wQL, RMSE and coverage, and the worst hour's mean wQL (what the hourly
    monitor will see on a bad hour), for the model and each baseline on the same windows."""
    per_hour = max(1, 60 // horizon)  # test windows in an hour
    evaluation = {name: {**evaluate(actuals, f), "worst_hour_wQuantileLoss": worst_hour(actuals, f, per_hour)}
                  for name, f in forecasts.items()}
    log.info("mean wQL: %s", ", ".join(f"{name} {e['mean_wQuantileLoss']:.4f}" for name, e in evaluation.items()))
    return evaluation


def worst_hour(actuals: np.ndarray, forecast: dict, windows_per_hour: int) -> float:
    """The highest mean wQL of any hour of consecutive test windows."""
    return max(mean_weighted_quantile_loss(actuals[i:i + windows_per_hour],
                                           {key: values[i:i + windows_per_hour] for key, values in forecast.items()})
               for i in range(0, len(actuals), windows_per_hour))


def baseline_scores(evaluation: dict[str, dict]) -> dict[str, float]:
    return {name: e["mean_wQuantileLoss"] for name, e in evaluation.items() if name != MODEL}


def decide_gate(evaluation: dict[str, dict], threshold: float, margin: float) -> GateDecision:
    """The quality gate on an evaluation, with the threshold and margin read when the gate runs."""
    return gate.decide(evaluation[MODEL]["mean_wQuantileLoss"], baseline_scores(evaluation), threshold, margin)


# ---------------------------------------------------------------- the artifacts

def save_forecasts(path: Path, series: np.ndarray, series_start: pd.Timestamp, origins: list[int],
                   actuals: np.ndarray, forecasts: dict[str, dict]) -> None:
    """test_forecasts.npz: the target series, the test origins, the actuals and every forecaster's quantiles."""
    np.savez(path, actuals=actuals, origins=origins, series=series, series_start=int(series_start.timestamp()),
             **{f"{name}|{key}": v for name, f in forecasts.items() for key, v in f.items()})


def load_forecasts(path: Path) -> tuple[pd.Series, list[int], np.ndarray, dict[str, dict]]:
    """What :func:`save_forecasts` wrote: (target, test origins, actuals, forecaster -> quantity -> array)."""
    forecasts: dict[str, dict] = {}
    with np.load(path) as saved:
        start = pd.Timestamp(int(saved["series_start"]), unit="s", tz="UTC")
        target = pd.Series(saved["series"], index=pd.date_range(start, periods=len(saved["series"]), freq="min"),
                           name=TARGET)
        for key in saved.files:
            if "|" in key:
                name, quantity = key.split("|")
                forecasts.setdefault(name, {})[quantity] = saved[key]
        return target, saved["origins"].tolist(), saved["actuals"], forecasts
