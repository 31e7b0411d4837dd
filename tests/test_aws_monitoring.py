"""The AWS twin of the monitor, without an AWS account: the scoring code on capture files in SageMaker's real format
and key layout (moto S3), compared with the local monitor's scoring of the same files; the datapoints read back
from moto's CloudWatch; the alarm request; the retrain decision with moto's SageMaker; the schedules enabled and
disabled. Where moto lacks a call (DescribeAlarmHistory, ListPipelineExecutionSteps, invoking a Lambda without
Docker), the test patches that one call on the client, never the code under test."""
import base64
import importlib
import io
import json
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict
from datetime import datetime, timezone

import boto3
import numpy as np
import pandas as pd
import pytest

from conftest import fake_aws_credentials, moto_account
from helpers.core.deepar_json import deepar_request
from helpers.core.metrics import QUANTILE_NAMES, mean_weighted_quantile_loss
from helpers.core.times import minute_iso
from helpers.monitoring import aws as monitoring
from helpers.monitoring import scoring
from helpers.monitoring.cloudwatch import NAMESPACE, THRESHOLD_METRIC, WQL_METRIC
from helpers.monitoring.settings import MonitorSettings

REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's
PREFIX = "ws-test"
BUCKET = "ws-test-bucket"
HOUR = 3600
H = int(time.time()) // HOUR * HOUR - 6 * HOUR  # the hour the captures start in: wall time, as on AWS
THRESHOLD = 0.2


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch):
    monkeypatch.delenv("SCORING_PERIOD_MINUTES", raising=False)
    fake_aws_credentials(monkeypatch, REGION)


@pytest.fixture
def aws():
    with moto_account(PREFIX, REGION, BUCKET) as context:
        yield context


# ---------------------------------------------------------------- captures in SageMaker's format


def actual_fees(start: float, minutes: int) -> pd.Series:
    """What really happened: avg_fee per minute (a slow wave, never 0)."""
    index = pd.date_range(pd.Timestamp(start, unit="s", tz="UTC"), periods=minutes, freq="min", name="window_start")
    return pd.Series(1000 + 200 * np.sin(np.arange(minutes) / 17.0), index=index, dtype=float)


ACTUALS = actual_fees(H - 3 * HOUR, 12 * 60)


def answer(origin: float, bias: float, horizon: int = 30) -> dict:
    """A DeepAR answer from ``origin``: the actuals times ``bias``, spread by quantile."""
    truth = ACTUALS.reindex(pd.date_range(pd.Timestamp(origin, unit="s", tz="UTC"), periods=horizon,
                                          freq="min")).to_numpy(float)
    quantiles = {q: (truth * bias * (0.8 + 0.4 * float(q))).tolist() for q in QUANTILE_NAMES}
    return {"mean": quantiles["0.5"], "quantiles": quantiles}


def capture_event(event_id: str, origin: float, bias: float, base64_output: bool = False) -> dict:
    """SageMaker's capture of one invocation at ``origin``: the request with the hour of history before it, and
    the forecast, as SageMaker writes them (eventMetadata has no model version: the path names the variant)."""
    history = ACTUALS[pd.Timestamp(origin - HOUR, unit="s", tz="UTC"):pd.Timestamp(origin - 60, unit="s", tz="UTC")]
    request = json.dumps(deepar_request(history))
    response = json.dumps({"predictions": [answer(origin, bias)]})
    output = {"observedContentType": "application/json", "mode": "OUTPUT", "data": response, "encoding": "JSON"}
    if base64_output:
        output.update(data=base64.b64encode(response.encode()).decode(), encoding="BASE64",
                      observedContentType="application/octet-stream")
    return {"captureData": {"endpointInput": {"observedContentType": "application/json", "mode": "INPUT",
                                              "data": request, "encoding": "JSON"},
                            "endpointOutput": output},
            "eventMetadata": {"eventId": event_id, "inferenceTime": minute_iso(origin + 20).replace(":00Z", ":20Z")},
            "eventVersion": "0"}


def capture_key(stage: str, variant: str, at: float, name: str) -> str:
    """Where SageMaker puts a capture file: data-capture/<endpoint name>/<variant>/YYYY/MM/DD/HH/<file>.jsonl."""
    return f"data-capture/{PREFIX}-{stage}/{variant}/{pd.Timestamp(at, unit='s', tz='UTC'):%Y/%m/%d/%H}/{name}.jsonl"


def write_capture(files: dict, stage: str, variant: str, at: float, lines: list) -> str:
    """One capture file (``lines``: events or raw text), kept in ``files`` (key -> bytes) for S3 and local disk."""
    key = capture_key(stage, variant, at, f"{int(at)}-{variant}")
    files[key] = b"".join((line if isinstance(line, str) else json.dumps(line)).encode() + b"\n" for line in lines)
    return key


def upload(files: dict) -> None:
    s3 = boto3.client("s3", region_name=REGION)
    for key, body in files.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)


def actuals(start: float, end: float) -> pd.Series:
    return ACTUALS[pd.Timestamp(start, unit="s", tz="UTC"):pd.Timestamp(end - 60, unit="s", tz="UTC")]


def datapoints(metric: str, dimensions: dict, start: float, end: float, period: int) -> dict[float, float]:
    """{period start: Maximum} as moto's CloudWatch holds them."""
    found = boto3.client("cloudwatch", region_name=REGION).get_metric_statistics(
        Namespace=NAMESPACE, MetricName=metric, Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()],
        StartTime=datetime.fromtimestamp(start, timezone.utc), EndTime=datetime.fromtimestamp(end, timezone.utc),
        Period=period, Statistics=["Maximum"])["Datapoints"]
    return {p["Timestamp"].timestamp(): p["Maximum"] for p in found}


