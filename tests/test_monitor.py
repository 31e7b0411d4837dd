"""The hourly monitor: per-stage scoring, idempotent publishing across re-runs and restarts, one retrain in flight."""
import json
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
from test_model_build import SMALL, set_gate

from conftest import PINNED_NOW, private_copy, wait_for
from helpers.core.deepar_json import deepar_request
from helpers.core.metrics import DEFAULT_QUANTILES, mean_weighted_quantile_loss
from helpers.endpoints import deploy
from helpers.ingestion import ingest
from helpers.local import daemon, services
from helpers.local.config import Paths
from helpers.monitoring import alarms, monitor, retrain
from helpers.registry import ModelRegistry
from helpers.training import model_build
from helpers.training.interface import WQL_THRESHOLD
from helpers.training.params import ParameterStore
from helpers.training.pipeline import ExecutionStore

pytestmark = pytest.mark.slow
HOUR = 3600


@pytest.fixture(scope="module")
def trained_state(tmp_path_factory):
    """Two days of features and one registered version."""
    state = tmp_path_factory.mktemp("monitor") / "state"
    ingest.backfill(state, days=2.0, now=PINNED_NOW, progress=False)
    set_gate(state, 1.0)
    assert model_build.run(state, SMALL).succeeded
    return state


@pytest.fixture
def state(trained_state, tmp_path, monkeypatch):
    copy = private_copy(trained_state, tmp_path, monkeypatch)
    yield copy
    services.stop_all(copy)


@pytest.fixture
def serving(state):
    """Version 1 on staging and prod."""
    deploy.approve(state, 1, by="ana", reason="test")
    deploy.promote(state, 1, by="ana", reason="test")
    return state


def hours_ago(state, hours: int) -> pd.Timestamp:
    """The start of the hour ``hours`` before the newest minute's hour."""
    return deploy.latest_minutes(state, 60).index[-1].floor("h") - pd.Timedelta(hours=hours)


def every_20_minutes(start: pd.Timestamp, minutes: int) -> list[pd.Timestamp]:
    return [start + pd.Timedelta(minutes=m) for m in range(0, minutes, 20)]


def forecast_back_then(state, stage: str, origins: list[pd.Timestamp]) -> None:
    """Ask ``stage`` for forecasts as the application would have at each origin (history up to it)."""
    series = deploy.latest_minutes(state, 2 * 1440)
    for origin in origins:
        deploy.invoke(state, stage, deepar_request(series[:origin - pd.Timedelta(minutes=1)].iloc[-600:]))


def test_each_stage_is_scored_on_its_own_forecasts_over_every_matured_point(serving):
    state = serving
    hour = hours_ago(state, 3)
    forecast_back_then(state, "prod", [hour + pd.Timedelta(minutes=m) for m in range(0, 60, 10)])
    forecast_back_then(state, "staging", [hour + pd.Timedelta(minutes=30)])

    results = {(r["stage"], r["hour"]): r for r in monitor.run_now(state)}
    key = hour.strftime("%Y-%m-%dT%H:%M:%SZ")
    prod, staging = results[("prod", key)], results[("staging", key)]
    # 6 forecasts of 30 minutes from :00 to :50: those from :40 and :50 run past the hour, 150 points inside it
    assert prod["forecasts"] == 6 and prod["points"] == 150 and prod["versions"] == [1]
    assert staging["forecasts"] == 1 and staging["points"] == 30  # the smoke test's forecast is another hour's

    # the same number, computed independently from the capture and the feature store
    from helpers.endpoints.serving import read_capture

    actuals = deploy.latest_minutes(state, 2 * 1440)
    event = [e for e in read_capture(deploy.capture_dir(Paths.at(state), "staging"))
             if len(json.loads(e["captureData"]["endpointInput"]["data"])["instances"][0]["target"]) == 600][0]
    answer = json.loads(event["captureData"]["endpointOutput"]["data"])["predictions"][0]
    window = actuals[hour + pd.Timedelta(minutes=30):][:30].to_numpy(float)
    expected = mean_weighted_quantile_loss(window, {str(q): np.array(answer["quantiles"][str(q)])
                                                    for q in DEFAULT_QUANTILES})
    assert staging["wql"] == pytest.approx(expected, rel=1e-9)

    metrics, _ = alarms.open_stores(Paths.at(state).monitoring)
    published = metrics.frame()
    threshold = ParameterStore(Paths.at(state).params).get_float(WQL_THRESHOLD)
    for dimensions in ('[["StageName", "prod"]]', '[["ModelVersion", "1"], ["StageName", "prod"]]'):  # v1 alone
        rows = published[(published["dimensions"] == dimensions) & (published["timestamp"] == hour)]
        assert dict(zip(rows["metric"], rows["value"])) == {alarms.WQL_METRIC: prod["wql"],
                                                            alarms.THRESHOLD_METRIC: threshold}


