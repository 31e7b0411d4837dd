"""The clean-up that proves nothing is left, on both backends, without an AWS account: moto holds a whole workshop
(stacks, a versioned bucket, SageMaker, Feature Store, CloudWatch, Scheduler, SSM, logs) beside another learner's
look-alikes, and the clean-up must delete the one and leave the other.

moto 5.2.5 lacks a few calls the clean-up makes (DeleteFeatureGroup, DeleteModelPackage, DeleteModelPackageGroup,
StopPipelineExecution, Managed Flink's StopApplication and DeleteApplication) and answers DescribeFeatureGroup of a
missing group with a KeyError: each is patched on the client the code uses, acting on moto's own state, and nothing
of the code under test is patched."""
import json
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.kinesisanalyticsv2.models import kinesisanalyticsv2_backends
from moto.sagemaker.models import sagemaker_backends

from conftest import fake_aws_credentials
from helpers.aws import cleanup
from helpers.aws.session import AwsContext
from helpers.connect import AwsBackend, LocalBackend, connect
from helpers.core.cleanup import Cleanup, CleanupReport, Resource
from helpers.local import cleanup as local_cleanup
from helpers.local.config import Paths

REGION = "eu-west-1"
ACCOUNT = "123456789012"
PREFIX = "ws-test"
BUCKET = f"{PREFIX}-{ACCOUNT}-{REGION}"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/{PREFIX}-model-build"


def tags(prefix=PREFIX) -> list[dict]:
    return [{"Key": "Project", "Value": "realtime-mlops-workshop"}, {"Key": "WorkshopPrefix", "Value": prefix}]


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch):
    fake_aws_credentials(monkeypatch, REGION)


@pytest.fixture
def calls():
    """Every call the clean-up makes, in order: (operation, its parameters)."""
    return []


@pytest.fixture
def aws(calls):
    with mock_aws():
        context = AwsContext(prefix=PREFIX, region=REGION)
        context.session.events.register("provide-client-params", lambda params, model, **_: calls.append(
            (model.name, params)))  # copied into every client made from now on
        yield context


# ------------------------------------------------------------------ a whole workshop in moto


def client(service):
    return boto3.client(service, region_name=REGION)


def stack(name: str, resources: dict, outputs: dict | None = None, prefix=PREFIX) -> None:
    template = {"AWSTemplateFormatVersion": "2010-09-09", "Resources": resources,
                "Outputs": {k: {"Value": v} for k, v in (outputs or {}).items()}}
    client("cloudformation").create_stack(StackName=name, TemplateBody=json.dumps(template), Tags=tags(prefix))


def storage_stack() -> None:
    """The storage stack's shape: a versioned, tagged bucket and a KMS key."""
    stack(f"{PREFIX}-storage", {
        "Key": {"Type": "AWS::KMS::Key", "Properties": {  # moto takes the policy as a string (CloudFormation: JSON)
            "KeyPolicy": json.dumps({"Version": "2012-10-17", "Statement": []})}},
        "Bucket": {"Type": "AWS::S3::Bucket", "Properties": {
            "BucketName": BUCKET, "VersioningConfiguration": {"Status": "Enabled"}, "Tags": tags()}},
    }, {"Bucket": BUCKET})
    s3 = client("s3")
    for body in (b"1", b"2", b"3"):  # three versions, then a delete marker on top
        s3.put_object(Bucket=BUCKET, Key="poller/state.json", Body=body)
    s3.delete_object(Bucket=BUCKET, Key="poller/state.json")
    s3.put_object(Bucket=BUCKET, Key="offline-store/part-0.parquet", Body=b"rows")
    s3.create_multipart_upload(Bucket=BUCKET, Key="code/half-uploaded.zip")