def two_versions_in_one_hour(files: dict) -> None:
    """Blue/green within hour H on prod: version 1 (good) forecasts at :00 and :10, version 2 (twice too high) at
    :30 and :40, each its own production variant."""
    for minute, variant, bias in ((0, "model-v1", 1.0), (10, "model-v1", 1.0), (30, "model-v2", 2.0),
                                  (40, "model-v2", 2.0)):
        write_capture(files, "prod", variant, H + 60 * minute, [capture_event(f"{variant}-{minute}", H + 60 * minute,
                                                                               bias)])


# ---------------------------------------------------------------- the shared scoring code


def test_a_captured_event_is_the_same_forecast_for_both_twins():
    from helpers.monitoring import monitor

    event = capture_event("e1", H, 1.0)
    (forecast,) = scoring.forecasts_in_event(event, 3)
    assert (forecast.event_id, forecast.model_version, forecast.origin, forecast.horizon) == ("e1-0", 3, H, 30)
    assert forecast.quantiles["0.9"].tolist() == answer(H, 1.0)["quantiles"]["0.9"]
    # the local ledger's row is the same forecast
    (row,) = monitor._forecasts(event, "prod", 3)
    assert row[:5] == ("e1-0", "prod", 3, H, 30) and json.loads(row[5]) == answer(H, 1.0)["quantiles"]
    # an output SageMaker captured as base64 (a content type not listed as JSON) is the same forecast
    (again,) = scoring.forecasts_in_event(capture_event("e1", H, 1.0, base64_output=True), 3)
    assert again.origin == H and again.quantiles["0.1"].tolist() == forecast.quantiles["0.1"].tolist()
    # an answer without the quantiles, an endpoint's error, a broken event: nothing to score
    other = capture_event("e2", H, 1.0)
    other["captureData"]["endpointOutput"]["data"] = json.dumps({"predictions": [{"mean": [1.0] * 30}]})
    error = capture_event("e3", H, 1.0)
    error["captureData"]["endpointOutput"]["data"] = "ModelError: the model crashed"
    assert scoring.forecasts_in_event(other, 3) == scoring.forecasts_in_event(error, 3) == []
    assert scoring.forecasts_in_event({"captureData": {}}, 3) == []


def test_a_capture_key_names_the_endpoint_the_variant_and_the_hour():
    key = capture_key("prod", "model-v2", H + 1234, "abc")
    assert scoring.parse_capture_key(key) == scoring.CaptureKey(f"{PREFIX}-prod", "model-v2", H)
    assert scoring.capture_hour_prefix(f"{PREFIX}-prod", "model-v2", H) == key.rsplit("/", 1)[0] + "/"
    assert scoring.parse_capture_key("data-capture/x/model-v1/2027/01/15/02/readme.txt") is None
    assert scoring.parse_capture_key("monitoring/scored-prod.json") is None


def test_each_hour_is_scored_as_the_local_monitor_scores_the_same_files(aws, tmp_path):
    """Hourly periods: the AWS scoring of the S3 capture equals the local monitor's scoring of the same files."""
    from helpers.local.config import Paths
    from helpers.monitoring import monitor

    files = {}
    two_versions_in_one_hour(files)
    write_capture(files, "prod", "model-v2", H + 3 * HOUR, [capture_event("late", H + 3 * HOUR, 2.0)])
    upload(files)
    now = H + 5 * HOUR
    results = monitoring.score_stage(aws, "prod", BUCKET, HOUR, actuals, lambda: THRESHOLD, now)
    by_hour = {pd.Timestamp(r["hour"]).timestamp(): r for r in results}
    assert list(by_hour) == [H + k * HOUR for k in range(4)]  # the 5th hour has not matured (21 minutes)

    paths = Paths.at(tmp_path / "local")
    for key, body in files.items():  # the same files, in the local layout: capture/<stage>/<variant>/YYYY/...
        local = monitor.capture_dir(paths, "prod") / key.split("/", 2)[2]
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(body)
    ledger = monitor.Ledger(paths)
    ledger.read_captures(paths, "prod")
    for hour, result in by_hour.items():
        local = monitor.score_hour(ledger, ACTUALS, "prod", hour)
        assert {k: result[k] for k in local} == local, minute_iso(hour)
    ledger.close()

    first, second, third, fourth = (by_hour[H + k * HOUR] for k in range(4))
    assert (first["versions"], first["forecasts"], first["points"]) == ([1, 2], 4, 30 + 30 + 30 + 20)
    assert (second["versions"], second["points"]) == ([2], 10)  # version 2's :40 forecast runs into hour 2
    assert third["wql"] is None and third["forecasts"] == 0  # no capture that hour: no score
    assert fourth["versions"] == [2]

    # published: StageName for each scored hour, ModelVersion only where one version served alone
    stage, v1, v2 = {"StageName": "prod"}, {"StageName": "prod", "ModelVersion": "1"}, \
        {"StageName": "prod", "ModelVersion": "2"}
    span = (H - HOUR, H + 6 * HOUR, HOUR)
    assert datapoints(WQL_METRIC, stage, *span) == pytest.approx({H: first["wql"], H + HOUR: second["wql"],
                                                                  H + 3 * HOUR: fourth["wql"]})
    assert datapoints(THRESHOLD_METRIC, stage, *span) == {H: THRESHOLD, H + HOUR: THRESHOLD, H + 3 * HOUR: THRESHOLD}
    assert datapoints(WQL_METRIC, v2, *span) == pytest.approx({H + HOUR: second["wql"], H + 3 * HOUR: fourth["wql"]})
    assert datapoints(WQL_METRIC, v1, *span) == {}  # version 1 never served an hour alone


