"""The registry and the endpoints on AWS without an account: a model package group, SSM, S3 and SageMaker endpoints
in moto, the deploy Lambda's handler fed the EventBridge events SageMaker sends. moto lacks the Feature Store
runtime and answers InvokeEndpoint from a queue of results (its own API for that); the tests patch the one missing
call on the client, never the code under test."""
import json
import threading
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import requests
from moto import mock_aws

from conftest import PINNED_NOW, fake_aws_credentials
from helpers.aws.session import AwsContext
from helpers.connect import Teardown
from helpers.core.metrics import QUANTILE_NAMES
from helpers.core.times import minute_iso
from helpers.endpoints import aws as endpoints_aws
from helpers.endpoints.aws import AwsEndpoints, DeploymentSettings, handler
from helpers.endpoints.interface import PromotionError
from helpers.feature_store.writer import to_feature_store_record
from helpers.registry.aws import AwsRegistry
from helpers.training.interface import CURRENT_MODEL_WQL, WQL_THRESHOLD
from helpers.training.ssm import SsmParameters

REGION = "eu-west-1"
ACCOUNT = "123456789012"
PREFIX = "ws-test"
BUCKET = f"{PREFIX}-{ACCOUNT}-{REGION}"
GROUP = f"{PREFIX}-avg-fee-deepar"
SETTINGS = DeploymentSettings("ml.m5.large", f"arn:aws:iam::{ACCOUNT}:role/{PREFIX}-endpoint",
                              f"s3://{BUCKET}/data-capture", f"s3://{BUCKET}/deployments", f"{PREFIX}-tx-per-minute",
                              PREFIX, f"arn:aws:kms:{REGION}:{ACCOUNT}:key/k")
NEWEST = PINNED_NOW - 120  # the newest minute the online store holds
EVALUATION = {"deepar": {"mean_wQuantileLoss": 0.08, "worst_hour_wQuantileLoss": 0.12},
              "seasonal_naive": {"mean_wQuantileLoss": 0.1}, "naive_last_value": {"mean_wQuantileLoss": 0.11}}


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch):  # and the deploy Lambda's environment
    fake_aws_credentials(monkeypatch, REGION, MLOPS_AWS_PREFIX=PREFIX,
                         **{name: getattr(SETTINGS, field) for field, name in DeploymentSettings.ENV.items()})


def avg_fee(minute: float) -> float:
    return 2000.0 + 300.0 * np.sin(2 * np.pi * minute / 86400)


def online_store(monkeypatch, context: AwsContext) -> None:
    """The Feature Store runtime moto lacks: every minute up to NEWEST holds a record."""
    def batch_get_record(Identifiers):
        records = []
        for tx_minute in Identifiers[0]["RecordIdentifiersValueAsString"]:
            start = pd.Timestamp(tx_minute).timestamp()
            if start <= NEWEST:
                fee = avg_fee(start)
                records.append({"FeatureGroupName": SETTINGS.feature_group, "RecordIdentifierValueAsString": tx_minute,
                                "Record": to_feature_store_record({
                                    "tx_minute": tx_minute, "window_start": start, "event_time": start + 120,
                                    "revision": 0, "tx_count": 100, "total_fee": int(fee * 100), "avg_fee": fee,
                                    "total_vsize": 20000, "avg_fee_rate": fee / 200, "min_fee": 100,
                                    "max_fee": 9000})})
        return {"Records": records, "Errors": [], "UnprocessedIdentifiers": []}

    monkeypatch.setattr(context.client("sagemaker-featurestore-runtime"), "batch_get_record", batch_get_record)


def keep_status_on_metadata_updates(monkeypatch, context: AwsContext) -> None:
    """SageMaker's UpdateModelPackage leaves the approval status, its description and the customer metadata alone
    when a call omits them; moto's clears them (and emits no event either way)."""
    sagemaker = context.client("sagemaker")
    real = sagemaker.update_model_package

    def update_model_package(**request):
        current = sagemaker.describe_model_package(ModelPackageName=request["ModelPackageArn"])
        request.setdefault("ModelApprovalStatus", current["ModelApprovalStatus"])
        for kept in ("ApprovalDescription", "CustomerMetadataProperties"):
            if current.get(kept):
                request.setdefault(kept, current[kept])
        return real(**request)

    monkeypatch.setattr(sagemaker, "update_model_package", update_model_package)


