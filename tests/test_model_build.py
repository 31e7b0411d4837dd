"""The model build pipeline end to end on small data, its quality gate, registry record and error cases."""
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from conftest import PINNED_NOW
from helpers.core.hyperparameters import DeepARHyperparameters, HyperparameterError
from helpers.core.preparation import BuildSettings
from helpers.feature_store import open_tx_per_minute
from helpers.ingestion import ingest
from helpers.local.config import Paths
from helpers.registry import ModelRegistry
from helpers.training import deepar, model_build
from helpers.training.interface import BASELINE_MARGIN, MODEL_BUILD_DEFAULTS, WQL_THRESHOLD
from helpers.training.params import ParameterStore
from helpers.training.pipeline import ExecutionStore, Pipeline, Step

SMALL = BuildSettings(
    hyperparameters=DeepARHyperparameters(context_length=30, epochs=2, num_batches_per_epoch=5,
                                                 num_instances_per_pass=16, num_cells=16),
    training_days=1.5, n_test_windows=4, n_validation_windows=2, num_samples=50)


@pytest.fixture(scope="module")
def features_state(tmp_path_factory):
    """Two days of simulated features, shared by the tests that only read them."""
    state = tmp_path_factory.mktemp("build") / "state"
    ingest.backfill(state, days=2.0, now=PINNED_NOW, progress=False)
    return state


@pytest.fixture
def state(features_state, tmp_path):
    """A copy of the features with fresh parameters, pipelines and registry."""
    import shutil

    copy = tmp_path / "state"
    shutil.copytree(features_state, copy)
    return copy


def set_gate(state, threshold, margin=10.0):
    """The quality gate's two parameters; a wide margin by default, since tests of other things use tiny models."""
    params = ParameterStore(Paths.at(state).params)
    params.put(WQL_THRESHOLD, threshold, by="test")
    params.put(BASELINE_MARGIN, margin, by="test")


def test_pipeline_registers_a_version_pending_approval_carrying_everything(state):
    set_gate(state, 1.0)
    execution = model_build.run(state, SMALL)
    assert execution.status == "Succeeded", execution.failure_reason
    steps = execution.steps.set_index("name")
    assert list(steps.index) == ["Extract", "Prepare", "Train", "Forecast", "Evaluate", "QualityGate", "Register"]
    assert (steps["status"] == "Succeeded").all() and (steps["seconds"] >= 0).all()
    assert "quality gate passed" in steps.loc["QualityGate", "log"]

    version = ModelRegistry(Paths.at(state).registry).get("btc-avg-fee-deepar", execution.outputs["model_version"])
    assert version.approval_status == "PendingManualApproval"
    assert version.pipeline_execution_id == execution.execution_id
    assert version.feature_group == "btc-tx-per-minute"
    assert version.hyperparameters == SMALL.hyperparameters.to_dict()
    assert pd.Timestamp(version.data_range["end"]) - pd.Timestamp(version.data_range["start"]) == pd.Timedelta("1.5D")
    assert {"mean_wQuantileLoss", "wQuantileLoss[0.1]", "wQuantileLoss[0.9]", "RMSE", "coverage[0.1-0.9]"} <= set(
        version.metrics)
    assert set(version.baselines) == {"seasonal_naive", "naive_last_value"}
    assert version.metrics["mean_wQuantileLoss"] == execution.outputs["mean_wQuantileLoss"]

    predictor = deepar.load(ModelRegistry(Paths.at(state).registry).model_path(version.group, version.version))
    series = execution.target
    forecast = deepar.forecast(predictor, series.index[0], [series.to_numpy()[:-30]], "1min", (0.1, 0.5, 0.9))
    assert forecast["0.5"].shape == (1, 30) and (forecast["0.1"] <= forecast["0.9"]).all()