def test_with_10_minute_periods_each_version_is_scored_on_its_own(aws):
    files = {}
    two_versions_in_one_hour(files)
    upload(files)
    period = 600
    results = monitoring.score_stage(aws, "prod", BUCKET, period, actuals, lambda: THRESHOLD, H + 3 * HOUR)
    by_start = {pd.Timestamp(r["hour"]).timestamp(): r for r in results if r["wql"] is not None}
    assert {(start - H) // 60: r["versions"] for start, r in by_start.items()} == {
        0: [1], 10: [1], 20: [1], 30: [1, 2], 40: [2], 50: [2], 60: [2]}

    def expected(start: float, forecasts: list[tuple[float, float]]) -> float:  # (origin, bias) covering it
        minutes = pd.date_range(pd.Timestamp(start, unit="s", tz="UTC"), periods=10, freq="min")
        ys, predicted = [], {q: [] for q in QUANTILE_NAMES}
        for origin, bias in forecasts:
            forecast_minutes = pd.date_range(pd.Timestamp(origin, unit="s", tz="UTC"), periods=30, freq="min")
            inside = forecast_minutes.isin(minutes)
            ys.extend(ACTUALS.reindex(forecast_minutes[inside]).to_numpy())
            for q in QUANTILE_NAMES:
                predicted[q].extend(np.array(answer(origin, bias)["quantiles"][q])[inside])
        return mean_weighted_quantile_loss(np.array(ys), {q: np.array(v) for q, v in predicted.items()})

    v1, v2 = [(H, 1.0), (H + 600, 1.0)], [(H + 1800, 2.0), (H + 2400, 2.0)]
    assert by_start[H]["wql"] == pytest.approx(expected(H, v1[:1]))
    assert by_start[H + 1800]["wql"] == pytest.approx(expected(H + 1800, [v1[1], v2[0]]))
    assert by_start[H + 2400]["wql"] == pytest.approx(expected(H + 2400, v2))
    assert by_start[H]["wql"] < THRESHOLD < by_start[H + 2400]["wql"]  # version 2 is judged on its own periods

    span = (H - HOUR, H + 3 * HOUR, period)
    published = datapoints(WQL_METRIC, {"StageName": "prod", "ModelVersion": "1"}, *span)
    assert published == pytest.approx({H + m * 60: by_start[H + m * 60]["wql"] for m in (0, 10, 20)})
    published = datapoints(WQL_METRIC, {"StageName": "prod", "ModelVersion": "2"}, *span)
    assert published == pytest.approx({H + m * 60: by_start[H + m * 60]["wql"] for m in (40, 50, 60)})
    stage_only = datapoints(WQL_METRIC, {"StageName": "prod"}, *span)
    assert set(stage_only) == set(by_start)  # the mixed period too, under StageName alone
    # staging's capture is another endpoint's: nothing of prod's is staging's
    assert monitoring.score_stage(aws, "staging", BUCKET, period, actuals, lambda: THRESHOLD, H + 3 * HOUR) == []


def test_a_period_is_scored_once_and_a_malformed_line_is_skipped(aws, caplog):
    files = {}
    write_capture(files, "prod", "model-v1", H, [
        capture_event("good", H, 1.0), "{not json", '{"captureData": {"endpointInput": {}}}', "[1, 2]",
        capture_event("good", H, 1.0)])  # delivered twice: scored once
    upload(files)
    first = monitoring.score_stage(aws, "prod", BUCKET, HOUR, actuals, lambda: THRESHOLD, H + 2 * HOUR)
    assert [(r["hour"], r["forecasts"], r["points"]) for r in first] == [(minute_iso(H), 1, 30)]
    assert "skipped 2 malformed capture line(s)" in caplog.text
    s3 = boto3.client("s3", region_name=REGION)
    state = json.loads(s3.get_object(Bucket=BUCKET, Key="monitoring/scored-prod.json")["Body"].read())
    assert state["last_end"] == H + HOUR and [p["start"] for p in state["periods"]] == [H]
    # run again (the schedule, or run_now): nothing new matured, nothing published again
    assert monitoring.score_stage(aws, "prod", BUCKET, HOUR, actuals, lambda: THRESHOLD, H + 2 * HOUR + 600) == []
    assert len(datapoints(WQL_METRIC, {"StageName": "prod"}, H - HOUR, H + 3 * HOUR, 60)) == 1
    # an hour later the next hour matured: scored (no forecast in it: no datapoint) and recorded
    (later,) = monitoring.score_stage(aws, "prod", BUCKET, HOUR, actuals, lambda: THRESHOLD, H + 3 * HOUR)
    assert later["hour"] == minute_iso(H + HOUR) and later["wql"] is None


def test_a_period_waits_while_the_offline_store_has_none_of_its_actuals(aws):
    files = {}
    write_capture(files, "prod", "model-v1", H, [capture_event("e", H, 1.0)])
    upload(files)
    nothing_yet = lambda start, end: pd.Series(dtype=float)  # noqa: E731 (Athena has not caught up)
    assert monitoring.score_stage(aws, "prod", BUCKET, HOUR, nothing_yet, lambda: THRESHOLD, H + 2 * HOUR) == []
    (scored,) = monitoring.score_stage(aws, "prod", BUCKET, HOUR, actuals, lambda: THRESHOLD, H + 2 * HOUR)
    assert scored["points"] == 30


# ---------------------------------------------------------------- the alarm


