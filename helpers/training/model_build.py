"""The model build pipeline: extract, prepare, train, forecast, evaluate, quality gate, register.

The local twin of the original system's SageMaker Pipeline, step for step, with
its mistakes fixed: the test set is several rolling windows (16 x 30 minutes by
default, not 5 points), validation windows come before them, DeepAR is compared
with baselines on the same windows, and the gate reads its threshold from the
parameter store when it runs.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.core.baselines import baseline_forecasts
from helpers.core.gate import GateDecision
from helpers.core.metrics import DEFAULT_QUANTILES
from helpers.core.preparation import BuildSettings, check_enough, split
from helpers.feature_store import open_tx_per_minute
from helpers.local.clock import write_json_atomic
from helpers.local.config import Paths
from helpers.registry import ModelRegistry
from helpers.training import deepar
from helpers.training.build_steps import (
    EVALUATION_FILE,
    FORECASTS_FILE,
    MODEL,
    baseline_scores,
    decide_gate,
    evaluate_forecasters,
    extract_series,
    load_forecasts,
    save_forecasts,
    split_outputs,
)
from helpers.training.interface import BASELINE_MARGIN, WQL_THRESHOLD, BuildReport
from helpers.training.params import ParameterStore
from helpers.training.pipeline import ExecutionStore, Pipeline, QualityGateFailed, Step

log = logging.getLogger("helpers.training.model_build")


# ---------------------------------------------------------------- the steps


def extract(ctx: dict) -> dict:
    """Read one row per minute of the target from the feature store, on a complete grid."""
    features = open_tx_per_minute(ctx["paths"].feature_store)
    try:
        ctx["series"], ctx["series_start"], outputs = extract_series(features, ctx["settings"])
    finally:
        features.close()
    return outputs


def prepare(ctx: dict) -> dict:
    """Check there is enough data, then split: training | validation windows | test windows."""
    settings: BuildSettings = ctx["settings"]
    check_enough(ctx["series"], settings)
    windows = split(len(ctx["series"]), settings)
    ctx["test_origins"], ctx["validation_ends"], ctx["train_end"] = (windows.test_origins, windows.validation_ends,
                                                                     windows.train_end)
    log.info("training on %d minutes; %d validation and %d test windows of %d minutes", windows.train_end,
             settings.n_validation_windows, settings.n_test_windows, settings.hyperparameters.prediction_length)
    return split_outputs(windows, ctx["series_start"], settings)


def train(ctx: dict) -> dict:
    settings: BuildSettings = ctx["settings"]
    series, started = ctx["series"], time.perf_counter()
    log.info("training DeepAR on %s, seed %d", deepar.device(), settings.seed)
    result = deepar.train(settings.hyperparameters, ctx["series_start"], series[:ctx["train_end"]],
                          [series[:end] for end in ctx["validation_ends"]], settings.seed, ctx["artifacts"] / "train")
    ctx["predictor"] = result.predictor
    ctx["model_dir"] = deepar.save(result.predictor, ctx["artifacts"] / "model")
    log.info("trained %d epochs%s, best validation loss %.4f", result.epochs_run,
             " (stopped early)" if result.stopped_early else "", result.best_validation_loss)
    return {"epochs_run": result.epochs_run, "stopped_early": result.stopped_early, "device": result.device,
            "best_validation_loss": result.best_validation_loss, "train_seconds": time.perf_counter() - started}


def forecast(ctx: dict) -> dict:
    """Batch forecasts for the test windows, from DeepAR and from the baselines."""
    import torch

    settings: BuildSettings = ctx["settings"]
    series, horizon = ctx["series"], settings.hyperparameters.prediction_length
    torch.manual_seed(settings.seed)  # sampling is random too: the same seed, the same forecasts
    ctx["forecasts"] = {MODEL: deepar.forecast(ctx["predictor"], ctx["series_start"],
                                                  [series[:o] for o in ctx["test_origins"]],
                                                  settings.hyperparameters.time_freq, DEFAULT_QUANTILES,
                                                  settings.num_samples),
                        **baseline_forecasts(series, ctx["test_origins"], horizon)}
    ctx["actuals"] = np.stack([series[o:o + horizon] for o in ctx["test_origins"]])
    save_forecasts(ctx["artifacts"] / FORECASTS_FILE, series, ctx["series_start"], ctx["test_origins"],
                   ctx["actuals"], ctx["forecasts"])
    return {"forecasters": list(ctx["forecasts"]), "windows": len(ctx["test_origins"])}


def evaluate_step(ctx: dict) -> dict:
    """Mean wQL and friends for DeepAR and each baseline, on the same test windows."""
    ctx["evaluation"] = evaluate_forecasters(ctx["actuals"], ctx["forecasts"],
                                             ctx["settings"].hyperparameters.prediction_length)
    write_json_atomic(ctx["artifacts"] / EVALUATION_FILE, ctx["evaluation"])  # SageMaker's evaluation.json
    return {"mean_wQuantileLoss": ctx["evaluation"][MODEL]["mean_wQuantileLoss"],
            "baselines_mean_wQuantileLoss": baseline_scores(ctx["evaluation"])}


def quality_gate(ctx: dict) -> dict:
    """mean wQL <= the threshold, and no worse than the best baseline within the margin: both read from the
    parameter store now, when the step runs (helpers.core.gate)."""
    params = ParameterStore(ctx["paths"].params)
    decision = decide_gate(ctx["evaluation"], params.get_float(WQL_THRESHOLD), params.get_float(BASELINE_MARGIN))
    ctx["gate"] = decision
    outputs = {"gate": decision.as_dict()}
    if not decision.passed:
        raise QualityGateFailed(f"{decision.reason}; nothing registered", outputs)
    log.info(decision.reason)
    return outputs


def register(ctx: dict) -> dict:
    settings: BuildSettings = ctx["settings"]
    evaluation = ctx["evaluation"]
    extracted = ctx["step_outputs"]
    version = ModelRegistry(ctx["paths"].registry).register(
        model_dir=ctx["model_dir"], metrics=evaluation[MODEL],
        baselines={k: v for k, v in evaluation.items() if k != MODEL},
        hyperparameters=settings.hyperparameters.to_dict(),
        data_range={"start": extracted["data_start"], "end": extracted["data_end"], "gaps": extracted["gaps"],
                    "test_from": extracted["test_from"]},
        feature_group=extracted["feature_group"], pipeline_execution_id=ctx["execution_id"],
        gate_reason=ctx["gate"].reason)
    return {"model_group": version.group, "model_version": version.version,
            "approval_status": version.approval_status}


STEPS = [
    Step("Extract", extract, "one row per minute of avg_fee from the feature store"),
    Step("Prepare", prepare, "check the data; split training / validation windows / test windows"),
    Step("Train", train, "GluonTS DeepAR, early stopping on the validation loss"),
    Step("Forecast", forecast, "test-window forecasts: DeepAR and the baselines"),
    Step("Evaluate", evaluate_step, "mean weighted quantile loss and friends"),
    Step("QualityGate", quality_gate, "mean wQL <= the threshold, and <= the best baseline x (1 + margin)"),
    Step("Register", register, "MLflow registry, PendingManualApproval"),
]


def run(state_dir=None, settings: BuildSettings | None = None) -> BuildReport:
    """Run the model build pipeline on the latest data; returns its report, read back from its records."""
    paths, settings = Paths.at(state_dir), settings or BuildSettings()
    ParameterStore(paths.params).ensure_model_build_defaults()  # a fresh state directory: the gate's defaults
    execution = Pipeline("model-build", STEPS).run(ExecutionStore(paths.pipelines), settings.to_parameters(),
                                                   context={"settings": settings, "paths": paths})
    built = report(paths, execution.execution_id)
    _log_build(paths, built)
    return built


def report(paths: Paths, execution_id: str) -> BuildReport:
    """What an execution left behind, typed: its records, the gate's decision, evaluation.json and the forecasts."""
    store = ExecutionStore(paths.pipelines)
    try:
        execution = store.get(execution_id)
        artifacts = store.artifacts(execution_id)
    finally:
        store.close()
    steps = execution.steps.set_index("name")["outputs"].map(json.loads)
    gate_outputs = steps.get("QualityGate", {}).get("gate")
    built = BuildReport(execution.execution_id, execution.status, execution.failure_reason, execution.parameters,
                        execution.outputs, execution.steps,
                        gate=GateDecision(**{k: gate_outputs[k] for k in GATE_FIELDS}) if gate_outputs else None)
    if (artifacts / EVALUATION_FILE).exists():
        built.evaluation = json.loads((artifacts / EVALUATION_FILE).read_text())
    if (artifacts / FORECASTS_FILE).exists():
        built.target, built.test_origins, built.actuals, built.forecasts = load_forecasts(artifacts / FORECASTS_FILE)
    return built


GATE_FIELDS = [f.name for f in dataclasses.fields(GateDecision)]


def _log_build(paths: Paths, built: BuildReport) -> None:
    """Every execution is an MLflow run, a rejected or failed one too: what it measured and what the gate said."""
    evaluation = built.evaluation
    ModelRegistry(paths.registry).log_build(
        built.execution_id, built.status, built.parameters["hyperparameters"], evaluation.get(MODEL),
        {k: v for k, v in evaluation.items() if k != MODEL}, built.gate.reason if built.gate else None,
        built.failure_reason)


def evaluate_on_series(series: np.ndarray, series_start: pd.Timestamp, settings: BuildSettings, workdir) -> dict:
    """Prepare, Train, Forecast and Evaluate on a series in memory, as the pipeline runs them on the feature store's:
    for experiments and benchmarks over many histories. Returns the steps' shared context."""
    ctx = {"settings": settings, "series": series, "series_start": series_start, "artifacts": Path(workdir)}
    for step in (prepare, train, forecast, evaluate_step):
        ctx.setdefault("step_outputs", {}).update(step(ctx))
    return ctx