def queue_prediction(variant: str, spread: float = 0.1) -> None:
    """What the endpoint answers next (moto's queue of InvokeEndpoint results): quantiles around what really
    happened in the held-out minutes, as a good model's would be."""
    held_out = np.array([avg_fee(NEWEST - 60 * (29 - i)) for i in range(30)])
    prediction = {"mean": held_out.tolist(), "quantiles": {
        q: (held_out * (1 + spread * (float(q) - 0.5))).tolist() for q in QUANTILE_NAMES}}
    requests.post("http://motoapi.amazonaws.com/moto-api/static/sagemaker/endpoint-results", json={
        "account_id": ACCOUNT, "region": REGION, "results": [{
            "Body": json.dumps({"predictions": [prediction]}), "ContentType": "application/json",
            "InvokedProductionVariant": variant, "CustomAttributes": ""}]})


@pytest.fixture
def aws(monkeypatch):
    with mock_aws():
        context = AwsContext(prefix=PREFIX, region=REGION)
        context.client("s3").create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        context.client("sagemaker").create_model_package_group(ModelPackageGroupName=GROUP)
        ssm = context.client("ssm")
        ssm.put_parameter(Name=f"/{PREFIX}/model-build/wql-threshold", Value="0.24", Type="String")
        ssm.put_parameter(Name=f"/{PREFIX}/model/current-wql", Value="none", Type="String")
        online_store(monkeypatch, context)
        keep_status_on_metadata_updates(monkeypatch, context)
        monkeypatch.setattr(endpoints_aws, "AwsContext", lambda: context)  # the handler's clients: the patched ones
        clock = iter(range(PINNED_NOW, PINNED_NOW + 10**6, 7))
        yield context, lambda: float(next(clock))


def register_version(context: AwsContext, execution_id: str = "exec1") -> int:
    """What the pipeline's Register step leaves: a PendingManualApproval package, its metrics in S3 beside the
    build's settings and gate decision."""
    root = f"model-build/{execution_id}"
    s3 = context.client("s3")
    s3.put_object(Bucket=BUCKET, Key=f"{root}/evaluation/evaluation.json", Body=json.dumps(EVALUATION))
    s3.put_object(Bucket=BUCKET, Key=f"{root}/evaluation/gate.json", Body=json.dumps({"reason": "quality gate passed"}))
    s3.put_object(Bucket=BUCKET, Key=f"{root}/prepare/settings/settings.json", Body=json.dumps({
        "settings": {"hyperparameters": {"prediction_length": 30, "context_length": 60}},
        "extract": {"data_start": "2027-01-08", "data_end": "2027-01-15", "gaps": 0,
                    "feature_group": SETTINGS.feature_group}, "prepare": {"test_from": "2027-01-15 00:00"}}))
    arn = context.client("sagemaker").create_model_package(
        ModelPackageGroupName=GROUP, ModelApprovalStatus="PendingManualApproval",
        InferenceSpecification={"Containers": [{"Image": "deepar", "ModelDataUrl": f"s3://{BUCKET}/{root}/model.tar.gz"}],
                                "SupportedContentTypes": ["application/json"],
                                "SupportedResponseMIMETypes": ["application/json"]},
        ModelMetrics={"ModelQuality": {"Statistics": {
            "ContentType": "application/json", "S3Uri": f"s3://{BUCKET}/{root}/evaluation/evaluation.json"}}},
        CustomerMetadataProperties={"pipeline_execution_id": execution_id, "mean_wQuantileLoss": "0.080000"},
    )["ModelPackageArn"]
    return int(arn.rsplit("/", 1)[1])


def approval_event(version: int) -> dict:
    return {"detail-type": "SageMaker Model Package State Change", "source": "aws.sagemaker", "detail": {
        "ModelPackageGroupName": GROUP, "ModelPackageVersion": version, "ModelApprovalStatus": "Approved"}}


def endpoint_event(stage: str, status: str = "IN_SERVICE") -> dict:
    return {"detail-type": "SageMaker Endpoint State Change", "source": "aws.sagemaker",
            "detail": {"EndpointName": f"{PREFIX}-{stage}", "EndpointStatus": status}}


# ------------------------------------------------------------------ the registry