def test_the_stage_alarm_is_the_local_rule_on_the_served_version_with_the_stack_s_period(aws):
    from helpers.monitoring import monitor

    settings = MonitorSettings(evaluation_periods=5, datapoints_to_alarm=3)
    request = monitoring.put_stage_alarm(aws, "prod", 3, settings, period_s=600)
    local = monitor.alarm_settings("prod", monitor.MonitorConfig(**asdict(settings)), 3)
    wanted = {**local.metric_alarm_request(), "AlarmName": f"{PREFIX}-wql-prod"}
    for query in wanted["Metrics"][:2]:
        query["MetricStat"]["Period"] = 600
    assert {k: request[k] for k in wanted} == wanted  # the local alarm, with the AWS name and period

    cloudwatch = boto3.client("cloudwatch", region_name=REGION)
    (alarm,) = cloudwatch.describe_alarms(AlarmNames=[f"{PREFIX}-wql-prod"])["MetricAlarms"]
    assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"], alarm["Threshold"]) == (5, 3, 0.0)
    assert (alarm["TreatMissingData"], alarm["ComparisonOperator"]) == ("notBreaching",
                                                                        "GreaterThanOrEqualToThreshold")
    by_id = {q["Id"]: q for q in alarm["Metrics"]}
    assert by_id["excess"]["Expression"] == "score - bar" and by_id["excess"]["ReturnData"]
    for query, metric in (("score", WQL_METRIC), ("bar", THRESHOLD_METRIC)):
        stat = by_id[query]["MetricStat"]
        assert (stat["Period"], stat["Stat"], stat["Metric"]["Namespace"], stat["Metric"]["MetricName"]) == \
            (600, "Maximum", NAMESPACE, metric)
        assert {d["Name"]: d["Value"] for d in stat["Metric"]["Dimensions"]} == {"StageName": "prod",
                                                                                 "ModelVersion": "3"}
    tags = cloudwatch.list_tags_for_resource(ResourceARN=alarm["AlarmArn"])["Tags"]
    assert {t["Key"]: t["Value"] for t in tags} == {"Project": "realtime-mlops-workshop", "WorkshopPrefix": PREFIX}

    # a deploy moves it to the new version; the period and M of N come from the stack's parameter and the settings
    boto3.client("ssm", region_name=REGION).put_parameter(Name=f"/{PREFIX}/monitoring/scoring-period-minutes",
                                                           Value="10", Type="String")
    moved = monitoring.put_stage_alarm(aws, "prod", 4)
    assert "Tags" not in moved  # an existing alarm: CloudWatch would ignore them
    (alarm,) = cloudwatch.describe_alarms(AlarmNames=[f"{PREFIX}-wql-prod"])["MetricAlarms"]
    assert monitoring._alarm_key(alarm) == ("4", 600, 5, 3)


def create_endpoint(stage: str, *versions: int) -> None:
    """A moto endpoint serving ``versions`` (one production variant each, the last with the most traffic)."""
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    variants = []
    for i, version in enumerate(versions):
        model = f"{PREFIX}-v{version}"
        if model not in {m["ModelName"] for m in sagemaker.list_models()["Models"]}:
            sagemaker.create_model(ModelName=model, ExecutionRoleArn=f"arn:aws:iam::{ACCOUNT}:role/{PREFIX}-endpoint",
                                   PrimaryContainer={"Image": "deepar"})
        variants.append({"VariantName": f"model-v{version}", "ModelName": model, "InitialInstanceCount": 1,
                         "InstanceType": "ml.c5.xlarge", "InitialVariantWeight": float(i + 1)})
    config = f"{PREFIX}-{stage}-{'-'.join(map(str, versions))}"
    sagemaker.create_endpoint_config(EndpointConfigName=config, ProductionVariants=variants)
    sagemaker.create_endpoint(EndpointName=f"{PREFIX}-{stage}", EndpointConfigName=config)


def test_the_scoring_keeps_the_alarm_on_the_version_the_endpoint_serves(aws):
    settings = MonitorSettings()
    create_endpoint("prod", 1, 2)
    assert monitoring.served_version(monitoring.describe_endpoint(aws, "prod")) == 2
    put = monitoring.sync_stage_alarm(aws, "prod", settings, 600)
    assert {d["Name"]: d["Value"] for d in put["Metrics"][0]["MetricStat"]["Metric"]["Dimensions"]} == {
        "StageName": "prod", "ModelVersion": "2"}
    assert monitoring.sync_stage_alarm(aws, "prod", settings, 600) is None  # already right: not put again
    staging = monitoring.sync_stage_alarm(aws, "staging", settings, 600)  # no endpoint: the stage's own series
    assert staging["Metrics"][0]["MetricStat"]["Metric"]["Dimensions"] == [{"Name": "StageName", "Value": "staging"}]


# ---------------------------------------------------------------- the retrain


PIPELINE = f"{PREFIX}-model-build"
GROUP = f"{PREFIX}-avg-fee-deepar"


def create_pipeline() -> None:
    boto3.client("sagemaker", region_name=REGION).create_pipeline(
        PipelineName=PIPELINE, RoleArn=f"arn:aws:iam::{ACCOUNT}:role/{PREFIX}-model-build",
        PipelineDefinition=json.dumps({"Version": "2020-12-01", "Parameters": [{"Name": "BuildSettings",
                                                                                "Type": "String"}], "Steps": []}))


def set_execution_status(arn: str, status: str) -> None:
    """moto's executions are Succeeded at once; a real one runs for half an hour."""
    from moto.sagemaker.models import sagemaker_backends

    backend = sagemaker_backends[ACCOUNT][REGION]
    backend.pipelines[PIPELINE].pipeline_executions[arn].pipeline_execution_status = status