def test_the_same_data_and_seed_give_exactly_the_same_metrics_in_any_process(state):
    set_gate(state, 1.0)
    first = model_build.run(state, SMALL)
    in_another_process = subprocess.run(
        [sys.executable, "-c", "import sys, json; from helpers.training import model_build as m; "
                               "from helpers.core.preparation import BuildSettings; print(json.dumps(m.run("
                               "sys.argv[1], BuildSettings.from_parameters(json.loads(sys.argv[2]))).outputs))",
         str(state), json.dumps(first.parameters)], capture_output=True, text=True, timeout=300, check=True)
    second = json.loads(in_another_process.stdout.strip().splitlines()[-1])
    metrics = ("mean_wQuantileLoss", "best_validation_loss", "baselines_mean_wQuantileLoss", "epochs_run")
    assert {k: first.outputs[k] for k in metrics} == {k: second[k] for k in metrics}  # exactly, not approximately
    other_seed = model_build.run(state, replace(SMALL, seed=7))
    assert other_seed.outputs["mean_wQuantileLoss"] != first.outputs["mean_wQuantileLoss"]


def test_the_gate_reads_both_parameters_when_it_runs_and_a_rejection_keeps_its_numbers(state):
    registry = ModelRegistry(Paths.at(state).registry)
    set_gate(state, 1e-6)
    failed = model_build.run(state, SMALL)
    assert failed.status == "FailedQualityGate"
    assert "quality gate failed: mean wQL" in failed.failure_reason
    assert "threshold 0.0000 (FAILED)" in failed.failure_reason
    assert failed.steps.set_index("name").loc["Register", "status"] == "Skipped"
    assert failed.outputs["gate"]["passed_threshold"] is False and failed.outputs["gate"]["threshold"] == 1e-6
    assert registry.versions().empty

    set_gate(state, 1.0, margin=0.0)  # the same settings: the new values are read at run time
    strict = model_build.run(state, SMALL)
    gate = strict.outputs["gate"]
    best = min(strict.outputs["baselines_mean_wQuantileLoss"].values())
    assert gate["best_baseline_score"] == best and gate["passed_baseline"] == (gate["score"] <= best)
    assert strict.status == ("Succeeded" if gate["score"] <= best else "FailedQualityGate")

    set_gate(state, 1.0, margin=10.0)
    passed = model_build.run(state, SMALL)
    assert passed.status == "Succeeded" and len(registry.versions()) == 1 + (strict.status == "Succeeded")
    version = registry.get("btc-avg-fee-deepar", passed.outputs["model_version"])
    assert version.tags["quality_gate"].startswith("quality gate passed: ")
    assert "(1 + margin 10)" in version.tags["quality_gate"]

    runs = registry.client.search_runs([registry.experiment_id])  # every execution is a run, rejected ones too
    by_execution = {r.data.tags["pipeline_execution_id"]: r.data.tags for r in runs}
    assert set(by_execution) == {failed.execution_id, strict.execution_id, passed.execution_id}
    assert by_execution[failed.execution_id]["pipeline_status"] == "FailedQualityGate"
    assert "FAILED" in by_execution[failed.execution_id]["quality_gate"]