def test_a_version_carries_what_its_build_measured_read_from_its_artifacts(aws):
    context, _ = aws
    registry = AwsRegistry(context)
    version = register_version(context)
    model = registry.get(version)
    assert (model.version, model.approval_status) == (version, "PendingManualApproval")
    assert model.metrics == EVALUATION["deepar"] and set(model.baselines) == {"seasonal_naive", "naive_last_value"}
    assert model.hyperparameters["prediction_length"] == 30 and model.feature_group == SETTINGS.feature_group
    assert model.data_range["test_from"] == "2027-01-15 00:00" and model.pipeline_execution_id == "exec1"
    assert model.tags["quality_gate"] == "quality gate passed"
    assert registry.pending().version == version
    table = registry.versions()
    assert list(table.columns) == ["version", "approval_status", "mean_wQuantileLoss", "created_at",
                                   "pipeline_execution_id"] and table["mean_wQuantileLoss"].tolist() == [0.08]
    with pytest.raises(ValueError, match="say who decides and why"):
        registry.set_approval(version, "Approved", "", "")
    approved = registry.set_approval(version, "Approved", "ana", "beats the baselines")
    assert approved.approval_status == "Approved" and approved.tags["approval_description"] == \
        "ana: beats the baselines"
    with pytest.raises(ValueError, match="no model version is pending approval.*notebook 03"):
        registry.pending()
    with pytest.raises(ValueError, match="no version 9 of model package group"):
        registry.get(9)


# ------------------------------------------------------------------ approval -> staging -> smoke test -> prod

def test_approval_runs_the_threshold_rule_deploys_staging_with_data_capture_and_smoke_tests_it(aws):
    context, clock = aws
    version = register_version(context)
    endpoints = AwsEndpoints(context, SETTINGS, clock=clock, poll_s=0, print_progress=lambda *_: None)
    AwsRegistry(context).set_approval(version, "Approved", "ana", "beats the baselines")
    assert handler(approval_event(version), clock=clock) == {"approved": version}
    parameters = SsmParameters(context)
    assert parameters.get_float(CURRENT_MODEL_WQL) == 0.08
    assert parameters.get_float(WQL_THRESHOLD) == pytest.approx(max(0.08 + (0.24 - 0.08) * 0.5, 0.12))
    sagemaker = context.client("sagemaker")
    described = sagemaker.describe_endpoint(EndpointName=f"{PREFIX}-staging")
    config = sagemaker.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
    (variant,) = config["ProductionVariants"]
    assert (variant["VariantName"], variant["ModelName"], variant["InstanceType"]) == \
        ("model-v1", f"{PREFIX}-v1", "ml.m5.large")
    capture = config["DataCaptureConfig"]
    assert capture["EnableCapture"] and capture["InitialSamplingPercentage"] == 100
    assert capture["DestinationS3Uri"] == SETTINGS.data_capture_uri
    assert {o["CaptureMode"] for o in capture["CaptureOptions"]} == {"Input", "Output"}
    model = sagemaker.describe_model(ModelName=f"{PREFIX}-v1")
    assert model["Containers"][0]["ModelPackageName"].endswith(f"model-package/{GROUP}/1")
    assert endpoints.describe("staging")["ModelVersion"] == version

    with pytest.raises(PromotionError, match="never InService on staging"):
        endpoints.promote(by="ana", reason="staging looked fine")
    queue_prediction("model-v1")
    assert handler(endpoint_event("staging"), clock=clock) == {"in_service": "staging"}
    evidence = AwsRegistry(context).describe(version)["CustomerMetadataProperties"]
    assert evidence["staging_smoke_test"] == "passed" and "staging_in_service_at" in evidence
    assert evidence["pipeline_execution_id"] == "exec1"  # the build's metadata is kept
    smoke = json.loads(context.client("s3").get_object(Bucket=BUCKET, Key="deployments/smoke/staging-v1.json")
                       ["Body"].read())
    assert smoke["passed"] and smoke["checks"] == {"shape": True, "finite": True, "quantiles_ordered": True,
                                                   "loss_sane": True}
    assert smoke["window_start"] == str(pd.Timestamp(NEWEST - 29 * 60, unit="s", tz="UTC"))

    prod = endpoints.promote(by="ana", reason="staging smoke-tested")
    assert (prod["EndpointStatus"], prod["ModelVersion"]) == ("InService", version)
    history = endpoints.history()
    assert history[["endpoint", "action"]].values.tolist() == [["staging", "deploy"], ["staging", "in-service"],
                                                               ["prod", "deploy"]]
    assert history["by"].tolist()[-1] == "ana" and "promoted: staging smoke-tested" in history["reason"].tolist()[-1]