def alarm_event(stage: str = "prod", state: str = "ALARM", prefix: str = PREFIX) -> dict:
    """EventBridge's "CloudWatch Alarm State Change" event, as the rule delivers it."""
    name = f"{prefix}-wql-{stage}"
    return {"version": "0", "id": "7bf73129-1428-4cd3-a780-95db273d1602", "detail-type":
            "CloudWatch Alarm State Change", "source": "aws.cloudwatch", "account": ACCOUNT,
            "time": "2027-01-15T05:00:00Z", "region": REGION,
            "resources": [f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{name}"],
            "detail": {"alarmName": name, "state": {"value": state, "reason": "Threshold Crossed: 3 out of the last 5 "
                                                    "datapoints were greater than or equal to the threshold (0.0).",
                                                    "timestamp": "2027-01-15T05:00:00.000+0000"},
                       "previousState": {"value": "OK"}, "configuration": {}}}


def records(bucket: str = BUCKET) -> list[dict]:
    s3 = boto3.client("s3", region_name=REGION)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="monitoring/retrains/").get(
        "Contents", []))
    return [json.loads(s3.get_object(Bucket=bucket, Key=k)["Body"].read()) for k in keys]


@pytest.fixture
def lambda_env(monkeypatch):
    monkeypatch.setenv("MLOPS_AWS_PREFIX", PREFIX)
    monkeypatch.setenv("BUCKET", BUCKET)


def test_an_alarm_starts_one_retrain_with_the_retrain_settings_and_skips_while_it_runs(aws, lambda_env):
    from helpers.core.hyperparameters import DeepARHyperparameters
    from helpers.training.sagemaker_pipeline import settings_parameter

    create_pipeline()
    ssm = boto3.client("ssm", region_name=REGION)
    tuned = DeepARHyperparameters(num_cells=20)
    ssm.put_parameter(Name=f"/{PREFIX}/model-build/hyperparameters", Value=json.dumps(tuned.to_dict()), Type="String")
    settings = MonitorSettings(retrain_training_days=2.0, retrain_epochs=3)
    ssm.put_parameter(Name=f"/{PREFIX}/monitoring/settings", Value=json.dumps(asdict(settings)), Type="String")

    started = monitoring.retrain_handler(alarm_event("prod"))
    assert started["decision"] == "started" and started["requested_by"] == f"{PREFIX}-wql-prod"
    assert "in ALARM at 2027-01-15T05:00:00" in started["reason"]
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    given = sagemaker.list_pipeline_parameters_for_execution(PipelineExecutionArn=started["execution_arn"])
    (parameter,) = given["PipelineParameters"]
    assert parameter == {"Name": "BuildSettings", "Value": settings_parameter(settings.retrain_settings(tuned))}
    build = json.loads(parameter["Value"])
    assert (build["training_days"], build["n_test_windows"], build["hyperparameters"]["epochs"],
            build["hyperparameters"]["num_cells"]) == (2.0, 4, 3, 20)

    set_execution_status(started["execution_arn"], "Executing")  # it trains for half an hour
    skipped = monitoring.retrain_handler(alarm_event("staging"))  # the other stage's alarm fires meanwhile
    assert (skipped["decision"], skipped["why"]) == ("skipped", "a retrain is already in flight")
    assert skipped["in_flight"] == started["execution_arn"]
    set_execution_status(started["execution_arn"], "Stopping")
    assert monitoring.retrain_handler(alarm_event("prod"))["decision"] == "skipped"
    assert [(r["requested_by"], r["decision"]) for r in records()] == [
        (f"{PREFIX}-wql-prod", "started"), (f"{PREFIX}-wql-staging", "skipped"), (f"{PREFIX}-wql-prod", "skipped")]
    executions = sagemaker.list_pipeline_executions(PipelineName=PIPELINE)["PipelineExecutionSummaries"]
    assert len(executions) == 1

    # the execution the last retrain started counts while it runs, even before the list shows it
    set_execution_status(started["execution_arn"], "Succeeded")
    assert monitoring.execution_in_flight(aws, BUCKET) is None
    set_execution_status(started["execution_arn"], "Executing")
    assert monitoring.execution_in_flight(aws, BUCKET) == started["execution_arn"]


def test_a_version_awaiting_approval_skips_the_retrain(aws, lambda_env):
    create_pipeline()
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    sagemaker.create_model_package_group(ModelPackageGroupName=GROUP)
    for status in ("Approved", "PendingManualApproval"):
        sagemaker.create_model_package(ModelPackageGroupName=GROUP, ModelApprovalStatus=status,
                                       InferenceSpecification={"Containers": [{"Image": "deepar"}],
                                                               "SupportedContentTypes": ["application/json"],
                                                               "SupportedResponseMIMETypes": ["application/json"]})
    assert monitoring.pending_version(aws) == 2
    skipped = monitoring.retrain_handler(alarm_event("prod"))
    assert skipped["decision"] == "skipped" and skipped["why"].startswith("version 2 awaits approval")
    assert sagemaker.list_pipeline_executions(PipelineName=PIPELINE)["PipelineExecutionSummaries"] == []


def test_other_events_are_ignored_and_an_undefined_pipeline_is_recorded(aws, lambda_env):
    assert monitoring.retrain_handler(alarm_event("prod", state="OK"))["decision"] == "ignored"
    assert monitoring.retrain_handler(alarm_event("prod", prefix="someone-else"))["decision"] == "ignored"
    assert records() == []
    failed = monitoring.retrain_handler(alarm_event("prod"))  # notebook 03 has not defined the pipeline yet
    assert failed["decision"] == "failed" and "is not defined" in failed["why"]
    assert [r["decision"] for r in records()] == ["failed"]


