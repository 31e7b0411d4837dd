"""Training benchmarks: DeepAR against the simulator's oracle and the naive baselines over many model builds, the
quality gate's pass rate and power, and the training time on 7 days of minutes.

- The fixed week: the whole pipeline (stream backfill, feature store, model build) on one pinned week.
- The builds: ``BUILDS`` histories of 7 days, each ending at its own instant (build i ends in hour i of the day,
  on a day and minute drawn at random in 2026) with its own simulator and training seed. Each runs the pipeline's
  own Prepare, Train, Forecast and Evaluate steps on the simulator's true per-minute series, then the gate.
- The gate study: ``GATE_STUDY`` more instants (no training) for how often the oracle itself passes the gate and
  beats the best baseline, and how often a clearly worse forecast (the oracle's quantiles x 1.5) is rejected.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import replace

import numpy as np
import pandas as pd

from bench.common import Record
from helpers.core import gate
from helpers.core.baselines import baseline_forecasts
from helpers.core.metrics import mean_weighted_quantile_loss
from helpers.core.preparation import BuildSettings
from helpers.ingestion import ingest
from helpers.ingestion.sources.oracle import oracle_forecasts
from helpers.ingestion.sources.simulator import SimulatorConfig, TransactionModel
from helpers.local.config import Paths
from helpers.training import model_build
from helpers.training.interface import BASELINE_MARGIN, MODEL_BUILD_DEFAULTS, WQL_THRESHOLD
from helpers.training.params import ParameterStore

WEEK_START = 1_767_571_200  # 2026-01-05T00:00Z: a fixed week, so every run trains on the same data
SEED = 42
BUILDS = 24
GATE_STUDY = 72
YEAR_START = 1_767_225_600  # 2026-01-01T00:00Z
ORACLE_PATHS = 400
WORSE_FACTOR = 1.5  # a clearly worse forecast: every quantile 50 % too high


def run() -> list[Record]:
    return fixed_week() + many_builds()


def fixed_week() -> list[Record]:
    settings = BuildSettings(seed=SEED)
    with tempfile.TemporaryDirectory() as tmp:
        ingest.backfill(tmp, days=7.0 + settings.n_test_windows * 30 / 1440 + 0.05, seed=SEED, start=WEEK_START,
                        progress=False)
        open_gate(ParameterStore(Paths.at(tmp).params))  # measure, never gate
        execution = model_build.run(tmp, settings)
        if not execution.succeeded:
            raise RuntimeError(f"the model build failed: {execution.failure_reason}")
    outputs = execution.outputs
    scores = {name: e["mean_wQuantileLoss"] for name, e in execution.evaluation.items()}
    scores["oracle"] = oracle_score(SimulatorConfig(seed=SEED), {"series_start": execution.target.index[0],
                                                                 "test_origins": execution.test_origins,
                                                                 "actuals": execution.actuals})
    details = {"mean_wQuantileLoss": scores, "test_windows": settings.n_test_windows,
               "epochs_run": outputs["epochs_run"], "stopped_early": outputs["stopped_early"],
               "device": outputs["device"], "train_minutes": outputs["train_minutes"]}
    return [Record("train.wall_time_7d", outputs["train_seconds"], "s", "<= 60", details),
            Record("train.wql_vs_oracle", scores["deepar"] / scores["oracle"], "ratio", "<= 1.10", details)]


def open_gate(params: ParameterStore) -> None:
    params.put(WQL_THRESHOLD, 10.0, by="bench")
    params.put(BASELINE_MARGIN, 10.0, by="bench")


def instants(n: int, seed: int = 2026) -> list[int]:
    """History ends nobody picked: instant i in hour i % 24 of a random day of 2026, at a random minute."""
    rng = np.random.default_rng(seed)
    days, minutes = rng.integers(0, 365, n), rng.integers(0, 60, n)
    return [int(YEAR_START + 86400 * day + 3600 * (i % 24) + 60 * minute)
            for i, (day, minute) in enumerate(zip(days, minutes))]


def history(seed: int, end: int, days: float) -> tuple[np.ndarray, pd.Timestamp]:
    start = end - int(days * 86400)
    return TransactionModel(SimulatorConfig(seed=seed)).avg_fee_per_minute(start, end), \
        pd.Timestamp(start, unit="s", tz="UTC")


def oracle_score(config: SimulatorConfig, context: dict, factor: float = 1.0) -> float:
    origins = [int(context["series_start"].timestamp()) + 60 * o for o in context["test_origins"]]
    forecast = oracle_forecasts(config, origins, context["actuals"].shape[1], n_paths=ORACLE_PATHS)
    return mean_weighted_quantile_loss(context["actuals"], {k: v * factor for k, v in forecast.items()})


def decide(score: float, baselines: dict[str, float]) -> gate.GateDecision:
    """The gate with its defaults, as a fresh state directory has them."""
    return gate.decide(score, baselines, MODEL_BUILD_DEFAULTS[WQL_THRESHOLD], MODEL_BUILD_DEFAULTS[BASELINE_MARGIN])


def one_build(i: int, end: int) -> dict:
    """DeepAR, a one-batch DeepAR, the baselines and the oracle on one history's test windows."""
    seed = i + 1
    settings = BuildSettings(seed=seed)
    series, start = history(seed, end, settings.training_days)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        ctx = model_build.evaluate_on_series(series, start, settings, tmp)
        seconds = time.perf_counter() - started
        barely = replace(settings, hyperparameters=replace(settings.hyperparameters, epochs=1,
                                                           num_batches_per_epoch=1))
        one_batch = model_build.evaluate_on_series(series, start, barely, tmp)
    scores = {name: e["mean_wQuantileLoss"] for name, e in ctx["evaluation"].items()}
    baselines = {k: v for k, v in scores.items() if k != "deepar"}
    worse = {k: v * WORSE_FACTOR for k, v in ctx["forecasts"]["deepar"].items()}
    return {"end": pd.Timestamp(end, unit="s", tz="UTC").isoformat(), "seed": seed, **scores,
            "oracle": oracle_score(SimulatorConfig(seed=seed), ctx), "best_baseline": min(baselines.values()),
            "passed": decide(scores["deepar"], baselines).passed,
            "worse_rejected": not decide(mean_weighted_quantile_loss(ctx["actuals"], worse), baselines).passed,
            "one_batch_rejected": not decide(one_batch["evaluation"]["deepar"]["mean_wQuantileLoss"],
                                             baselines).passed,
            "train_seconds": ctx["step_outputs"]["train_seconds"], "build_seconds": seconds}