def test_a_fresh_state_directory_gets_the_gates_defaults_from_the_command_line(state):
    cli = subprocess.run([sys.executable, "-m", "helpers", "--state-dir", str(state), "train", "--epochs", "1"],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert ": Succeeded" in cli.stdout or ": FailedQualityGate (QualityGate: quality gate failed" in cli.stdout
    params = ParameterStore(Paths.at(state).params)
    assert {name: params.get_float(name) for name in MODEL_BUILD_DEFAULTS} == MODEL_BUILD_DEFAULTS


def test_too_little_data_names_the_minutes_needed_and_how_long_to_wait(tmp_path):
    state = tmp_path / "state"
    ingest.backfill(state, days=0.5, now=PINNED_NOW, progress=False)
    set_gate(state, 1.0)
    execution = model_build.run(state, SMALL)
    assert execution.status == "Failed"
    reason = execution.failure_reason
    assert reason.startswith("Prepare: ValueError: too little data: 1680 minutes (28.0 h) are needed")
    assert "Let the stream run" in reason and "python -m helpers backfill --days 3" in reason


def test_mostly_missing_data_is_refused(tmp_path):
    state = tmp_path / "state"
    group = open_tx_per_minute(Paths.at(state).feature_store)
    start = 1_800_000_000 // 60 * 60
    records = [{"tx_minute": pd.Timestamp(start + 60 * i, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ"),
                "window_start": float(start + 60 * i), "event_time": float(start + 60 * i + 60), "revision": 0,
                "tx_count": 10, "total_fee": 1000, "avg_fee": 100.0} for i in range(2400) if i % 3 == 0]
    group.put_records(records, "sparse")
    set_gate(state, 1.0)
    execution = model_build.run(state, SMALL)
    assert execution.status == "Failed" and "mostly gaps: 67% of the minutes have no record" in execution.failure_reason


@pytest.mark.parametrize(("values", "message"), [
    ({"epochs": 0}, "epochs=0 is out of range: use 1 to 1000"),
    ({"dropout_rate": 1.5}, "dropout_rate=1.5 is out of range"),
    ({"num_cells": 40.5}, "num_cells=40.5: must be an integer"),
    ({"likelihood": "poisson"}, "likelihood='poisson': use one of"),
    ({"time_freq": "every minute"}, "time_freq='every minute'"),
    ({"learning_rate_x": 0.1}, "unknown hyperparameter 'learning_rate_x'"),
])
def test_hyperparameters_out_of_range_are_refused_by_name(values, message):
    with pytest.raises(HyperparameterError, match=message.replace("(", r"\(").replace("[", r"\[")):
        DeepARHyperparameters.from_dict(values)


def test_sagemaker_hyperparameters_are_strings_under_sagemaker_names():
    sagemaker = DeepARHyperparameters().sagemaker()
    assert sagemaker["likelihood"] == "gaussian" and sagemaker["prediction_length"] == "30"
    assert "num_batches_per_epoch" not in sagemaker and all(isinstance(v, str) for v in sagemaker.values())


def test_a_failing_step_is_recorded_with_its_error_and_the_rest_skipped(tmp_path):
    def boom(ctx):
        raise RuntimeError("disk full")

    store = ExecutionStore(tmp_path)
    pipeline = Pipeline("demo", [Step("A", lambda ctx: {"a": 1}), Step("B", boom), Step("C", lambda ctx: {})])
    execution = pipeline.run(store, {"x": 1})
    assert execution.status == "Failed" and execution.failure_reason == "B: RuntimeError: disk full"
    assert execution.steps["status"].tolist() == ["Succeeded", "Failed", "Skipped"]
    assert "Traceback" in execution.steps["log"].iloc[1] and execution.outputs == {"a": 1}
    assert store.list()["execution_id"].tolist() == [execution.execution_id]
    with pytest.raises(KeyError, match="python -m helpers runs"):
        store.get("nope")


def test_executions_are_visible_from_the_command_line(state):
    set_gate(state, 1.0)
    execution = model_build.run(state, SMALL)
    cli = lambda *args: subprocess.run([sys.executable, "-m", "helpers", "--state-dir", str(state), *args],  # noqa: E731
                                       capture_output=True, text=True, timeout=120)
    listing = cli("runs")
    assert listing.returncode == 0 and execution.execution_id in listing.stdout and "Succeeded" in listing.stdout
    shown = cli("runs", execution.execution_id)
    assert "QualityGate" in shown.stdout and "mean_wQuantileLoss" in shown.stdout
    assert "PendingManualApproval" in cli("models").stdout
    assert cli("param", "get", "/nope").returncode == 2


def test_parameters_are_versioned_with_who_and_why(tmp_path):
    params = ParameterStore(tmp_path / "params.db")
    assert params.put_if_absent(WQL_THRESHOLD, 0.24) == "0.24"
    assert params.put_if_absent(WQL_THRESHOLD, 0.5) == "0.24"  # already set: kept
    params.put(WQL_THRESHOLD, 0.2, by="approver", reason="new model")
    assert params.get_float(WQL_THRESHOLD) == 0.2
    history = params.history(WQL_THRESHOLD)
    assert [(h["version"], h["value"], h["modified_by"]) for h in history] == [(1, "0.24", "user"),
                                                                               (2, "0.2", "approver")]
    with pytest.raises(ValueError, match="use a path"):
        params.put("threshold", 1)
    assert json.dumps(np.float64(0.1).item())  # values are stored as text