# ---------------------------------------------------------------- the application's forecasts


class NewestFeatures:
    """The feature group's ``recent``: what the forecast function reads (the online store on AWS)."""

    def recent(self, feature: str, slots: int) -> pd.Series:
        assert feature == "avg_fee"
        return ACTUALS.iloc[-slots:]


def test_the_application_asks_only_the_endpoints_in_service(aws):
    create_endpoint("prod", 1)
    sent = []  # what reaches InvokeEndpoint (moto's record of it drops the endpoint's name)
    aws.client("sagemaker-runtime").meta.events.register(
        "provide-client-params.sagemaker-runtime.InvokeEndpoint", lambda params, **_: sent.append(dict(params)))
    answered = monitoring.request_forecasts(aws, NewestFeatures(), MonitorSettings(history_minutes=120))
    assert answered["staging"] == "missing" and not answered["prod"].startswith("failed")
    (call,) = sent
    assert (call["EndpointName"], call["ContentType"], call["Accept"]) == (f"{PREFIX}-prod", "application/json",
                                                                         "application/json")
    assert json.loads(call["Body"]) == json.loads(json.dumps(deepar_request(ACTUALS.iloc[-120:])))


# ---------------------------------------------------------------- the monitor the notebooks use


STORAGE_STAND_IN = {  # the storage stack's exports, for a bucket and key made directly in moto
    "Parameters": {"Bucket": {"Type": "String"}, "KeyArn": {"Type": "String"}},
    "Resources": {"Marker": {"Type": "AWS::SSM::Parameter", "Properties": {
        "Name": f"/{PREFIX}/storage-stand-in", "Type": "String", "Value": "moto"}}},
    "Outputs": {"Bucket": {"Value": {"Ref": "Bucket"}, "Export": {"Name": f"{PREFIX}-bucket"}},
                "BucketArn": {"Value": {"Fn::Sub": "arn:aws:s3:::${Bucket}"},
                              "Export": {"Name": f"{PREFIX}-bucket-arn"}},
                "KmsKeyArn": {"Value": {"Ref": "KeyArn"}, "Export": {"Name": f"{PREFIX}-kms-key-arn"}}}}
SCHEDULES = {"ForecastScheduleName": "forecast_handler", "StagingScoreScheduleName": "score_handler",
             "ProdScoreScheduleName": "score_handler"}


@pytest.fixture
def stack(aws):
    """The monitoring stack as moto deploys it (cloudformation/monitoring.yaml less what moto cannot create), and
    the schedules it would create, made directly under the names it gives them."""
    from test_cloudformation import REPO, moto_template

    key = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["Arn"]
    cfn = boto3.client("cloudformation", region_name=REGION)
    cfn.create_stack(StackName=f"{PREFIX}-storage", TemplateBody=json.dumps(STORAGE_STAND_IN),
                     Parameters=[{"ParameterKey": "Bucket", "ParameterValue": BUCKET},
                                 {"ParameterKey": "KeyArn", "ParameterValue": key}])
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("helpers/__init__.py", "")
    boto3.client("s3", region_name=REGION).put_object(Bucket=BUCKET, Key="code/lambda-test.zip",
                                                      Body=archive.getvalue())
    template, _ = moto_template(REPO / "cloudformation" / "monitoring.yaml")
    cfn.create_stack(StackName=f"{PREFIX}-monitoring", TemplateBody=json.dumps(template),
                     Capabilities=["CAPABILITY_NAMED_IAM"],
                     Parameters=[{"ParameterKey": "Prefix", "ParameterValue": PREFIX},
                                 {"ParameterKey": "LambdaCodeKey", "ParameterValue": "code/lambda-test.zip"},
                                 {"ParameterKey": "ScoringPeriodMinutes", "ParameterValue": "10"}])
    outputs = {o["OutputKey"]: o["OutputValue"]
               for o in cfn.describe_stacks(StackName=f"{PREFIX}-monitoring")["Stacks"][0]["Outputs"]}
    scheduler, lam = boto3.client("scheduler", region_name=REGION), boto3.client("lambda", region_name=REGION)
    for output in SCHEDULES:
        function = outputs["ForecastFunctionName" if output.startswith("Forecast") else "ScoreFunctionName"]
        arn = lam.get_function(FunctionName=function)["Configuration"]["FunctionArn"]
        scheduler.create_schedule(Name=outputs[output], ScheduleExpression="rate(5 minutes)", State="DISABLED",
                                  FlexibleTimeWindow={"Mode": "OFF"},
                                  Target={"Arn": arn, "Input": "{}",
                                          "RoleArn": f"arn:aws:iam::{ACCOUNT}:role/{PREFIX}-monitor-schedule"})
    return outputs


def schedule_states(outputs: dict) -> dict[str, str]:
    scheduler = boto3.client("scheduler", region_name=REGION)
    return {outputs[o]: scheduler.get_schedule(Name=outputs[o])["State"] for o in SCHEDULES}