def test_approve_waits_for_what_the_deploy_lambda_did_and_returns_the_same_approval(aws):
    context, clock = aws
    version = register_version(context)
    endpoints = AwsEndpoints(context, SETTINGS, clock=clock, poll_s=0, print_progress=lambda *_: None)
    queue_prediction("model-v1")

    def eventbridge():  # what the two rules do once the package is Approved and staging is InService
        registry = AwsRegistry(context)
        while registry.describe(version)["ModelApprovalStatus"] != "Approved":
            time.sleep(0.01)
        handler(approval_event(version), clock=clock)
        handler(endpoint_event("staging"), clock=clock)

    rules = threading.Thread(target=eventbridge, daemon=True)
    rules.start()
    approved = endpoints.approve(by="ana", reason="beats the baselines")
    rules.join(timeout=30)
    assert approved.model_version == version
    assert approved.threshold.new_current_wql == 0.08 and approved.threshold.old_threshold == 0.24
    assert approved.staging["EndpointStatus"] == "InService" and approved.smoke_test.passed


def test_production_refuses_what_staging_did_not_pass_and_anything_not_approved(aws):
    context, clock = aws
    version = register_version(context)
    endpoints = AwsEndpoints(context, SETTINGS, clock=clock, poll_s=0, print_progress=lambda *_: None)
    with pytest.raises(PromotionError, match="only an Approved version"):
        endpoints.deploy("staging", version, by="ana", reason="try")
    AwsRegistry(context).set_approval(version, "Approved", "ana", "ok")
    handler(approval_event(version), clock=clock)
    queue_prediction("model-v1", spread=40.0)  # quantiles far too wide: the loss is not sane
    handler(endpoint_event("staging"), clock=clock)
    assert AwsRegistry(context).describe(version)["CustomerMetadataProperties"]["staging_smoke_test"] == "failed"
    with pytest.raises(PromotionError, match="has not passed the staging smoke test"):
        endpoints.promote(by="ana", reason="try anyway")
    assert endpoints.describe("prod")["EndpointStatus"] == "OutOfService"


def test_the_runtime_client_takes_the_notebooks_short_names(aws):
    context, _ = aws
    client = AwsEndpoints(context, SETTINGS).runtime_client()
    seen = []
    client.meta.events.register("before-call.sagemaker-runtime.InvokeEndpoint",
                                lambda params, **_: seen.append(params["url_path"]))
    client.invoke_endpoint(EndpointName="staging", ContentType="application/json", Body=b"{}")
    client.invoke_endpoint(EndpointName="another-endpoint", ContentType="application/json", Body=b"{}")
    assert seen == [f"/endpoints/{PREFIX}-staging/invocations", "/endpoints/another-endpoint/invocations"]


def test_stop_deletes_what_bills_by_the_hour_and_the_handler_ignores_other_events(aws):
    context, clock = aws
    version = register_version(context)
    AwsRegistry(context).set_approval(version, "Approved", "ana", "ok")
    handler(approval_event(version), clock=clock)
    endpoints = AwsEndpoints(context, SETTINGS, clock=clock, poll_s=0)
    endpoints.stop()
    assert endpoints.describe("staging")["EndpointStatus"] == "OutOfService"
    assert endpoints.history()["action"].tolist()[-1] == "stop"
    assert handler(endpoint_event("staging", "CREATING"), clock=clock) == {"ignored": "SageMaker Endpoint State Change"}
    assert handler({"detail-type": "Scheduled Event", "detail": {}}, clock=clock) == {"ignored": "Scheduled Event"}


def test_recent_minutes_come_from_the_online_store_with_gaps_as_nan(aws, monkeypatch):
    from helpers.feature_store.aws import AwsFeatureGroup

    context, _ = aws
    features = AwsFeatureGroup(context, {"FeatureGroupName": SETTINGS.feature_group}, clock=lambda: NEWEST + 300)
    series = features.recent("avg_fee", 250)
    assert len(series) == 250 and series.index[-1] == pd.Timestamp(NEWEST, unit="s", tz="UTC")
    assert series.iloc[-1] == avg_fee(NEWEST) and not series.isna().any()
    assert minute_iso(series.index[0].timestamp()) == minute_iso(NEWEST - 249 * 60)


# ------------------------------------------------------------------ what is up, and what it costs