def oracle_only(i: int, end: int) -> dict:
    """The oracle, a clearly worse oracle and the baselines on one history's test windows (no training)."""
    seed = 10_000 + i
    settings = BuildSettings()
    series, start = history(seed, end, 4.5)  # enough for the baselines' back-tests
    horizon = settings.hyperparameters.prediction_length
    origins = [len(series) - (settings.n_test_windows - k) * horizon for k in range(settings.n_test_windows)]
    ctx = {"series_start": start, "test_origins": origins, "actuals": np.stack([series[o:o + horizon]
                                                                               for o in origins])}
    baselines = {name: mean_weighted_quantile_loss(ctx["actuals"], f)
                 for name, f in baseline_forecasts(series, origins, horizon).items()}
    config = SimulatorConfig(seed=seed)
    oracle, worse = oracle_score(config, ctx), oracle_score(config, ctx, WORSE_FACTOR)
    return {"oracle": oracle, "best_baseline": min(baselines.values()), "passed": decide(oracle, baselines).passed,
            "worse_rejected": not decide(worse, baselines).passed}


def many_builds() -> list[Record]:
    ends = instants(BUILDS + GATE_STUDY)
    builds = [one_build(i, end) for i, end in enumerate(ends[:BUILDS])]
    study = [oracle_only(i, end) for i, end in enumerate(ends[BUILDS:])]
    frame = pd.DataFrame(builds)
    vs_oracle = frame["deepar"] / frame["oracle"]
    vs_best = frame["deepar"] / frame["best_baseline"]
    oracle_cases = [*({"oracle": b["oracle"], "best_baseline": b["best_baseline"],
                       "passed": decide(b["oracle"], {"best": b["best_baseline"]}).passed} for b in builds), *study]
    worse_rejections = [*frame["worse_rejected"], *frame["one_batch_rejected"], *(s["worse_rejected"] for s in study)]
    details = {"builds": builds, "test_windows": BuildSettings().n_test_windows,
               "gate": {"threshold": MODEL_BUILD_DEFAULTS[WQL_THRESHOLD],
                        "margin": MODEL_BUILD_DEFAULTS[BASELINE_MARGIN]},
               "vs_oracle": {"p10": float(vs_oracle.quantile(0.1)), "p90": float(vs_oracle.quantile(0.9)),
                             "max": float(vs_oracle.max())},
               "vs_best_baseline": {"std": float(vs_best.std()), "max": float(vs_best.max())},
               "oracle_cases": len(oracle_cases), "clearly_worse_cases": len(worse_rejections),
               "median_train_seconds": statistics.median(frame["train_seconds"])}
    beats = [c["oracle"] < c["best_baseline"] for c in oracle_cases]
    return [
        Record("train.wql_vs_oracle_median", float(vs_oracle.median()), "ratio", "<= 1.10", details),
        Record("train.wql_vs_best_baseline_mean", float(vs_best.mean()), "ratio", "<= 0.90", details),
        Record("train.gate_pass_rate", float(frame["passed"].mean()), "share", ">= 0.95", details),
        Record("train.gate_power", float(np.mean(worse_rejections)), "share", ">= 0.99", details),
        Record("train.gate_oracle_pass_rate", float(np.mean([c["passed"] for c in oracle_cases])), "share",
               ">= 0.99", details),
        Record("train.oracle_beats_baseline_rate", float(np.mean(beats)), "share", "info", details),
    ]