def test_start_enables_the_schedules_saves_the_settings_and_puts_the_alarms_stop_disables(aws, stack):
    monitor = monitoring.AwsMonitor(aws)
    assert set(schedule_states(stack).values()) == {"DISABLED"}
    assert not monitor.status().running
    status = monitor.start(auto_approve=True, retrain_epochs=3)
    assert status.running and set(schedule_states(stack).values()) == {"ENABLED"}
    assert (status.settings["auto_approve"], status.settings["retrain_epochs"],
            status.settings["scoring_period_minutes"]) == (True, 3, 10)
    saved = json.loads(boto3.client("ssm", region_name=REGION).get_parameter(
        Name=f"/{PREFIX}/monitoring/settings")["Parameter"]["Value"])
    assert saved == asdict(MonitorSettings(auto_approve=True, retrain_epochs=3))
    assert set(status.alarms) == {"staging", "prod"} and "not created yet" not in status.alarms.values()
    alarms = boto3.client("cloudwatch", region_name=REGION).describe_alarms(AlarmNamePrefix=f"{PREFIX}-wql-")
    assert {monitoring._alarm_key(a) for a in alarms["MetricAlarms"]} == {(None, 600, 5, 3)}  # no endpoint yet

    monitor.stop()
    assert set(schedule_states(stack).values()) == {"DISABLED"} and not monitor.status().running
    assert monitor.start().settings["auto_approve"] is True  # a start keeps the settings saved before
    with pytest.raises(TypeError, match=r"start\(\) got \['speed'\]"):
        monitor.start(speed=600)
    with pytest.raises(ValueError, match=r"scoring_period_minutes=7: use one of \(5, 10, 15, 20, 30, 60\)"):
        monitor.start(scoring_period_minutes=7)


def queue_athena_answer(frame: pd.DataFrame) -> None:
    """What Athena answers the next query (moto runs no SQL: it answers what it is given, in Athena's shapes)."""
    from moto.athena.models import QueryResults, athena_backends
    from test_aws_ingestion import athena_answer

    result = athena_answer(frame)["ResultSet"]
    athena_backends[ACCOUNT][REGION].query_results_queue.append(
        QueryResults(rows=result["Rows"], column_info=result["ResultSetMetadata"]["ColumnInfo"]))


def test_run_now_runs_the_score_function_which_asks_again_while_in_alarm(aws, stack, monkeypatch):
    """run_now -> the score function's handler, on its own environment: the capture in S3, the actuals from Athena,
    the threshold from SSM, the datapoints to CloudWatch; prod's alarm in ALARM -> the retrain function again."""
    from moto.awslambda.models import LambdaFunction
    from moto.moto_api import state_manager
    from test_aws_ingestion import stack_outputs

    from helpers.feature_store.aws import AwsFeatureGroup

    state_manager.set_transition(model_name="athena::execution", transition={"progression": "immediate"})
    files = {}
    two_versions_in_one_hour(files)
    upload(files)
    AwsFeatureGroup(aws, stack_outputs(PREFIX), poll_s=0).ensure()
    aws.client("athena").create_work_group(Name=PREFIX)  # the ingestion stack's
    frame = ACTUALS.rename("avg_fee").reset_index()
    frame.insert(0, "tx_minute", [minute_iso(t.timestamp()) for t in frame["window_start"]])
    frame["window_start"] = [t.timestamp() for t in frame["window_start"]]
    frame["latest_revision"] = 1
    queue_athena_answer(frame)
    boto3.client("ssm", region_name=REGION).put_parameter(Name=f"/{PREFIX}/model-build/wql-threshold",
                                                           Value=str(THRESHOLD), Type="String")
    create_pipeline()

    invoked = []

    def run_in_process(function, event):  # moto runs a Lambda's code in Docker only: run its handler here
        invoked.append(function.function_name)
        module, name = function.handler.rsplit(".", 1)
        with monkeypatch.context() as environment:
            for key, value in function.environment_vars.items():  # the function's own environment
                environment.setenv(key, value)
            try:
                result = getattr(importlib.import_module(module), name)(event, None)
            except Exception as error:
                return json.dumps({"errorMessage": str(error), "errorType": type(error).__name__}), True, ""
        return json.dumps(result), False, ""
    monkeypatch.setattr(LambdaFunction, "_invoke_lambda", run_in_process)

    monitor = monitoring.AwsMonitor(aws)
    monitor.start()
    cloudwatch = aws.client("cloudwatch")
    cloudwatch.set_alarm_state(AlarmName=f"{PREFIX}-wql-prod", StateValue="ALARM", StateReason="3 of 5 breaching")
    done = monitor.run_now()
    assert {r["stage"] for r in done} == {"prod"} and {r["alarm"] for r in done} == {"ALARM"}
    assert invoked == [stack["ScoreFunctionName"]] * 2 + [stack["RetrainFunctionName"]]  # staging, prod, the ask
    (asked,) = records()
    assert (asked["requested_by"], asked["decision"]) == (f"{PREFIX}-wql-prod", "started")
    assert monitor.run_now() == []  # nothing new matured, and nothing asked
    assert len(invoked) == 5

    timeline = monitor.timeline()
    assert list(timeline.columns) == monitoring.TIMELINE_COLUMNS
    scored = timeline[timeline["wql"].notna()]
    expected = {pd.Timestamp(r["hour"]): r for r in done if r["wql"] is not None}
    assert list(scored["hour"]) == sorted(expected) and len(expected) == 7  # H:00 .. H+1:00, 10-minute periods
    for row in scored.itertuples():
        assert (row.wql, row.threshold, json.loads(row.versions)) == (
            pytest.approx(expected[row.hour]["wql"]), THRESHOLD, expected[row.hour]["versions"])
    assert len(monitor.wait_for_hours(hours=7, stage="prod", timeout_s=1)) == 7
    summary = monitor.loop_summary(1, pd.Timestamp(H, unit="s", tz="UTC"))
    assert summary.startswith("prod, version 1 after the drift: mean wQL per 10-minute period") and "[2] now" in summary