def test_rerunning_or_restarting_the_monitor_never_publishes_an_hour_twice(serving):
    state = serving
    paths = Paths.at(state)
    forecast_back_then(state, "prod", every_20_minutes(hours_ago(state, 4), 180))
    first = monitor.run_now(state)
    assert first and monitor.run_now(state) == []  # nothing new matured: nothing evaluated again
    metrics, _ = alarms.open_stores(paths.monitoring)
    before = metrics.frame()

    # a crash after publishing but before the ledger was written: the next run evaluates those hours again
    ledger = monitor.Ledger(paths)
    ledger._conn.execute("DELETE FROM evaluations")
    again = monitor.run_now(state)
    assert {(r["stage"], r["hour"]) for r in again} == {(r["stage"], r["hour"]) for r in first}
    pd.testing.assert_frame_equal(metrics.frame(), before)  # ... and publishes nothing twice

    # the service itself, killed and restarted: every hour once, the ones that matured meanwhile caught up
    monitor.start(state)
    wait_for(lambda: (paths.monitoring / "status.json").exists(), what="the monitor's first run")
    os.kill(daemon.read_pid(paths.pid_file("monitor")), signal.SIGKILL)
    wait_for(lambda: not monitor.running(state), what="the monitor to die")
    monitor.start(state)
    monitor.run_now(state)
    after = metrics.frame()
    assert not after.duplicated(["metric", "dimensions", "timestamp"]).any()
    pd.testing.assert_frame_equal(after.iloc[:len(before)], before)
    evaluations = monitor.timeline(state)
    assert not evaluations.duplicated(["stage", "hour"]).any()


def test_one_retrain_in_flight_however_many_alarms_fire(state):
    paths = Paths.at(state)
    monitor.MonitorConfig(retrain_epochs=1, retrain_training_days=1.5).save(paths)
    ModelRegistry(paths.registry).set_approval("btc-avg-fee-deepar", 1, "Approved", "ana", "test")

    barrier = threading.Barrier(6)
    alarm_period_end = PINNED_NOW - 3600  # an hour before the newest data: the retrain must not read past it

    def alarm_fires(i):
        barrier.wait()
        return retrain.request(paths, requested_by=f"alarm-{i % 2}", reason="test", data_end=alarm_period_end)

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(alarm_fires, range(6)))
    assert outcomes.count("started") == 1, outcomes
    assert all(o.startswith("skipped: a retrain is already in flight") for o in outcomes if o != "started")
    ended = ["PendingManualApproval", "Failed", "FailedQualityGate"]
    wait_for(lambda: monitor.retrains(state)["status"].isin(ended).any(), timeout_s=300, what="the retrain to end")
    frame = monitor.retrains(state)
    assert frame["status"].value_counts().to_dict() == {"Skipped": 5, "PendingManualApproval": 1}
    executions = ExecutionStore(paths.pipelines)
    assert len(executions.list()) == 2  # the fixture's build and this one retrain
    retrained = executions.get(frame.loc[frame["status"] == "PendingManualApproval", "execution_id"].item())
    assert retrained.parameters["end"] == alarm_period_end  # the data the alarm judged, not the clock's now

    # the new version awaits a human: the next alarm starts nothing, and says why
    assert retrain.request(paths, requested_by="alarm-0", reason="again").startswith("skipped: version 2 awaits")


def test_the_lock_holds_between_processes_racing_past_the_first_check(state):
    """Two retrain processes started at once (both passed the request's check): one runs, one skips."""
    paths = Paths.at(state)
    retrains = retrain.RetrainLog(paths)
    ids = [retrains.add("alarm", "race", "Requested") for _ in range(2)]
    with retrain.single_flight(paths) as held:  # as if the first process had just taken the lock
        assert held and retrain.in_flight(paths)
        assert retrain.run(state, ids[1]) == "Skipped"
    assert not retrain.in_flight(paths)