def ingestion_stack() -> None:
    """A Kinesis stream and the poller's log group, and the feature group named in an output (the code makes it)."""
    stack(f"{PREFIX}-ingestion", {
        "Stream": {"Type": "AWS::Kinesis::Stream", "Properties": {"Name": f"{PREFIX}-transactions", "ShardCount": 1}},
        "PollerLogs": {"Type": "AWS::Logs::LogGroup", "Properties": {"LogGroupName": f"/aws/lambda/{PREFIX}-poller",
                                                                      "Tags": tags()}},
    }, {"FeatureGroupName": f"{PREFIX}-tx-per-minute", "InputStreamName": f"{PREFIX}-transactions"})


def model_build_stack() -> None:
    stack(f"{PREFIX}-model-build", {  # moto takes SSM tags as a list (CloudFormation: a map)
        "Threshold": {"Type": "AWS::SSM::Parameter", "Properties": {
            "Name": f"/{PREFIX}/model-build/wql-threshold", "Type": "String", "Value": "0.24", "Tags": tags()}},
    }, {"PipelineName": f"{PREFIX}-model-build"})


def deployment_stack() -> None:
    """An EventBridge rule that starts the deploy Lambda: disabled before anything it could react to is deleted."""
    stack(f"{PREFIX}-deployment", {"OnApproval": {"Type": "AWS::Events::Rule", "Properties": {
        "Name": f"{PREFIX}-deploy-on-approval", "State": "ENABLED",
        "EventPattern": {"source": ["aws.sagemaker"], "detail-type": ["SageMaker Model Package State Change"]}}}})
    events = client("events")  # and a rule the code made, outside the stack
    events.put_rule(Name=f"{PREFIX}-retrain-on-alarm", EventPattern=json.dumps({"source": ["aws.cloudwatch"]}),
                    Tags=tags())
    events.put_targets(Rule=f"{PREFIX}-retrain-on-alarm", Targets=[{
        "Id": "retrain", "Arn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{PREFIX}-retrain"}])


def sagemaker_resources() -> None:
    sagemaker = client("sagemaker")
    sagemaker.create_model(ModelName=f"{PREFIX}-model-v1", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": "deepar"},
                           Tags=tags())
    sagemaker.create_endpoint_config(EndpointConfigName=f"{PREFIX}-staging-v1", Tags=tags(), ProductionVariants=[{
        "VariantName": "model-v1", "ModelName": f"{PREFIX}-model-v1", "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.large"}])
    backend = sagemaker_backends[ACCOUNT][REGION]
    config = backend.endpoint_configs[f"{PREFIX}-staging-v1"]
    config.arn = config.endpoint_config_arn  # moto keeps this ARN in a 1-tuple, and the Tagging API answers that
    sagemaker.create_endpoint(EndpointName=f"{PREFIX}-staging", EndpointConfigName=f"{PREFIX}-staging-v1", Tags=tags())
    sagemaker.create_model_package_group(ModelPackageGroupName=f"{PREFIX}-avg-fee-deepar", Tags=tags())
    for _ in range(2):  # two versions, untagged: found inside their group
        sagemaker.create_model_package(ModelPackageGroupName=f"{PREFIX}-avg-fee-deepar", InferenceSpecification={
            "Containers": [{"Image": "deepar"}], "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"]})
    sagemaker.create_pipeline(PipelineName=f"{PREFIX}-model-build", RoleArn=ROLE, Tags=tags(),
                              PipelineDefinition=json.dumps({"Version": "2020-12-01", "Steps": []}))
    arn = sagemaker.start_pipeline_execution(PipelineName=f"{PREFIX}-model-build")["PipelineExecutionArn"]
    backend.pipelines[f"{PREFIX}-model-build"].pipeline_executions[arn].pipeline_execution_status = "Executing"
    from helpers.core.feature_definition import TX_PER_MINUTE

    request = TX_PER_MINUTE.create_request(f"s3://{BUCKET}/offline-store", ROLE, table_format="Iceberg",
                                           tags={t["Key"]: t["Value"] for t in tags()})
    sagemaker.create_feature_group(**{**request, "FeatureGroupName": f"{PREFIX}-tx-per-minute"})