def test_the_retrains_and_the_alarm_history_read_back(aws, stack, lambda_env, monkeypatch):
    create_pipeline()
    sagemaker = aws.client("sagemaker")
    sagemaker.create_model_package_group(ModelPackageGroupName=GROUP)
    package = sagemaker.create_model_package(ModelPackageGroupName=GROUP, ModelApprovalStatus="Approved",
                                             InferenceSpecification={"Containers": [{"Image": "deepar"}],
                                                                     "SupportedContentTypes": ["application/json"],
                                                                     "SupportedResponseMIMETypes": [
                                                                         "application/json"]})["ModelPackageArn"]
    started = monitoring.request_retrain(aws, BUCKET, f"{PREFIX}-wql-prod", "test", now=H + HOUR)
    set_execution_status(started["execution_arn"], "Executing")
    monitoring.request_retrain(aws, BUCKET, f"{PREFIX}-wql-staging", "test", now=H + HOUR + 60)
    monitor = monitoring.AwsMonitor(aws)
    frame = monitor.retrains()
    assert list(frame.columns) == monitoring.RETRAIN_COLUMNS
    assert list(frame["status"]) == ["Executing", "Skipped"]
    assert json.loads(frame["detail"].iloc[1]) == {"why": "a retrain is already in flight"}
    assert frame["requested_sim"].iloc[0] == pd.Timestamp(H + HOUR, unit="s", tz="UTC")

    # it ends: registered version 1, approved, and production serves it -> Deployed
    set_execution_status(started["execution_arn"], "Succeeded")
    create_endpoint("prod", 1)

    def steps(PipelineExecutionArn, **_):  # moto has no ListPipelineExecutionSteps
        assert PipelineExecutionArn == started["execution_arn"]
        return {"PipelineExecutionSteps": [{"StepName": "Register", "StepStatus": "Succeeded",
                                            "Metadata": {"RegisterModel": {"Arn": package}}}]}
    monkeypatch.setattr(sagemaker, "list_pipeline_execution_steps", steps)
    frame = monitor.retrains()
    assert list(frame["status"]) == ["Deployed", "Skipped"] and frame["model_version"].iloc[0] == 1
    assert monitor.wait_for_retrain("Deployed", timeout_s=1)["execution_id"] == started["execution_arn"].rsplit(
        "/", 1)[1]
    assert monitor.retrain_report().endswith("Deployed, version 1")

    cloudwatch = aws.client("cloudwatch")

    def history(AlarmName, **_):  # moto has no DescribeAlarmHistory: CloudWatch's answer for one transition
        data = {"version": "1.0", "oldState": {"stateValue": "OK"}, "newState": {
            "stateValue": "ALARM", "stateReason": "Threshold Crossed: 3 out of the last 5 datapoints"}}
        items = [{"AlarmName": AlarmName, "Timestamp": datetime.fromtimestamp(H + 2 * HOUR, timezone.utc),
                  "HistoryItemType": "StateUpdate", "HistorySummary": "Alarm updated from OK to ALARM",
                  "HistoryData": json.dumps(data)}] if AlarmName.endswith("prod") else []
        return {"AlarmHistoryItems": items}
    monkeypatch.setattr(cloudwatch, "describe_alarm_history", history)
    alarms = monitor.alarm_history()
    assert list(alarms.columns) == monitoring.HISTORY_COLUMNS
    assert alarms[["name", "old_state", "new_state"]].values.tolist() == [[f"{PREFIX}-wql-prod", "OK", "ALARM"]]
    assert alarms["at"].iloc[0] == pd.Timestamp(H + 2 * HOUR, unit="s", tz="UTC")


# ---------------------------------------------------------------- what the Lambdas load


def test_the_lambda_zip_holds_the_monitoring_handlers(tmp_path):
    from test_aws_package import imports_from_zip

    from helpers.aws import package

    (tmp_path / "lambda-deps").mkdir()  # numpy and pandas for Linux come from PyPI; here the venv's stand in
    archive = package.build_lambda_zip(tmp_path)
    assert str(archive) in imports_from_zip(archive, ["helpers.monitoring.aws", "helpers.monitoring.scoring"])
    names = zipfile.ZipFile(archive).namelist()
    assert not any(n.startswith(("helpers/monitoring/monitor.py", "helpers/monitoring/alarms.py",
                                 "helpers/monitoring/retrain.py", "helpers/local/sqlite")) for n in names)
    handlers = {r["Properties"]["Handler"] for r in template_functions()}
    assert handlers == {"helpers.monitoring.aws.forecast_handler", "helpers.monitoring.aws.score_handler",
                        "helpers.monitoring.aws.retrain_handler"}
    for handler in handlers:
        assert callable(getattr(monitoring, handler.rsplit(".", 1)[1]))


def template_functions() -> list[dict]:
    from test_cloudformation import REPO, resources

    return list(resources(REPO / "cloudformation" / "monitoring.yaml", "AWS::Lambda::Function").values())


def test_the_shared_scoring_loads_no_local_machinery_and_the_lambda_module_no_store():
    code = ("import sys\n"
            "import helpers.monitoring.scoring, helpers.monitoring.cloudwatch, helpers.monitoring.settings\n"
            "pure = sorted(m for m in ('sqlite3', 'boto3', 'botocore', 'duckdb', 'httpx', 'mlflow', 'torch') "
            "if m in sys.modules)\nimport helpers.monitoring.aws\n"
            "lam = sorted(m for m in ('sqlite3', 'duckdb', 'mlflow', 'torch', 'fastapi', 'gluonts') "
            "if m in sys.modules)\nprint(pure, lam)")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[] []"