def test_a_fresh_model_is_judged_only_on_the_hours_it_served_alone(tmp_path):
    """The alarm watches the ModelVersion it serves: an hour of an earlier version, or of two, is missing data."""
    metrics, _ = alarms.open_stores(tmp_path)
    for hour, versions, wql in ((0, [1], 0.9), (1, [1], 0.9), (2, [1, 2], 0.9), (3, [2], 0.1), (4, [2], 0.3)):
        published = {"StageName": "prod", **({"ModelVersion": str(versions[0])} if len(versions) == 1 else {})}
        for dimensions in ({"StageName": "prod"}, published):
            metrics.put_metric_data(alarms.NAMESPACE, [
                {"MetricName": name, "Dimensions": [{"Name": k, "Value": v} for k, v in dimensions.items()],
                 "Timestamp": hour * 3600, "Value": value}
                for name, value in ((alarms.WQL_METRIC, wql), (alarms.THRESHOLD_METRIC, 0.2))])
    settings = monitor.alarm_settings("prod", monitor.MonitorConfig(), model_version=2)
    assert settings.dimensions == {"StageName": "prod", "ModelVersion": "2"}
    assert metrics.alarm_series(settings, 0, 5 * 3600) == pytest.approx({3 * 3600: -0.1, 4 * 3600: 0.1})
    state, reason = alarms.evaluate([None, None, None, -0.1, 0.1], settings.threshold, settings, alarms.OK)
    assert state == alarms.OK and "weighted_quantile_loss - weighted_quantile_loss_threshold" in reason
    version_1 = monitor.alarm_settings("prod", monitor.MonitorConfig(), model_version=1)
    assert metrics.alarm_series(version_1, 0, 5 * 3600) == pytest.approx({0: 0.7, 3600: 0.7})


def test_the_alarm_is_a_cloudwatch_metric_math_alarm_moto_accepts():
    import boto3
    from moto import mock_aws

    settings = monitor.alarm_settings("prod", monitor.MonitorConfig(), model_version=3)
    with mock_aws():
        cloudwatch = boto3.client("cloudwatch", region_name="eu-west-1")
        cloudwatch.put_metric_alarm(**settings.metric_alarm_request())
        alarm = cloudwatch.describe_alarms(AlarmNames=[settings.name])["MetricAlarms"][0]
    assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"], alarm["Threshold"]) == (5, 3, 0.0)
    assert alarm["TreatMissingData"] == "notBreaching" and alarm["ComparisonOperator"] == settings.comparison
    by_id = {query["Id"]: query for query in alarm["Metrics"]}
    assert by_id["excess"]["Expression"] == "score - bar" and by_id["excess"]["ReturnData"]
    assert by_id["bar"]["MetricStat"]["Metric"]["MetricName"] == alarms.THRESHOLD_METRIC
    assert {"Name": "ModelVersion", "Value": "3"} in by_id["score"]["MetricStat"]["Metric"]["Dimensions"]


def test_the_threshold_published_with_each_hour_decides_its_alarm(serving):
    state = serving
    paths = Paths.at(state)
    forecast_back_then(state, "prod", every_20_minutes(hours_ago(state, 5), 240))
    ParameterStore(paths.params).put(WQL_THRESHOLD, 1e-6, by="test")  # every hour breaches
    monitor.MonitorConfig(auto_approve=False).save(paths)
    results = monitor.run_now(state)
    prod = [r for r in results if r["stage"] == "prod"]
    assert [r["alarm"] for r in prod if r["wql"] is not None][-1] == alarms.ALARM
    assert monitor.status(state)["alarms"]["prod"]["StateValue"] == alarms.ALARM
    history = monitor.alarm_history(state)
    assert history.iloc[-1]["threshold"] == pytest.approx(1e-6)
    wait_for(lambda: paths.pid_file("retrain").exists(), what="the alarm's retrain to run")
    assert (monitor.retrains(state)["status"] != "Skipped").sum() == 1  # both stages' alarms: one retrain

    assert services.stop_all(state) == []  # a teardown mid-retrain: recorded as such, never "Executing" forever
    started = monitor.retrains(state).query("status != 'Skipped'")
    assert started["status"].tolist() == ["Stopped"] and "SIGTERM" in started["detail"].iloc[0]