def monitoring_resources() -> None:
    cloudwatch = client("cloudwatch")
    for stage in ("staging", "prod"):
        cloudwatch.put_metric_alarm(AlarmName=f"{PREFIX}-{stage}-wql", Namespace="CustomModelMonitoring",
                                    MetricName="weighted_quantile_loss", Statistic="Maximum", Period=3600,
                                    EvaluationPeriods=5, DatapointsToAlarm=3, Threshold=0.0,
                                    ComparisonOperator="GreaterThanOrEqualToThreshold", Tags=tags())
    cloudwatch.put_dashboard(DashboardName=f"{PREFIX}-monitoring", DashboardBody=json.dumps({"widgets": []}))
    client("scheduler").create_schedule(
        Name=f"{PREFIX}-monitor-prod", ScheduleExpression="cron(30 * * * ? *)", FlexibleTimeWindow={"Mode": "OFF"},
        Target={"Arn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{PREFIX}-monitor", "RoleArn": ROLE})
    logs = client("logs")
    logs.create_log_group(logGroupName=f"/aws/sagemaker/Endpoints/{PREFIX}-staging")  # SageMaker's, untagged
    logs.create_log_group(logGroupName=f"/aws/lambda/{PREFIX}-monitor", tags={t["Key"]: t["Value"] for t in tags()})
    client("ssm").put_parameter(Name=f"/{PREFIX}/model/current-wql", Value="0.15", Type="String", Tags=tags())
    client("ssm").put_parameter(Name=f"/{PREFIX}/monitoring/untagged", Value="1", Type="String")  # found by path


def orphans() -> None:
    """Tagged, outside any stack: a Managed Flink application (running) and a KMS key."""
    flink = client("kinesisanalyticsv2")
    flink.create_application(ApplicationName=f"{PREFIX}-aggregator", RuntimeEnvironment="FLINK-1_20",
                             ServiceExecutionRole=ROLE, Tags=tags())
    kinesisanalyticsv2_backends[ACCOUNT][REGION].applications[f"{PREFIX}-aggregator"].application_status = "RUNNING"
    client("kms").create_key(Description="orphan", Tags=[{"TagKey": t["Key"], "TagValue": t["Value"]}
                                                         for t in tags()])


def unknown_stack() -> None:
    stack(f"{PREFIX}-scratch", {"Stream": {"Type": "AWS::Kinesis::Stream", "Properties": {
        "Name": f"{PREFIX}-scratch", "ShardCount": 1}}})