def test_the_running_cost_counts_what_is_up_found_in_the_account(aws, monkeypatch):
    from helpers.aws.costs import running_cost

    context, clock = aws
    flink = {"status": "READY"}  # moto can neither start an application nor leave a new one READY
    monkeypatch.setattr(context.client("kinesisanalyticsv2"), "describe_application", lambda **_: {
        "ApplicationDetail": {"ApplicationStatus": flink["status"], "ApplicationConfigurationDescription": {
            "FlinkApplicationConfigurationDescription": {"ParallelismConfigurationDescription": {
                "CurrentParallelism": 1, "ParallelismPerKPU": 1}}}}})
    assert str(running_cost(context)) == "nothing that bills by the hour is up"
    version = register_version(context)
    AwsRegistry(context).set_approval(version, "Approved", "ana", "ok")
    handler(approval_event(version), clock=clock)  # staging: one ml.m5.large
    kinesis = context.client("kinesis")
    kinesis.create_stream(StreamName=f"{PREFIX}-transactions", StreamModeDetails={"StreamMode": "ON_DEMAND"})
    kinesis.create_stream(StreamName=f"{PREFIX}-features", StreamModeDetails={"StreamMode": "ON_DEMAND"})
    kinesis.create_stream(StreamName="someone-elses", StreamModeDetails={"StreamMode": "ON_DEMAND"})
    flink["status"] = "RUNNING"
    cost = running_cost(context)
    assert [what.split(" (")[0] for what, _ in cost.items] == [
        f"endpoint {PREFIX}-staging", f"Flink application {PREFIX}-aggregator", f"Kinesis stream {PREFIX}-transactions",
        f"Kinesis stream {PREFIX}-features"]
    assert cost.per_hour == pytest.approx(0.115 + 2 * 0.11 + 2 * 0.04)
    assert str(cost).startswith(f"UP NOW: ${cost.per_hour:.2f} an hour, ${24 * cost.per_hour:.2f} a day")
    AwsEndpoints(context, SETTINGS, clock=clock, poll_s=0).stop()
    assert not any("endpoint" in what for what, _ in running_cost(context).items)


def test_a_deploy_moves_the_stages_alarm_and_auto_approve_carries_a_retrain_to_production(aws):
    from helpers.monitoring.aws import SETTINGS as MONITOR_SETTINGS
    from helpers.monitoring.aws import load_settings, save_settings

    context, clock = aws
    save_settings(context, replace(load_settings(context), auto_approve=True))
    assert SsmParameters(context).get_json(MONITOR_SETTINGS)["auto_approve"] is True
    version = register_version(context)
    registered = {**approval_event(version), "detail": {**approval_event(version)["detail"],
                                                        "ModelApprovalStatus": "PendingManualApproval"}}
    assert handler(registered, clock=clock) == {"registered": version}
    package = AwsRegistry(context).describe(version)
    assert package["ModelApprovalStatus"] == "Approved" and package["ApprovalDescription"].startswith("auto-approve")
    handler(approval_event(version), clock=clock)  # the event that approval sends
    queue_prediction("model-v1")
    handler(endpoint_event("staging"), clock=clock)
    (alarm,) = context.client("cloudwatch").describe_alarms(AlarmNames=[f"{PREFIX}-wql-staging"])["MetricAlarms"]
    watched = {d["Name"]: d["Value"] for m in alarm["Metrics"] if "MetricStat" in m
               for d in m["MetricStat"]["Metric"]["Dimensions"]}
    assert watched == {"StageName": "staging", "ModelVersion": str(version)}
    endpoints = AwsEndpoints(context, SETTINGS, clock=clock, poll_s=0)
    assert endpoints.describe("prod")["ModelVersion"] == version  # promoted behind the guard, by the Lambda
    assert endpoints.history()["by"].tolist()[-1] == "auto-approve"
    assert endpoints.promote(by="ana", reason="again")["ModelVersion"] == version  # already there: nothing redone
    assert endpoints.history()["action"].tolist().count("deploy") == 2


def test_a_teardown_of_an_account_with_nothing_deployed_stops_nothing_and_finds_nothing_up(aws, monkeypatch):
    from botocore.exceptions import ClientError

    from helpers.connect import connect

    context, _ = aws
    workshop = connect("aws", prefix=PREFIX, region=REGION)
    workshop._backend.context = context

    def no_application(**_):  # moto raises a KeyError for an application that does not exist
        raise ClientError({"Error": {"Code": "ResourceNotFoundException", "Message": "not found"}},
                          "DescribeApplication")

    monkeypatch.setattr(context.client("kinesisanalyticsv2"), "describe_application", no_application)
    assert workshop.teardown() == Teardown(stopped=[], still_running=[])