def look_alikes() -> dict:
    """Another learner's workshop (ws-test-2: tagged with its own prefix, names that start with ours) and untagged
    resources of another prefix: all must be left alone. Returns how to check each is still there."""
    other = "ws-test-2"
    stack(f"{other}-storage", {"Stream": {"Type": "AWS::Kinesis::Stream", "Properties": {
        "Name": f"{other}-transactions", "ShardCount": 1}}}, prefix=other)
    client("ssm").put_parameter(Name=f"/{other}/model/current-wql", Value="0.2", Type="String", Tags=tags(other))
    client("cloudwatch").put_dashboard(DashboardName=f"{other}-monitoring", DashboardBody="{}")
    client("logs").create_log_group(logGroupName=f"/aws/lambda/{other}-poller")
    client("scheduler").create_schedule(Name=f"{other}-poller", ScheduleExpression="rate(1 minute)",
                                        FlexibleTimeWindow={"Mode": "OFF"},
                                        Target={"Arn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:f",
                                                "RoleArn": ROLE})
    s3 = client("s3")
    for bucket in ("other-workshop-bucket", f"{PREFIX}-untagged-bucket"):  # the second: our name, not our tags
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        s3.put_object(Bucket=bucket, Key="keep.txt", Body=b"mine")
    client("ssm").put_parameter(Name="/other/model/current-wql", Value="0.3", Type="String")
    client("logs").create_log_group(logGroupName="/aws/lambda/other-poller")
    client("sagemaker").create_model(ModelName="other-model", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": "x"})
    return {
        "stack": lambda: client("cloudformation").describe_stacks(StackName=f"{other}-storage"),
        "tagged parameter": lambda: client("ssm").get_parameter(Name=f"/{other}/model/current-wql"),
        "dashboard": lambda: client("cloudwatch").get_dashboard(DashboardName=f"{other}-monitoring"),
        "schedule": lambda: client("scheduler").get_schedule(Name=f"{other}-poller"),
        "log groups": lambda: [g["logGroupName"] for g in client("logs").describe_log_groups()["logGroups"]].index(
            "/aws/lambda/other-poller") + [g["logGroupName"] for g in client("logs").describe_log_groups()[
                "logGroups"]].index(f"/aws/lambda/{other}-poller"),
        "buckets": lambda: [s3.get_object(Bucket=b, Key="keep.txt") for b in ("other-workshop-bucket",
                                                                            f"{PREFIX}-untagged-bucket")],
        "untagged parameter": lambda: client("ssm").get_parameter(Name="/other/model/current-wql"),
        "model": lambda: client("sagemaker").describe_model(ModelName="other-model"),
    }


def not_found(operation: str, message: str) -> ClientError:
    return ClientError({"Error": {"Code": "ResourceNotFound", "Message": message}}, operation)


def add_what_moto_lacks(context: AwsContext, calls: list) -> None:
    """The calls moto 5.2.5 does not have, on the clients the clean-up uses, acting on moto's state. A feature group
    is deleted asynchronously, as on AWS: it answers Deleting twice before it is gone."""
    sagemaker, backend = context.client("sagemaker"), sagemaker_backends[ACCOUNT][REGION]
    describe, deleting = sagemaker.describe_feature_group, {}

    def feature_group_arn(name):
        return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:feature-group/{name}"

    def describe_feature_group(FeatureGroupName):
        arn = feature_group_arn(FeatureGroupName)
        if arn in deleting:
            deleting[arn] -= 1
            if deleting[arn] < 0:
                backend.feature_groups.pop(arn, None)
        if arn not in backend.feature_groups:
            raise not_found("DescribeFeatureGroup", f"Resource Not Found: feature group {FeatureGroupName}")
        return {**describe(FeatureGroupName=FeatureGroupName),
                **({"FeatureGroupStatus": "Deleting"} if arn in deleting else {})}

    def delete_feature_group(FeatureGroupName):
        calls.append(("DeleteFeatureGroup", {"FeatureGroupName": FeatureGroupName}))
        deleting[feature_group_arn(FeatureGroupName)] = 2

    def delete_model_package(ModelPackageName):
        calls.append(("DeleteModelPackage", {"ModelPackageName": ModelPackageName}))
        del backend.model_packages[ModelPackageName]

    def delete_model_package_group(ModelPackageGroupName):
        calls.append(("DeleteModelPackageGroup", {"ModelPackageGroupName": ModelPackageGroupName}))
        if any(p.model_package_group_name == ModelPackageGroupName for p in backend.model_packages.values()):
            raise ClientError({"Error": {"Code": "ConflictException", "Message": "the group holds versions"}},
                              "DeleteModelPackageGroup")
        del backend.model_package_groups[ModelPackageGroupName]

    def stop_pipeline_execution(PipelineExecutionArn):
        calls.append(("StopPipelineExecution", {"PipelineExecutionArn": PipelineExecutionArn}))
        pipeline = backend.pipelines[PipelineExecutionArn.split("/")[1]]
        pipeline.pipeline_executions[PipelineExecutionArn].pipeline_execution_status = "Stopped"

    for name, fake in {"describe_feature_group": describe_feature_group, "delete_feature_group": delete_feature_group,
                       "delete_model_package": delete_model_package, "stop_pipeline_execution": stop_pipeline_execution,
                       "delete_model_package_group": delete_model_package_group}.items():
        setattr(sagemaker, name, fake)
    flink = context.client("kinesisanalyticsv2")
    applications = kinesisanalyticsv2_backends[ACCOUNT][REGION].applications

    def stop_application(ApplicationName, **_):
        calls.append(("StopApplication", {"ApplicationName": ApplicationName}))
        applications[ApplicationName].application_status = "READY"

    def delete_application(ApplicationName, CreateTimestamp):
        calls.append(("DeleteApplication", {"ApplicationName": ApplicationName}))
        assert applications[ApplicationName].application_status == "READY", "stopped first"
        del applications[ApplicationName]

    flink.stop_application, flink.delete_application = stop_application, delete_application


@pytest.fixture
def workshop(aws, calls):
    """A whole workshop under ws-test, another learner's beside it; returns the checks that theirs is intact."""
    storage_stack(), ingestion_stack(), model_build_stack(), deployment_stack(), unknown_stack()
    sagemaker_resources(), monitoring_resources(), orphans()
    theirs = look_alikes()
    add_what_moto_lacks(aws, calls)
    calls.clear()
    return theirs


def operations(calls: list) -> list[str]:
    return [operation for operation, _ in calls]


# ------------------------------------------------------------------ AWS


def test_the_inventory_finds_everything_by_tag_by_stack_and_inside_groups_and_nothing_of_anyone_else(aws, workshop):
    found = {r.key: r for r in cleanup.inventory(aws)}
    assert found[("bucket", BUCKET)].found_by == "stack ws-test-storage"
    assert found[("bucket", BUCKET)].owner == "ws-test-storage" and found[("bucket", BUCKET)].arn  # ARN: the tag's
    assert found[("kinesis-stream", "ws-test-transactions")].owner == "ws-test-ingestion"  # no tags: the stack's
    feature_group = found[("feature-group", "ws-test-tx-per-minute")]
    assert feature_group.found_by == "stack ws-test-ingestion (output FeatureGroupName)" and feature_group.owner is None
    assert found[("endpoint", "ws-test-staging")].found_by == "tag"
    assert found[("endpoint-config", "ws-test-staging-v1")].found_by == "tag"
    assert {k for k in found if k[0] == "model-package"} == {("model-package", "ws-test-avg-fee-deepar/1"),
                                                             ("model-package", "ws-test-avg-fee-deepar/2")}
    assert found[("ssm-parameter", "/ws-test/monitoring/untagged")].found_by == "path /ws-test/"
    assert found[("ssm-parameter", "/ws-test/model-build/wql-threshold")].owner == "ws-test-model-build"
    assert found[("dashboard", "ws-test-monitoring")].found_by == "name"
    assert found[("schedule", "default/ws-test-monitor-prod")].found_by == "name"
    assert ("log-group", "/aws/sagemaker/Endpoints/ws-test-staging") in found
    assert {k[1] for k in found if k[0] == "stack"} == {"ws-test-storage", "ws-test-ingestion", "ws-test-model-build",
                                                        "ws-test-deployment", "ws-test-scratch"}
    assert found[("events:rule", "ws-test-deploy-on-approval")].owner == "ws-test-deployment"
    assert found[("events:rule", "ws-test-retrain-on-alarm")].found_by == "tag"
    assert not [k for k in found if "ws-test-2" in k[1] or "other" in k[1] or "untagged-bucket" in k[1]], found
    assert not [k for k in found if k[0] == "pipeline-execution"]  # history, not a resource


def test_clean_up_with_yes_deletes_everything_in_a_safe_order_and_proves_nothing_is_left(aws, workshop, calls):
    waited = []
    report = cleanup.clean_up(aws, yes=True, wait=waited.append)

    assert report.failed == [] and report.left == [] and report.clean, report.summary()
    assert not report.asked and cleanup.inventory(aws) == []
    assert report.summary().startswith("clean: nothing tagged WorkshopPrefix=ws-test is left in eu-west-1 (")
    assert [r.kind for r in report.pending] == ["kms-key"] and "pending deletion" in report.summary()
    assert {("bucket", BUCKET), ("endpoint", "ws-test-staging"), ("stack", "ws-test-storage"),
            ("feature-group", "ws-test-tx-per-minute"), ("model-package", "ws-test-avg-fee-deepar/1"),
            ("flink-application", "ws-test-aggregator")} <= {r.key for r in report.deleted}
    for check in workshop.values():
        check()  # raises if another learner's resource went

    done = operations(calls)
    order = ["DisableRule", "DeleteRule", "DeleteEndpoint", "DeleteEndpointConfig", "DeleteModel",
             "StopPipelineExecution", "DeletePipeline",
             "DeleteSchedule", "DeleteAlarms", "DeleteDashboards", "DeleteModelPackage", "DeleteModelPackageGroup",
             "DeleteFeatureGroup", "StopApplication", "DeleteApplication", "DeleteObjects", "DeleteStack",
             "DeleteParameter", "DeleteLogGroup", "ScheduleKeyDeletion"]
    assert [done.index(o) for o in order] == sorted(done.index(o) for o in order), done
    assert done.index("DeleteModelPackageGroup") > max(i for i, o in enumerate(done) if o == "DeleteModelPackage")
    assert len(waited) >= 2, "the feature group's deletion was waited for"
    stacks_deleted = [p["StackName"].split("/")[1] for o, p in calls if o == "DeleteStack"]
    assert stacks_deleted == ["ws-test-scratch", "ws-test-deployment", "ws-test-model-build", "ws-test-ingestion",
                              "ws-test-storage"]  # one the workshop does not know first, then newest first
    assert sorted(p["Name"] for o, p in calls if o == "DisableRule") == ["ws-test-deploy-on-approval",
                                                                         "ws-test-retrain-on-alarm"]
    assert [p["Name"] for o, p in calls if o == "DeleteRule"] == ["ws-test-retrain-on-alarm"]  # the other: its stack
    assert BUCKET not in [b["Name"] for b in client("s3").list_buckets()["Buckets"]]  # emptied, so its stack could


def test_answering_no_deletes_nothing(aws, workshop, calls):
    questions = []
    report = cleanup.clean_up(aws, ask=lambda q: questions.append(q) or "n")
    assert report.asked and report.declined and report.deleted == [] and not report.clean
    assert "Delete these" in questions[0] and "tagged WorkshopPrefix=ws-test in eu-west-1" in questions[0]
    assert not [o for o in operations(calls) if o.startswith(("Delete", "Stop", "Schedule"))]
    assert len(report.left) == len(report.found) > 20 and "nothing deleted" in report.summary()


@pytest.mark.parametrize("silence", [EOFError, NotImplementedError])  # closed stdin; IPython under papermill, nbval
def test_nobody_to_answer_deletes_nothing_and_says_how_to_run_it_without_a_question(aws, workshop, calls, silence):
    def ask(question):
        raise silence("no stdin")

    report = cleanup.clean_up(aws, ask=ask)
    assert report.unanswered and report.deleted == [] and len(report.left) == len(report.found)
    assert not [o for o in operations(calls) if o.startswith(("Delete", "Stop", "Schedule"))]
    summary = report.summary()
    assert summary.startswith("nothing deleted: nobody could answer") and "yes=True" in summary
    assert "python -m helpers aws --prefix ws-test --region eu-west-1 cleanup --yes" in summary


def test_answering_y_deletes(aws, workshop):
    report = cleanup.clean_up(aws, ask=lambda q: " Y ", wait=lambda s: None)
    assert report.asked and not report.declined and report.clean and cleanup.inventory(aws) == []


def test_a_resource_that_refuses_is_reported_and_the_rest_is_deleted(aws, workshop, monkeypatch):
    def refuse(**_):
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not allowed"}}, "DeleteDashboards")

    monkeypatch.setattr(aws.client("cloudwatch"), "delete_dashboards", refuse)
    report = cleanup.clean_up(aws, yes=True, wait=lambda s: None)
    dashboard = Resource("dashboard", "ws-test-monitoring")
    assert [f.resource.key for f in report.failed] == [dashboard.key]
    assert "access denied while deleting the dashboard ws-test-monitoring" in report.failed[0].error  # explained()
    assert [r.key for r in report.left] == [dashboard.key]
    assert ("stack", "ws-test-storage") in {r.key for r in report.deleted}
    summary = report.summary()
    assert summary.startswith("NOT CLEAN: 1 resource is left tagged WorkshopPrefix=ws-test in eu-west-1: "
                              "dashboard ws-test-monitoring")
    assert "resource-groups/tag-editor" in summary and "not allowed" in summary


def test_a_stack_whose_deletion_fails_says_why_and_the_rest_goes_on(aws, workshop, monkeypatch):
    cfn = aws.client("cloudformation")
    real = cfn.describe_stacks

    def describe_stacks(**params):  # the ingestion stack fails to delete: CloudFormation says so in its status
        if params.get("StackName", "").startswith("arn:") and "/ws-test-ingestion/" in params["StackName"]:
            return {"Stacks": [{"StackName": "ws-test-ingestion", "StackStatus": "DELETE_FAILED"}]}
        return real(**params)

    monkeypatch.setattr(cfn, "describe_stacks", describe_stacks)
    monkeypatch.setattr(cfn, "describe_stack_events", lambda **_: {"StackEvents": [{
        "LogicalResourceId": "Stream", "ResourceStatus": "DELETE_FAILED", "ResourceStatusReason": "in use"}]})
    report = cleanup.clean_up(aws, yes=True, wait=lambda s: None)
    assert [str(f) for f in report.failed] == ["stack ws-test-ingestion: DELETE_FAILED: Stream: in use"]
    assert ("stack", "ws-test-storage") in {r.key for r in report.deleted}  # deleted after the failed one


def test_nothing_found_asks_nothing_and_says_clean(aws):
    report = cleanup.clean_up(aws, ask=lambda q: pytest.fail("asked"))
    assert report.clean and not report.asked
    assert report.summary() == "clean: nothing tagged WorkshopPrefix=ws-test is left in eu-west-1."
    ws = connect("aws", prefix="nobody", region=REGION)  # the same through the seam
    assert ws.inventory() == [] and ws.clean_up(ask=lambda q: pytest.fail("asked")).clean


def test_arns_name_their_kind():
    assert cleanup._kind_and_name(f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/ws-test-poller:*") == \
        ("log-group", "/aws/lambda/ws-test-poller")
    assert cleanup._kind_and_name(f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/ws-test/model/current-wql") == \
        ("ssm-parameter", "/ws-test/model/current-wql")
    assert cleanup._kind_and_name(f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/ws-test-storage/abc") == \
        ("stack", "ws-test-storage")
    assert cleanup._kind_and_name(f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:pipeline/ws-test-model-build/execution/x") \
        == ("pipeline-execution", "ws-test-model-build/execution/x")
    assert cleanup._kind_and_name(f"arn:aws:sqs:{REGION}:{ACCOUNT}:ws-test-poller-dlq") == \
        ("sqs-queue", "ws-test-poller-dlq")
    assert cleanup._kind_and_name("arn:aws:s3:::ws-test-bucket") == ("bucket", "ws-test-bucket")
    assert cleanup._kind_and_name(f"arn:aws:glue:{REGION}:{ACCOUNT}:table/db/t") == ("glue:table", "db/t")
    # what the Tagging API finds of a stack is known as the stack's: the same kind from the ARN and the type
    assert cleanup._kind_and_name(f"arn:aws:lambda:{REGION}:{ACCOUNT}:event-source-mapping:abc")[0] == \
        cleanup._stack_kind("AWS::Lambda::EventSourceMapping") == "lambda:event-source-mapping"
    assert cleanup._stack_kind("AWS::Events::Rule") == "events:rule" and cleanup._stack_kind("AWS::S3::Bucket") == \
        "bucket"


# ------------------------------------------------------------------ local


def local_state(tmp_path: Path) -> Path:
    paths = Paths.at(tmp_path / "state")
    for path in (paths.event_log, paths.feature_store / "store.db", paths.params, paths.clock, paths.ingest_log,
                 paths.registry / "mlflow.db"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (paths.root / "params.db-wal").write_text("x")
    return paths.root


def test_local_clean_up_with_yes_leaves_nothing(tmp_path):
    root = local_state(tmp_path)
    found = local_cleanup.inventory(root)
    assert {r.name for r in found} == {"stream", "feature_store", "params.db", "params.db-wal", "clock.json", "logs",
                                       "registry"}
    report = connect("local", root).clean_up(ask=lambda q: "y")
    assert report.clean and not root.exists() and local_cleanup.inventory(root) == []
    assert report.summary() == f"clean: nothing of the workshop is left in {root} (7 resources deleted)."


def test_local_clean_up_leaves_alone_what_the_workshop_did_not_write(tmp_path):
    root = local_state(tmp_path)
    (root / "notes.md").write_text("mine")
    report = local_cleanup.clean_up(root, yes=True)
    assert report.clean and [p.name for p in root.iterdir()] == ["notes.md"]


def test_local_clean_up_without_an_answer_leaves_everything(tmp_path):
    root = local_state(tmp_path)
    before = sorted(p for p in root.rglob("*"))

    def ask(question):
        raise EOFError

    report = local_cleanup.clean_up(root, ask=ask)
    assert report.unanswered and sorted(root.rglob("*")) == before
    assert "python -m helpers cleanup --yes" in report.summary() and "yes=True" in report.summary()
    assert local_cleanup.clean_up(root, ask=lambda q: "no").declined and sorted(root.rglob("*")) == before


def test_a_missing_state_directory_is_clean_and_is_not_created(tmp_path):
    report = local_cleanup.clean_up(tmp_path / "never")
    assert report.clean and not (tmp_path / "never").exists()


# ------------------------------------------------------------------ the seam


def test_both_backends_offer_the_clean_up_interface(tmp_path):
    import inspect

    wanted = {name: list(inspect.signature(m).parameters)[1:] for name, m in vars(Cleanup).items()
              if inspect.isfunction(m) and not name.startswith("_")}
    for backend in (LocalBackend(tmp_path), AwsBackend(prefix=PREFIX, region=REGION)):
        assert {name: list(inspect.signature(getattr(backend, name)).parameters) for name in wanted} == wanted
    assert isinstance(connect("local", tmp_path / "state").clean_up(yes=True), CleanupReport)


def test_the_cli_cleans_up_and_exits_0_only_when_clean(tmp_path, capsys):
    from helpers.cli import main

    root = local_state(tmp_path)
    assert main(["--state-dir", str(root), "cleanup"]) == 1  # pytest's stdin cannot answer: nothing deleted
    assert root.exists() and "nothing deleted" in capsys.readouterr().out
    assert main(["--state-dir", str(root), "cleanup", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "params.db" in out and "clean: nothing of the workshop is left" in out and not root.exists()


# ------------------------------------------------------------------ the notebook


@pytest.mark.slow
def test_notebook_99_headless_deletes_nothing_and_with_yes_leaves_nothing(tmp_path):
    from helpers.notebooks import CLEANUP_NOTEBOOK, NOTEBOOK_DIR, run_notebook

    root = local_state(tmp_path)
    before = sorted(root.rglob("*"))

    def text(executed: Path) -> str:
        outputs = [o for c in json.loads(executed.read_text())["cells"] for o in c.get("outputs", [])]
        assert not [o for o in outputs if o["output_type"] == "error"]
        return "".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", "")) for o in outputs)

    kept = text(run_notebook(NOTEBOOK_DIR / CLEANUP_NOTEBOOK, tmp_path / "out", {"state_dir": str(root)}))
    assert "7 resources found" in kept and "nothing deleted: nobody could answer" in kept and "yes=True" in kept
    assert sorted(root.rglob("*")) == before
    gone = text(run_notebook(NOTEBOOK_DIR / CLEANUP_NOTEBOOK, tmp_path / "out", {"state_dir": str(root), "yes": True}))
    assert f"clean: nothing of the workshop is left in {root}" in gone and not root.exists()
