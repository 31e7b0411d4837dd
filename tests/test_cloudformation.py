"""The AWS stacks in cloudformation/: lint-clean (cfn-lint, checkov), tagged for clean-up, wired the way the
notebooks and the code expect, and deployable under moto (the resource types moto deploys), offline and
without AWS credentials.
"""
import ast
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import boto3
import pytest
from cfnlint.decode import decode
from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((REPO / "cloudformation").glob("*.yaml"))
STORAGE = REPO / "cloudformation" / "storage.yaml"
INGESTION = REPO / "cloudformation" / "ingestion.yaml"
MODEL_BUILD = REPO / "cloudformation" / "model-build.yaml"
DEPLOYMENT = REPO / "cloudformation" / "deployment.yaml"
MONITORING = REPO / "cloudformation" / "monitoring.yaml"
CFN_LINT = Path(sys.executable).parent / "cfn-lint"
# checkov pins packages the project pins differently (boto3 among them): `make test` builds it its own .venv-lint.
CHECKOV = Path(os.environ.get("CHECKOV", REPO / ".venv-lint" / "bin" / "checkov"))
TAGS = {"Project": "realtime-mlops-workshop", "WorkshopPrefix": {"Ref": "Prefix"}}
REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's
PREFIX = "mlops-workshop"

NOTEBOOK_OUTPUTS = ["InputStreamName", "InputStreamArn", "OutputStreamName", "OutputStreamArn", "FlinkApplicationName",
                    "FlinkLogGroup", "PollerFunctionName", "PollerScheduleName", "WriterFunctionName",
                    "WriterDeadLetterQueueUrl", "FeatureGroupName", "FeatureStoreRoleArn", "OfflineStoreS3Uri",
                    "DeadLettersS3Uri", "AthenaWorkGroup", "Bucket", "KmsKeyArn"]
MODEL_BUILD_OUTPUTS = ["ModelPackageGroupName", "PipelineName", "PipelineRoleArn", "ArtifactsS3Uri",
                       "WqlThresholdParameter", "BaselineMarginParameter", "HyperparametersParameter",
                       "CurrentWqlParameter", "ParameterPath"]
DEPLOYMENT_OUTPUTS = ["DeployFunctionName", "EndpointRoleArn", "StagingEndpointName", "ProductionEndpointName",
                      "DataCaptureS3Uri", "DeploymentsS3Uri", "EndpointInstanceType", "DeployDeadLetterQueueUrl"]
# What moto 5.2.5's CloudFormation deploys; the rest (Scheduler, Managed Flink, Athena, the model registry, Lambda's
# EventInvokeConfig, SQS queue policies...) it cannot.
MOTO_TYPES = {"AWS::Kinesis::Stream", "AWS::IAM::Role", "AWS::SQS::Queue", "AWS::Lambda::Function",
              "AWS::Logs::LogGroup", "AWS::Lambda::EventSourceMapping", "AWS::KMS::Key", "AWS::KMS::Alias",
              "AWS::S3::Bucket", "AWS::SSM::Parameter", "AWS::Events::Rule", "AWS::Lambda::Permission"}


def load(path: Path) -> dict:
    """The template as plain JSON-able dicts (cfn-lint's own loader: it knows !Ref, !Sub, !GetAtt...)."""
    template, problems = decode(str(path))
    assert not problems, [str(p) for p in problems]
    return json.loads(json.dumps(template))


def resources(path: Path, type_: str | None = None) -> dict:
    return {name: r for name, r in load(path)["Resources"].items() if type_ in (None, r["Type"])}


def run(command: list, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, **env})


def test_there_are_the_stacks_the_code_deploys():
    from helpers.aws.stacks import STACKS

    found = {p.stem for p in TEMPLATES}
    assert found <= set(STACKS), sorted(found - set(STACKS))  # each template is a stack the code deploys
    assert {"storage", "ingestion", "model-build", "deployment", "monitoring"} <= found


# ------------------------------------------------------------------ linters

@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_cfn_lint_is_clean(path):
    result = run([CFN_LINT, "--format", "parseable", path])
    assert result.returncode == 0, f"cfn-lint {path.name}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_checkov_is_clean(path):
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: `make test` builds it (make .venv-lint/.installed)")
    # --skip-download, BC_SKIP_MAPPING: offline; checkov otherwise asks a web API for its check guidelines.
    # The path is relative to the checkout: checkov scans the file name it keeps beside a Lambda's variables as if it
    # were one, and 40 path characters in a row without a dot, dash or underscore (/tmp/fc10/repo/cloudformation/
    # deployment) read to CKV_AWS_45 as an AWS secret key, so the result would hang on where the clone lives.
    result = run([CHECKOV, "-f", path.relative_to(REPO), "--framework", "cloudformation", "--compact", "--quiet",
                  "--skip-download"], BC_SKIP_MAPPING="TRUE")
    assert result.returncode == 0, f"checkov {path.name}:\n{result.stdout}{result.stderr}"
    passed = re.search(r"Passed checks: (\d+), Failed checks: (\d+)", result.stdout)
    assert passed and int(passed[1]) >= 5 and passed[2] == "0", result.stdout  # it really scanned the resources


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_every_checkov_skip_says_why(path):
    for name, resource in resources(path).items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert re.fullmatch(r"CKV2?_AWS_\d+", skip.get("id", "")), (name, skip)
            assert isinstance(skip.get("comment"), str) and len(skip["comment"].split()) >= 5, (name, skip)


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_each_template_opens_with_a_two_line_comment(path):
    head = path.read_text().splitlines()[:3]
    assert head[0].startswith("# Stack <Prefix>-") and head[1].startswith("# ") and not head[2].startswith("#")


# ------------------------------------------------------------------ tags, outputs, wiring

@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_every_taggable_resource_carries_the_clean_up_tags(path):
    taggable = 0
    for name, resource in resources(path).items():
        schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema(REGION, resource["Type"]).schema
        if "Tags" not in schema.get("properties", {}):
            continue
        taggable += 1
        tags = resource.get("Properties", {}).get("Tags")
        as_dict = tags if isinstance(tags, dict) else {t["Key"]: t["Value"] for t in tags or []}
        assert {k: as_dict.get(k) for k in TAGS} == TAGS, f"{name} ({resource['Type']}): tags {tags}"
    assert taggable >= 2


def test_the_outputs_the_notebooks_read_exist():
    outputs = load(INGESTION)["Outputs"]
    assert set(NOTEBOOK_OUTPUTS) <= set(outputs), sorted(set(NOTEBOOK_OUTPUTS) - set(outputs))
    storage = load(STORAGE)["Outputs"]
    exports = {name: o["Export"]["Name"] for name, o in storage.items()}
    assert exports == {"Bucket": {"Fn::Sub": "${Prefix}-bucket"}, "BucketArn": {"Fn::Sub": "${Prefix}-bucket-arn"},
                       "KmsKeyArn": {"Fn::Sub": "${Prefix}-kms-key-arn"}}


def test_the_streams_are_on_demand_and_kms_encrypted():
    streams = resources(INGESTION, "AWS::Kinesis::Stream")
    assert sorted(streams) == ["InputStream", "OutputStream"]
    for name, stream in streams.items():
        props = stream["Properties"]
        assert props["StreamModeDetails"] == {"StreamMode": "ON_DEMAND"}, name
        assert props["StreamEncryption"] == {"EncryptionType": "KMS",
                                             "KeyId": {"Fn::ImportValue": {"Fn::Sub": "${Prefix}-kms-key-arn"}}}, name
        assert props["RetentionPeriodHours"] == 24
    assert streams["InputStream"]["Properties"]["Name"] == {"Fn::Sub": "${Prefix}-transactions"}
    assert streams["OutputStream"]["Properties"]["Name"] == {"Fn::Sub": "${Prefix}-features"}


def test_the_bucket_is_versioned_encrypted_private_and_tls_only():
    stack = resources(STORAGE)
    bucket = stack["Bucket"]["Properties"]
    assert bucket["BucketName"] == {"Fn::Sub": "${Prefix}-${AWS::AccountId}-${AWS::Region}"}
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule == {"BucketKeyEnabled": True, "ServerSideEncryptionByDefault": {
        "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": {"Fn::GetAtt": ["Key", "Arn"]}}}
    block = bucket["PublicAccessBlockConfiguration"]
    assert set(block) == {"BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"}
    assert all(v is True for v in block.values())
    assert bucket["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    rules = {r["Id"]: r for r in bucket["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-noncurrent-versions"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 7}
    assert (rules["expire-athena-results"]["Prefix"], rules["expire-athena-results"]["ExpirationInDays"]) == \
        ("athena-results/", 7)
    (deny,) = stack["BucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert (deny["Effect"], deny["Condition"]) == ("Deny", {"Bool": {"aws:SecureTransport": "false"}})
    key = stack["Key"]["Properties"]
    assert key["EnableKeyRotation"] is True
    assert stack["KeyAlias"]["Properties"]["AliasName"] == {"Fn::Sub": "alias/${Prefix}"}
    principals = [s["Principal"] for s in key["KeyPolicy"]["Statement"]]
    assert "*" not in principals and all(p.get("AWS") != "*" for p in principals)


def test_the_key_is_used_only_through_the_workshop_services():
    statements = {s["Sid"]: s for s in resources(STORAGE)["Key"]["Properties"]["KeyPolicy"]["Statement"]}
    via = statements["UseThroughWorkshopServices"]["Condition"]["StringEquals"]["kms:ViaService"]
    services = {v["Fn::Sub"].split(".")[0] for v in via}
    assert services == {"kinesis", "lambda", "sqs", "sagemaker", "kinesisanalytics", "s3", "athena"}
    admin = statements["AccountAdministersTheKey"]["Action"]
    assert not {"kms:Decrypt", "kms:Encrypt", "kms:*"} & set(admin)  # administration only, no direct use
    logs = statements["CloudWatchLogsForWorkshopLogGroups"]
    assert logs["Principal"] == {"Service": {"Fn::Sub": "logs.${AWS::Region}.amazonaws.com"}}
    events = statements["EventBridgeDeadLettersFromWorkshopRules"]  # the deploy rules' encrypted dead letters
    assert events["Principal"] == {"Service": "events.amazonaws.com"}
    assert sorted(events["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert events["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Sub"].endswith(":rule/${Prefix}-*")


def test_the_flink_application_is_configured_for_the_job():
    app = resources(INGESTION)["FlinkApplication"]["Properties"]
    major, minor = map(int, re.fullmatch(r"FLINK-(\d+)_(\d+)", app["RuntimeEnvironment"]).groups())
    assert (major, minor) >= (1, 20)
    assert app["ApplicationName"] == {"Fn::Sub": "${Prefix}-aggregator"}
    assert app["ApplicationMode"] == "STREAMING"
    config = app["ApplicationConfiguration"]
    assert config["ApplicationCodeConfiguration"]["CodeContentType"] == "ZIPFILE"
    assert config["ApplicationCodeConfiguration"]["CodeContent"]["S3ContentLocation"]["FileKey"] == \
        {"Ref": "FlinkCodeKey"}
    assert config["ApplicationSnapshotConfiguration"] == {"SnapshotsEnabled": True}
    flink = config["FlinkApplicationConfiguration"]
    assert flink["ParallelismConfiguration"] == {"ConfigurationType": "CUSTOM", "Parallelism": 1,
                                                 "ParallelismPerKPU": 1, "AutoScalingEnabled": False}
    groups = {g["PropertyGroupId"]: g["PropertyMap"] for g in config["EnvironmentProperties"]["PropertyGroups"]}
    run_options = groups["kinesis.analytics.flink.run.options"]
    assert run_options["python"] == "main.py" and run_options["jarfile"] == {"Ref": "ConnectorJar"}
    assert run_options["pyFiles"] == "helpers/"
    props = groups["FlinkApplicationProperties"]
    assert set(props) == {"connector", "source.stream.arn", "features.stream.arn", "aws.region",
                          "source.init.position", "dead_letters.path"}
    assert props["connector"] == "kinesis" and props["source.init.position"] == "TRIM_HORIZON"
    assert props["source.stream.arn"] == {"Fn::GetAtt": ["InputStream", "Arn"]}
    assert props["features.stream.arn"] == {"Fn::GetAtt": ["OutputStream", "Arn"]}
    assert props["aws.region"] == {"Ref": "AWS::Region"}
    assert props["dead_letters.path"]["Fn::Sub"][0] == "s3://${Bucket}/dead-letters/"


def test_the_connector_jar_default_is_the_one_packaged():
    from helpers.aws.package import CONNECTOR

    assert load(INGESTION)["Parameters"]["ConnectorJar"]["Default"] == f"lib/{CONNECTOR}"


def test_the_schedule_says_minute_or_minutes_and_polls_never_overlap():
    template = load(INGESTION)
    schedule = template["Resources"]["PollerSchedule"]["Properties"]
    condition, singular, plural = schedule["ScheduleExpression"]["Fn::If"]
    assert template["Conditions"][condition] == {"Fn::Equals": [{"Ref": "PollingIntervalMinutes"}, "1"]}
    assert singular == "rate(1 minute)" and plural == {"Fn::Sub": "rate(${PollingIntervalMinutes} minutes)"}
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert schedule["Target"]["RetryPolicy"] == {"MaximumRetryAttempts": 0}
    interval = template["Parameters"]["PollingIntervalMinutes"]
    assert (interval["Type"], interval["MinValue"], interval["MaxValue"]) == ("Number", 1, 60)
    poller = template["Resources"]["PollerFunction"]["Properties"]
    assert poller["Timeout"] < 60 * interval["MinValue"]
    assert poller["ReservedConcurrentExecutions"] == 1


def test_the_writer_reads_the_features_stream_with_partial_batch_failures():
    mapping = resources(INGESTION)["WriterEventSourceMapping"]["Properties"]
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["OutputStream", "Arn"]}
    assert {k: mapping[k] for k in ("StartingPosition", "BatchSize", "MaximumBatchingWindowInSeconds",
                                    "FunctionResponseTypes", "BisectBatchOnFunctionError", "MaximumRetryAttempts",
                                    "MaximumRecordAgeInSeconds")} == {
        "StartingPosition": "TRIM_HORIZON", "BatchSize": 100, "MaximumBatchingWindowInSeconds": 5,
        "FunctionResponseTypes": ["ReportBatchItemFailures"], "BisectBatchOnFunctionError": True,
        "MaximumRetryAttempts": 5, "MaximumRecordAgeInSeconds": 3600}
    assert mapping["DestinationConfig"] == {"OnFailure": {"Destination": {"Fn::GetAtt":
                                                                          ["WriterDeadLetterQueue", "Arn"]}}}


def role_statements(path: Path):
    """(role, statement) for every statement of every inline policy of the template's roles."""
    for name, role in resources(path, "AWS::IAM::Role").items():
        for policy in role["Properties"]["Policies"]:
            for statement in policy["PolicyDocument"]["Statement"]:
                yield name, statement


def test_only_the_metrics_statement_has_a_wildcard_resource_and_it_is_conditioned():
    wildcards = []
    for name, statement in role_statements(INGESTION):
        assert statement["Effect"] == "Allow"
        if "*" in as_list(statement["Resource"]):
            wildcards.append((name, statement["Action"], statement.get("Condition")))
    assert wildcards == [("FlinkRole", "cloudwatch:PutMetricData",
                          {"StringEquals": {"cloudwatch:namespace": "AWS/KinesisAnalytics"}})]


def test_the_log_groups_are_encrypted_and_kept_14_days():
    groups = resources(INGESTION, "AWS::Logs::LogGroup")
    assert len(groups) == 3
    for name, group in groups.items():
        props = group["Properties"]
        assert props["RetentionInDays"] == 14, name
        assert props["KmsKeyId"] == {"Fn::ImportValue": {"Fn::Sub": "${Prefix}-kms-key-arn"}}, name


# ------------------------------------------------------------------ the model-build stack

def model_build_statements() -> list[dict]:
    (policy,) = resources(MODEL_BUILD)["PipelineRole"]["Properties"]["Policies"]
    return policy["PolicyDocument"]["Statement"]


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def test_the_outputs_the_model_build_notebook_reads_exist():
    outputs = load(MODEL_BUILD)["Outputs"]
    assert set(outputs) == set(MODEL_BUILD_OUTPUTS), sorted(set(outputs) ^ set(MODEL_BUILD_OUTPUTS))
    assert outputs["PipelineName"]["Value"] == {"Fn::Sub": "${Prefix}-model-build"}
    assert outputs["ModelPackageGroupName"]["Value"] == {"Fn::Sub": "${Prefix}-avg-fee-deepar"}
    assert outputs["PipelineRoleArn"]["Value"] == {"Fn::GetAtt": ["PipelineRole", "Arn"]}
    assert outputs["ArtifactsS3Uri"]["Value"]["Fn::Sub"][0] == "s3://${Bucket}/model-build"
    assert outputs["ParameterPath"]["Value"] == {"Fn::Sub": "/${Prefix}/"}
    for name in ("WqlThresholdParameter", "BaselineMarginParameter", "HyperparametersParameter",
                 "CurrentWqlParameter"):
        assert outputs[name]["Value"] == {"Ref": name}


def test_the_model_build_parameters_default_to_the_code_s_values():
    from helpers.core.hyperparameters import DeepARHyperparameters
    from helpers.training.interface import BASELINE_MARGIN, MODEL_BUILD_DEFAULTS, WQL_THRESHOLD

    template = load(MODEL_BUILD)
    parameters = template["Parameters"]
    assert parameters["Prefix"] == load(INGESTION)["Parameters"]["Prefix"] | {
        "Description": parameters["Prefix"]["Description"]}
    # One definition of DeepAR's defaults: the code's dataclass; the stack's default must not drift from it.
    default = parameters["Hyperparameters"]["Default"]
    assert "\n" not in default and json.loads(default) == DeepARHyperparameters().to_dict()
    assert DeepARHyperparameters.from_dict(json.loads(default)) == DeepARHyperparameters()
    assert float(parameters["WqlThreshold"]["Default"]) == MODEL_BUILD_DEFAULTS[WQL_THRESHOLD]
    assert float(parameters["BaselineMargin"]["Default"]) == MODEL_BUILD_DEFAULTS[BASELINE_MARGIN]
    for name in ("WqlThreshold", "BaselineMargin", "Hyperparameters"):
        assert re.fullmatch(parameters[name]["AllowedPattern"], parameters[name]["Default"]), name

    ssm = {name: r["Properties"] for name, r in resources(MODEL_BUILD, "AWS::SSM::Parameter").items()}
    assert {name: (p["Name"], p["Value"]) for name, p in ssm.items()} == {
        "WqlThresholdParameter": ({"Fn::Sub": "/${Prefix}/model-build/wql-threshold"}, {"Ref": "WqlThreshold"}),
        "BaselineMarginParameter": ({"Fn::Sub": "/${Prefix}/model-build/baseline-margin"}, {"Ref": "BaselineMargin"}),
        "HyperparametersParameter": ({"Fn::Sub": "/${Prefix}/model-build/hyperparameters"},
                                     {"Ref": "Hyperparameters"}),
        "CurrentWqlParameter": ({"Fn::Sub": "/${Prefix}/model/current-wql"}, "none")}
    assert {p["Type"] for p in ssm.values()} == {"String"}
    assert '"none"' in ssm["CurrentWqlParameter"]["Description"]
    # The same names as the local parameter store's, under the learner's prefix instead of /rtmlops/.
    assert WQL_THRESHOLD.replace("/rtmlops/", "/${Prefix}/") == ssm["WqlThresholdParameter"]["Name"]["Fn::Sub"]
    assert BASELINE_MARGIN.replace("/rtmlops/", "/${Prefix}/") == ssm["BaselineMarginParameter"]["Name"]["Fn::Sub"]


def test_the_model_package_group_is_named_after_the_prefix():
    (group,) = resources(MODEL_BUILD, "AWS::SageMaker::ModelPackageGroup").values()
    props = group["Properties"]
    assert props["ModelPackageGroupName"] == {"Fn::Sub": "${Prefix}-avg-fee-deepar"}
    assert props["ModelPackageGroupDescription"]


def test_the_model_build_role_passes_only_itself_and_only_to_sagemaker():
    role = resources(MODEL_BUILD)["PipelineRole"]["Properties"]
    assert role["RoleName"] == {"Fn::Sub": "${Prefix}-model-build"}
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert (trust["Principal"], trust["Action"]) == ({"Service": "sagemaker.amazonaws.com"}, "sts:AssumeRole")
    passing = [s for s in model_build_statements() if "iam:PassRole" in as_list(s["Action"])]
    assert [as_list(s["Action"]) for s in passing] == [["iam:PassRole"]]
    (statement,) = passing
    assert statement["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/${Prefix}-model-build"}
    assert statement["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    assert not any(a.startswith("iam:") for s in model_build_statements() if s["Sid"] != statement["Sid"]
                   for a in as_list(s["Action"]))


def test_the_model_build_role_grants_no_wildcard_action_and_wildcard_resources_only_where_aws_needs_them():
    statements = model_build_statements()
    assert len({s["Sid"] for s in statements}) == len(statements) >= 10
    for statement in statements:
        assert statement["Effect"] == "Allow"
        actions = as_list(statement["Action"])
        assert not {"*", "sagemaker:*"} & set(actions), statement["Sid"]
        assert not any("*" in a for a in actions), statement["Sid"]
    wildcards = {a: s.get("Condition") for s in statements if "*" in as_list(s["Resource"])
                 for a in as_list(s["Action"])}
    assert wildcards == {"ecr:GetAuthorizationToken": None,
                         "cloudwatch:PutMetricData": {"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}}}


def test_the_model_build_role_reaches_the_jobs_a_pipeline_names():
    jobs = next(s for s in model_build_statements() if "sagemaker:CreateTrainingJob" in as_list(s["Action"]))
    arns = {r["Fn::Sub"] for r in jobs["Resource"]}
    account = "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:"
    # A pipeline names its jobs pipelines-<execution id>-<step>; a job started by hand is named after the prefix.
    assert arns == {f"{account}{kind}-job/{name}-*" for kind in ("processing", "training", "transform")
                    for name in ("${Prefix}", "pipelines")}


# ------------------------------------------------------------------ the deployment stack

def deployment_statements(role: str) -> list[dict]:
    (policy,) = resources(DEPLOYMENT)[role]["Properties"]["Policies"]
    return policy["PolicyDocument"]["Statement"]


def test_the_outputs_the_deployment_code_reads_exist():
    outputs = load(DEPLOYMENT)["Outputs"]
    assert set(outputs) == set(DEPLOYMENT_OUTPUTS), sorted(set(outputs) ^ set(DEPLOYMENT_OUTPUTS))
    assert outputs["DeployFunctionName"]["Value"] == {"Ref": "DeployFunction"}
    assert outputs["EndpointRoleArn"]["Value"] == {"Fn::GetAtt": ["EndpointRole", "Arn"]}
    assert outputs["StagingEndpointName"]["Value"] == {"Fn::Sub": "${Prefix}-staging"}
    assert outputs["ProductionEndpointName"]["Value"] == {"Fn::Sub": "${Prefix}-prod"}
    assert outputs["DataCaptureS3Uri"]["Value"]["Fn::Sub"][0] == "s3://${Bucket}/data-capture"
    assert outputs["DeploymentsS3Uri"]["Value"]["Fn::Sub"][0] == "s3://${Bucket}/deployments"
    assert outputs["EndpointInstanceType"]["Value"] == {"Ref": "EndpointInstanceType"}
    assert outputs["DeployDeadLetterQueueUrl"]["Value"] == {"Ref": "DeployDeadLetterQueue"}
    # The endpoint names the code gives them (helpers.endpoints.interface.ENDPOINTS under the prefix).
    from helpers.endpoints.interface import ENDPOINTS

    assert {outputs[o]["Value"]["Fn::Sub"] for o in ("StagingEndpointName", "ProductionEndpointName")} == \
        {f"${{Prefix}}-{name}" for name in ENDPOINTS}


def test_the_deployment_parameters():
    parameters = load(DEPLOYMENT)["Parameters"]
    assert set(parameters) == {"Prefix", "LambdaCodeKey", "EndpointInstanceType"}
    assert parameters["Prefix"] == load(INGESTION)["Parameters"]["Prefix"] | {
        "Description": parameters["Prefix"]["Description"]}
    assert parameters["LambdaCodeKey"] == load(INGESTION)["Parameters"]["LambdaCodeKey"]
    instance = parameters["EndpointInstanceType"]
    assert instance["Default"] == "ml.m5.large" and instance["Default"] in instance["AllowedValues"]
    assert all(re.fullmatch(r"ml\.(m5|c5)\.\d*x?large", t) for t in instance["AllowedValues"]), instance


def test_the_deploy_function_runs_the_handler_one_deploy_at_a_time():
    stack = resources(DEPLOYMENT)
    function = stack["DeployFunction"]["Properties"]
    assert function["FunctionName"] == {"Fn::Sub": "${Prefix}-deploy"}
    assert (function["Runtime"], function["Handler"], function["Timeout"], function["MemorySize"]) == \
        ("python3.12", "helpers.endpoints.aws.handler", 900, 1024)
    assert function["ReservedConcurrentExecutions"] == 1  # deploys never race
    assert function["Code"] == {"S3Bucket": {"Fn::ImportValue": {"Fn::Sub": "${Prefix}-bucket"}},
                                "S3Key": {"Ref": "LambdaCodeKey"}}
    assert function["Role"] == {"Fn::GetAtt": ["DeployRole", "Arn"]}
    assert function["DeadLetterConfig"] == {"TargetArn": {"Fn::GetAtt": ["DeployDeadLetterQueue", "Arn"]}}
    assert function["LoggingConfig"]["LogGroup"] == {"Ref": "DeployLogGroup"}
    env = function["Environment"]["Variables"]
    key = {"Fn::ImportValue": {"Fn::Sub": "${Prefix}-kms-key-arn"}}
    assert {k: v for k, v in env.items() if k not in ("DATA_CAPTURE_S3_URI", "DEPLOYMENTS_S3_URI")} == {
        "MLOPS_AWS_PREFIX": {"Ref": "Prefix"}, "ENDPOINT_INSTANCE_TYPE": {"Ref": "EndpointInstanceType"},
        "ENDPOINT_ROLE_ARN": {"Fn::GetAtt": ["EndpointRole", "Arn"]}, "KMS_KEY_ARN": key,
        "FEATURE_GROUP_NAME": {"Fn::Sub": "${Prefix}-tx-per-minute"}, "ATHENA_WORKGROUP": {"Ref": "Prefix"}}
    assert env["DATA_CAPTURE_S3_URI"]["Fn::Sub"][0] == "s3://${Bucket}/data-capture"
    assert env["DEPLOYMENTS_S3_URI"]["Fn::Sub"][0] == "s3://${Bucket}/deployments"
    invoke = stack["DeployInvokeConfig"]["Properties"]
    assert (invoke["FunctionName"], invoke["Qualifier"], invoke["MaximumRetryAttempts"]) == \
        ({"Ref": "DeployFunction"}, "$LATEST", 1)
    group = stack["DeployLogGroup"]["Properties"]
    assert (group["LogGroupName"], group["RetentionInDays"], group["KmsKeyId"]) == \
        ({"Fn::Sub": "/aws/lambda/${Prefix}-deploy"}, 14, key)
    queue = stack["DeployDeadLetterQueue"]["Properties"]
    assert (queue["QueueName"], queue["KmsMasterKeyId"]) == ({"Fn::Sub": "${Prefix}-deploy-dlq"}, key)


def test_the_deploy_function_s_environment_is_what_the_handler_reads():
    from helpers.aws.session import PREFIX_ENV
    from helpers.endpoints import aws as endpoints

    env = resources(DEPLOYMENT)["DeployFunction"]["Properties"]["Environment"]["Variables"]
    assert set(endpoints.DeploymentSettings.ENV.values()) | {PREFIX_ENV} == set(env)
    assert callable(endpoints.handler)


def test_the_deploy_rules_run_the_deploy_function_on_approval_and_endpoint_state():
    stack = resources(DEPLOYMENT)
    rules = {name: r["Properties"] for name, r in stack.items() if r["Type"] == "AWS::Events::Rule"}
    assert set(rules) == {"ApprovalRule", "EndpointStateRule"}
    approval = rules["ApprovalRule"]["EventPattern"]
    assert approval == {"source": ["aws.sagemaker"], "detail-type": ["SageMaker Model Package State Change"],
                        "detail": {"ModelPackageGroupName": [{"Fn::Sub": "${Prefix}-avg-fee-deepar"}],
                                   "ModelApprovalStatus": ["PendingManualApproval", "Approved"]}}
    state = rules["EndpointStateRule"]["EventPattern"]
    assert (state["source"], state["detail-type"]) == (["aws.sagemaker"], ["SageMaker Endpoint State Change"])
    assert state["detail"]["EndpointName"] == [{"Fn::Sub": "${Prefix}-staging"}, {"Fn::Sub": "${Prefix}-prod"}]
    assert {"IN_SERVICE", "FAILED"} <= set(state["detail"]["EndpointStatus"])
    # The handler reads the same detail-types and fields.
    handler = (REPO / "helpers" / "endpoints" / "aws.py").read_text()
    assert all(f'"{p["detail-type"][0]}"' in handler for p in (approval, state))

    permissions = [r["Properties"] for r in stack.values() if r["Type"] == "AWS::Lambda::Permission"]
    for name, rule in rules.items():
        assert rule["State"] == "ENABLED", name
        (target,) = rule["Targets"]
        assert target["Arn"] == {"Fn::GetAtt": ["DeployFunction", "Arn"]}, name
        assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["DeployDeadLetterQueue", "Arn"]}}, name
        assert 0 < target["RetryPolicy"]["MaximumRetryAttempts"], name
        (permission,) = [p for p in permissions if p["SourceArn"] == {"Fn::GetAtt": [name, "Arn"]}]
        assert (permission["FunctionName"], permission["Action"], permission["Principal"]) == \
            ({"Ref": "DeployFunction"}, "lambda:InvokeFunction", "events.amazonaws.com"), name
    assert len(permissions) == len(rules)

    # EventBridge may put what it could not deliver on the queue, from these two rules only.
    policy = stack["DeployDeadLetterQueuePolicy"]["Properties"]
    assert policy["Queues"] == [{"Ref": "DeployDeadLetterQueue"}]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert (statement["Effect"], statement["Principal"], statement["Action"], statement["Resource"]) == \
        ("Allow", {"Service": "events.amazonaws.com"}, "sqs:SendMessage",
         {"Fn::GetAtt": ["DeployDeadLetterQueue", "Arn"]})
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": [{"Fn::GetAtt": [name, "Arn"]}
                                                                      for name in rules]}}


def test_the_deploy_role_passes_only_the_endpoint_role_and_only_to_sagemaker():
    stack = resources(DEPLOYMENT)
    trusts = {name: stack[name]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
              for name in ("EndpointRole", "DeployRole")}
    assert {name: [(s["Principal"], s["Action"]) for s in t] for name, t in trusts.items()} == {
        "EndpointRole": [({"Service": "sagemaker.amazonaws.com"}, "sts:AssumeRole")],
        "DeployRole": [({"Service": "lambda.amazonaws.com"}, "sts:AssumeRole")]}
    assert stack["EndpointRole"]["Properties"]["RoleName"] == {"Fn::Sub": "${Prefix}-endpoint"}
    passing = [(role, s) for role in ("EndpointRole", "DeployRole") for s in deployment_statements(role)
               if any(a.startswith("iam:") for a in as_list(s["Action"]))]
    assert [(role, as_list(s["Action"])) for role, s in passing] == [("DeployRole", ["iam:PassRole"])]
    ((_, statement),) = passing
    assert statement["Resource"] == {"Fn::GetAtt": ["EndpointRole", "Arn"]}
    assert statement["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}


def test_the_deployment_roles_grant_no_wildcard_action_and_wildcard_resources_only_where_aws_needs_them():
    wildcards = {}
    for role in ("EndpointRole", "DeployRole"):
        statements = deployment_statements(role)
        assert len({s["Sid"] for s in statements}) == len(statements) >= 5, role
        for statement in statements:
            assert statement["Effect"] == "Allow"
            assert not any("*" in a for a in as_list(statement["Action"])), (role, statement["Sid"])
            if "*" in as_list(statement["Resource"]):
                wildcards |= {(role, a): statement.get("Condition") for a in as_list(statement["Action"])}
    assert wildcards == {
        ("EndpointRole", "ecr:GetAuthorizationToken"): None,
        ("EndpointRole", "cloudwatch:PutMetricData"): {
            "StringEquals": {"cloudwatch:namespace": "/aws/sagemaker/Endpoints"}}}


def test_the_deploy_role_reaches_only_the_two_endpoints():
    account = "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:"
    endpoints = {f"{account}endpoint/${{Prefix}}-staging", f"{account}endpoint/${{Prefix}}-prod"}
    allowed: dict[str, set] = {}
    for statement in deployment_statements("DeployRole"):
        for action in as_list(statement["Action"]):
            if action.startswith("sagemaker:") and "Endpoint" in action and "Config" not in action:
                allowed.setdefault(action, set()).update(r["Fn::Sub"] for r in as_list(statement["Resource"]))
    # CreateEndpoint and UpdateEndpoint are also authorised on the endpoint config they are given.
    configs = {f"{account}endpoint-config/${{Prefix}}-*"}
    assert allowed == {"sagemaker:CreateEndpoint": endpoints | configs, "sagemaker:UpdateEndpoint": endpoints | configs,
                       "sagemaker:DescribeEndpoint": endpoints, "sagemaker:DeleteEndpoint": endpoints,
                       "sagemaker:InvokeEndpoint": endpoints}


# ------------------------------------------------------------------ moto: the deployable part, deployed

@pytest.fixture
def aws(monkeypatch, tmp_path):
    """Fake credentials, no profile or config file: nothing here can reach a real account."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    from moto import mock_aws
    from moto.kinesis.models import Stream, kinesis_backends
    from moto.kms.models import Key

    # moto's AWS::Kinesis::Stream drops StreamModeDetails and StreamEncryption; pass them on to its Kinesis, as
    # CloudFormation does, from the properties moto resolved (so a wrong import or a missing setting shows).
    create = Stream.create_from_cloudformation_json.__func__

    def create_stream(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        stream = create(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        props, backend = cloudformation_json.get("Properties", {}), kinesis_backends[account_id][region_name]
        if "StreamModeDetails" in props:
            backend.update_stream_mode(stream.arn, props["StreamModeDetails"])
        if "StreamEncryption" in props:
            backend.start_stream_encryption(stream.arn, stream.stream_name, props["StreamEncryption"]["EncryptionType"],
                                            props["StreamEncryption"]["KeyId"])
        return stream

    monkeypatch.setattr(Stream, "create_from_cloudformation_json", classmethod(create_stream))

    # moto's AWS::KMS::Key keeps a KeyPolicy given as an object as it is, and its KMS then fails to read it back;
    # CloudFormation hands KMS the policy as JSON text.
    create_key = Key.create_from_cloudformation_json.__func__

    def create_key_with_json_policy(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        props = cloudformation_json["Properties"]
        if isinstance(props.get("KeyPolicy"), dict):
            props["KeyPolicy"] = json.dumps(props["KeyPolicy"])
        return create_key(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)

    monkeypatch.setattr(Key, "create_from_cloudformation_json", classmethod(create_key_with_json_policy))
    with mock_aws():
        yield


def references(node) -> set[str]:
    """The logical ids a piece of template refers to (Ref, GetAtt, ${...} in Sub)."""
    found = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref":
                found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else value.split(".")[0])
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                found |= {m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text)}
                found |= references(value)
            else:
                found |= references(value)
    elif isinstance(node, list):
        for item in node:
            found |= references(item)
    return found


def moto_template(path: Path) -> tuple[dict, set[str]]:
    """The template less what moto cannot deploy, and the logical ids dropped; fails if a kept resource needs one."""
    template = load(path)
    dropped = {n for n, r in template["Resources"].items() if r["Type"] not in MOTO_TYPES}
    template["Resources"] = {n: r for n, r in template["Resources"].items() if n not in dropped}
    for name, resource in template["Resources"].items():
        assert not references(resource) & dropped, f"{name} needs {references(resource) & dropped}, which moto lacks"
    template["Outputs"] = {n: o for n, o in template.get("Outputs", {}).items() if not references(o) & dropped}
    if "Key" in template["Resources"]:
        # moto's AWS::KMS::Key passes CloudFormation's Key/Value tags to its tagger, which wants TagKey/TagValue.
        key = template["Resources"]["Key"]["Properties"]
        key["Tags"] = [{"TagKey": t["Key"], "TagValue": t["Value"]} for t in key["Tags"]]
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::SSM::Parameter" and isinstance(resource["Properties"].get("Tags"), dict):
            # AWS::SSM::Parameter's Tags are a map; moto's reads them as a list of Key/Value pairs.
            resource["Properties"]["Tags"] = [{"Key": k, "Value": v} for k, v in resource["Properties"]["Tags"].items()]
    if "PollingIntervalMinutes" in template.get("Parameters", {}):
        # moto resolves a Number parameter to an int, and FindInMap then misses the mapping's "2" key;
        # CloudFormation hands every parameter on as a string.
        template["Parameters"]["PollingIntervalMinutes"]["Type"] = "String"
    return template, dropped


def deploy(name: str, template: dict, **parameters) -> dict[str, str]:
    cfn = boto3.client("cloudformation", region_name=REGION)
    cfn.create_stack(StackName=f"{PREFIX}-{name}", TemplateBody=json.dumps(template),
                     Capabilities=["CAPABILITY_NAMED_IAM"],
                     Parameters=[{"ParameterKey": k, "ParameterValue": str(v)} for k, v in parameters.items()])
    stack = cfn.describe_stacks(StackName=f"{PREFIX}-{name}")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def deploy_storage() -> dict[str, str]:
    template, dropped = moto_template(STORAGE)
    assert dropped == {"BucketPolicy"}  # checked above, statically
    return deploy("storage", template)


def test_storage_stack_creates_the_bucket_and_the_key(aws):
    outputs = deploy_storage()
    bucket, key_arn = outputs["Bucket"], outputs["KmsKeyArn"]
    assert bucket == f"{PREFIX}-{ACCOUNT}-{REGION}" and outputs["BucketArn"] == f"arn:aws:s3:::{bucket}"
    exports = {e["Name"]: e["Value"] for e in boto3.client("cloudformation").list_exports()["Exports"]}
    assert exports == {f"{PREFIX}-bucket": bucket, f"{PREFIX}-bucket-arn": f"arn:aws:s3:::{bucket}",
                       f"{PREFIX}-kms-key-arn": key_arn}
    s3, kms = boto3.client("s3"), boto3.client("kms")
    (rule,) = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn}
    tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=bucket)["TagSet"]}
    assert tags == {"Project": "realtime-mlops-workshop", "WorkshopPrefix": PREFIX}
    key = kms.describe_key(KeyId=key_arn)["KeyMetadata"]
    assert (key["KeyManager"], key["KeyState"], key["KeyUsage"]) == ("CUSTOMER", "Enabled", "ENCRYPT_DECRYPT")
    assert kms.get_key_rotation_status(KeyId=key_arn)["KeyRotationEnabled"] is True
    aliases = {a["AliasName"]: a.get("TargetKeyId") for a in kms.list_aliases()["Aliases"]}
    assert aliases[f"alias/{PREFIX}"] == key["KeyId"]
    tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=key_arn)["Tags"]}
    assert tags == {"Project": "realtime-mlops-workshop", "WorkshopPrefix": PREFIX}
    policy = as_json(kms.get_key_policy(KeyId=key_arn, PolicyName="default")["Policy"])
    logs = next(s for s in policy["Statement"] if s["Sid"] == "CloudWatchLogsForWorkshopLogGroups")
    assert logs["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"] == [
        f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/{PREFIX}-*",
        f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/kinesis-analytics/{PREFIX}-*"]


def as_json(document) -> dict:
    """A policy document: AWS answers JSON text; moto, for a role's inline policy from CloudFormation, the
    Python repr of the dict it was given."""
    if isinstance(document, dict):
        return document
    try:
        return json.loads(document)
    except json.JSONDecodeError:
        return ast.literal_eval(document)


def role_resources(iam, role: str) -> dict[str, set[str]]:
    """Each action of the role's inline policies, and the resources it is allowed on."""
    allowed: dict[str, set[str]] = {}
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        for statement in as_json(iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"])["Statement"]:
            assert statement["Effect"] == "Allow"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            found = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            for action in actions:
                allowed.setdefault(action, set()).update(found)
    return allowed


def check_roles(expected: dict[str, dict[str, set[str]]]) -> dict[str, str]:
    """Every role the stack made is one of ``expected`` (name -> action -> ARNs), allows exactly that, and is tagged;
    returns them by name."""
    iam = boto3.client("iam")
    roles = {r["RoleName"]: r for r in iam.list_roles()["Roles"]}
    assert set(roles) == set(expected)
    for role, allowed in expected.items():
        assert role_resources(iam, role) == allowed, role
        tags = {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=role)["Tags"]}
        assert tags == {"Project": "realtime-mlops-workshop", "WorkshopPrefix": PREFIX}, role
    return roles


def athena_reads() -> dict[str, set[str]]:
    """The Athena and Glue grants of a role that queries the offline store, as moto resolves them."""
    glue = f"arn:aws:glue:{REGION}:{ACCOUNT}:"
    return {**{f"athena:{a}": {f"arn:aws:athena:{REGION}:{ACCOUNT}:workgroup/{PREFIX}"}
               for a in ("StartQueryExecution", "GetQueryExecution", "GetQueryResults")},
            **{f"glue:{a}": {f"{glue}catalog", f"{glue}database/sagemaker_featurestore",
                             f"{glue}table/sagemaker_featurestore/*"} for a in ("GetDatabase", "GetTable",
                                                                                "GetPartitions")}}


def deploy_storage_with_lambda_code() -> dict[str, str]:
    """The storage stack, and a Lambda zip at code/lambda-test.zip for the stacks whose functions take it."""
    storage = deploy_storage()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("helpers/__init__.py", "")
    boto3.client("s3").put_object(Bucket=storage["Bucket"], Key="code/lambda-test.zip", Body=archive.getvalue())
    return storage


def test_ingestion_stack_deploys_what_moto_can_scoped_to_exact_arns(aws):
    storage = deploy_storage_with_lambda_code()
    bucket, key = storage["Bucket"], storage["KmsKeyArn"]
    template, dropped = moto_template(INGESTION)
    assert dropped == {"PollerSchedule", "PollerInvokeConfig", "FlinkApplication", "FlinkLogging", "FlinkLogStream",
                       "AthenaWorkGroup"}
    outputs = deploy("ingestion", template, LambdaCodeKey="code/lambda-test.zip",
                     FlinkCodeKey="code/flink-test.zip", PollingIntervalMinutes=2, Source="replay")

    stream = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{PREFIX}"
    assert (outputs["InputStreamName"], outputs["InputStreamArn"]) == (f"{PREFIX}-transactions",
                                                                       f"{stream}-transactions")
    assert (outputs["OutputStreamName"], outputs["OutputStreamArn"]) == (f"{PREFIX}-features", f"{stream}-features")
    assert (outputs["Bucket"], outputs["KmsKeyArn"]) == (bucket, key)
    assert outputs["OfflineStoreS3Uri"] == f"s3://{bucket}/offline-store"
    assert outputs["DeadLettersS3Uri"] == f"s3://{bucket}/dead-letters/"
    assert outputs["FeatureGroupName"] == f"{PREFIX}-tx-per-minute"
    assert outputs["FlinkLogGroup"] == f"/aws/kinesis-analytics/{PREFIX}-aggregator"

    kinesis = boto3.client("kinesis")
    for name in (outputs["InputStreamName"], outputs["OutputStreamName"]):
        summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
        assert summary["StreamModeDetails"] == {"StreamMode": "ON_DEMAND"}, name
        assert (summary["EncryptionType"], summary.get("KeyId")) == ("KMS", key), name
        assert summary["RetentionPeriodHours"] == 24
        tags = {t["Key"]: t["Value"] for t in kinesis.list_tags_for_stream(StreamName=name)["Tags"]}
        assert tags == {"Project": "realtime-mlops-workshop", "WorkshopPrefix": PREFIX}

    sqs = boto3.client("sqs")
    queues = {}
    for name in ("poller-dlq", "feature-writes-dlq"):
        url = sqs.get_queue_url(QueueName=f"{PREFIX}-{name}")["QueueUrl"]
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert (attributes["KmsMasterKeyId"], attributes["MessageRetentionPeriod"]) == (key, str(14 * 86400))
        queues[name] = attributes["QueueArn"]
    assert outputs["WriterDeadLetterQueueUrl"].endswith(f"/{PREFIX}-feature-writes-dlq")

    lam = boto3.client("lambda")
    poller = lam.get_function(FunctionName=outputs["PollerFunctionName"])
    config = poller["Configuration"]
    assert (config["Runtime"], config["Handler"], config["MemorySize"], config["Architectures"]) == \
        ("python3.12", "helpers.ingestion.poller.handler", 1024, ["x86_64"])
    assert poller["Concurrency"] == {"ReservedConcurrentExecutions": 1}
    assert config["Environment"]["Variables"] == {
        "STREAM_NAME": f"{PREFIX}-transactions", "SOURCE": "replay", "STATE_BUCKET": bucket,
        "STATE_KEY": "poller/state.json", "DRIFT_KEY": "simulator/drifts.json", "REPLAY_KEY": "replay/recording.jsonl",
        "SEED": "42"}
    writer = lam.get_function(FunctionName=outputs["WriterFunctionName"])["Configuration"]
    assert (writer["Handler"], writer["MemorySize"], writer["Timeout"]) == \
        ("helpers.feature_store.writer.handler", 512, 60)
    assert writer["Environment"]["Variables"] == {"FEATURE_GROUP_NAME": f"{PREFIX}-tx-per-minute"}
    (mapping,) = lam.list_event_source_mappings(FunctionName=outputs["WriterFunctionName"])["EventSourceMappings"]
    assert mapping["EventSourceArn"] == outputs["OutputStreamArn"]
    assert mapping["DestinationConfig"] == {"OnFailure": {"Destination": queues["feature-writes-dlq"]}}

    groups = {g["logGroupName"]: g for g in boto3.client("logs").describe_log_groups()["logGroups"]}
    assert set(groups) == {f"/aws/lambda/{PREFIX}-poller", f"/aws/lambda/{PREFIX}-feature-writer",
                           f"/aws/kinesis-analytics/{PREFIX}-aggregator"}
    assert {g["retentionInDays"] for g in groups.values()} == {14}

    # One role per component, each allowed exactly these actions on exactly these resources.
    arn = f"arn:aws:s3:::{bucket}"
    log_group = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:"
    glue = f"arn:aws:glue:{REGION}:{ACCOUNT}:"
    poller_fn = config["FunctionArn"]
    expected = {
        f"{PREFIX}-poller": {
            "kinesis:PutRecord": {f"{stream}-transactions"}, "kinesis:PutRecords": {f"{stream}-transactions"},
            "kinesis:DescribeStreamSummary": {f"{stream}-transactions"},
            "s3:GetObject": {f"{arn}/poller/*", f"{arn}/simulator/*", f"{arn}/replay/*"},
            "s3:PutObject": {f"{arn}/poller/*"}, "s3:ListBucket": {arn},
            "kms:GenerateDataKey": {key}, "kms:Decrypt": {key}, "sqs:SendMessage": {queues["poller-dlq"]},
            "logs:CreateLogStream": {f"{log_group}/aws/lambda/{PREFIX}-poller:*"},
            "logs:PutLogEvents": {f"{log_group}/aws/lambda/{PREFIX}-poller:*"}},
        f"{PREFIX}-poller-schedule": {"lambda:InvokeFunction": {poller_fn}},
        f"{PREFIX}-aggregator": {
            **{f"kinesis:{a}": {f"{stream}-transactions", f"{stream}-transactions/consumer/*"} for a in (
                "DescribeStream", "GetRecords", "GetShardIterator", "SubscribeToShard", "DescribeStreamConsumer",
                "RegisterStreamConsumer", "ListStreamConsumers")},
            "kinesis:ListShards": {f"{stream}-transactions", f"{stream}-transactions/consumer/*", f"{stream}-features"},
            "kinesis:DescribeStreamSummary": {f"{stream}-transactions", f"{stream}-transactions/consumer/*",
                                              f"{stream}-features"},
            "kinesis:PutRecord": {f"{stream}-features"}, "kinesis:PutRecords": {f"{stream}-features"},
            "s3:GetObject": {f"{arn}/code/*", f"{arn}/dead-letters/*"}, "s3:GetObjectVersion": {f"{arn}/code/*"},
            **{f"s3:{a}": {f"{arn}/dead-letters/*"} for a in ("PutObject", "DeleteObject", "AbortMultipartUpload",
                                                               "ListMultipartUploadParts")},
            "s3:ListBucket": {arn}, "s3:ListBucketMultipartUploads": {arn},
            "kms:GenerateDataKey": {key}, "kms:Decrypt": {key},
            "logs:PutLogEvents": {f"{log_group}/aws/kinesis-analytics/{PREFIX}-aggregator:log-stream:*"},
            "logs:DescribeLogStreams": {f"{log_group}/aws/kinesis-analytics/{PREFIX}-aggregator:log-stream:*"},
            "logs:DescribeLogGroups": {f"{log_group}*"}, "cloudwatch:PutMetricData": {"*"}},
        f"{PREFIX}-feature-writer": {
            "sagemaker:PutRecord": {f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:feature-group/{PREFIX}-tx-per-minute"},
            **{f"kinesis:{a}": {f"{stream}-features"} for a in ("DescribeStream", "DescribeStreamSummary",
                                                                "GetRecords", "GetShardIterator", "ListShards")},
            "sqs:SendMessage": {queues["feature-writes-dlq"]}, "kms:GenerateDataKey": {key}, "kms:Decrypt": {key},
            "logs:CreateLogStream": {f"{log_group}/aws/lambda/{PREFIX}-feature-writer:*"},
            "logs:PutLogEvents": {f"{log_group}/aws/lambda/{PREFIX}-feature-writer:*"}},
        f"{PREFIX}-feature-store": {
            **{f"s3:{a}": {f"{arn}/offline-store/*"} for a in ("PutObject", "GetObject", "PutObjectAcl")},
            "s3:GetBucketAcl": {arn},
            **{f"glue:{a}": {f"{glue}catalog", f"{glue}database/sagemaker_featurestore",
                             f"{glue}table/sagemaker_featurestore/*"}
               for a in ("GetTable", "CreateTable", "UpdateTable", "GetDatabase", "CreateDatabase",
                         "GetTableVersions")},
            "kms:GenerateDataKey": {key}, "kms:Decrypt": {key}, "kms:DescribeKey": {key}},
    }
    roles = check_roles(expected)
    trusted = {name: r["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["Service"] for name, r in roles.items()}
    assert trusted == {f"{PREFIX}-poller": "lambda.amazonaws.com", f"{PREFIX}-feature-writer": "lambda.amazonaws.com",
                       f"{PREFIX}-poller-schedule": "scheduler.amazonaws.com",
                       f"{PREFIX}-aggregator": "kinesisanalytics.amazonaws.com",
                       f"{PREFIX}-feature-store": "sagemaker.amazonaws.com"}
    assert outputs["FeatureStoreRoleArn"] == roles[f"{PREFIX}-feature-store"]["Arn"]
    assert config["Role"] == roles[f"{PREFIX}-poller"]["Arn"]
    assert writer["Role"] == roles[f"{PREFIX}-feature-writer"]["Arn"]


def test_model_build_stack_deploys_its_parameters_and_role_scoped_to_exact_arns(aws):
    from helpers.core.hyperparameters import DeepARHyperparameters

    storage = deploy_storage()
    bucket, key = storage["Bucket"], storage["KmsKeyArn"]
    template, dropped = moto_template(MODEL_BUILD)
    assert dropped == {"ModelPackageGroup"}  # nothing kept refers to it: the role names the group, it does not Ref it
    outputs = deploy("model-build", template, WqlThreshold="0.3")

    role_arn = f"arn:aws:iam::{ACCOUNT}:role/{PREFIX}-model-build"
    assert outputs == {
        "ModelPackageGroupName": f"{PREFIX}-avg-fee-deepar", "PipelineName": f"{PREFIX}-model-build",
        "PipelineRoleArn": role_arn, "ArtifactsS3Uri": f"s3://{bucket}/model-build",
        "WqlThresholdParameter": f"/{PREFIX}/model-build/wql-threshold",
        "BaselineMarginParameter": f"/{PREFIX}/model-build/baseline-margin",
        "HyperparametersParameter": f"/{PREFIX}/model-build/hyperparameters",
        "CurrentWqlParameter": f"/{PREFIX}/model/current-wql", "ParameterPath": f"/{PREFIX}/"}

    ssm = boto3.client("ssm")
    found = {p["Name"]: p for p in ssm.get_parameters_by_path(Path=outputs["ParameterPath"], Recursive=True)[
        "Parameters"]}
    assert {name: (p["Type"], p["Value"]) for name, p in found.items()} == {
        outputs["WqlThresholdParameter"]: ("String", "0.3"), outputs["BaselineMarginParameter"]: ("String", "0.10"),
        outputs["HyperparametersParameter"]: ("String", found[outputs["HyperparametersParameter"]]["Value"]),
        outputs["CurrentWqlParameter"]: ("String", "none")}
    hyperparameters = json.loads(found[outputs["HyperparametersParameter"]]["Value"])
    assert DeepARHyperparameters.from_dict(hyperparameters) == DeepARHyperparameters()
    for name in found:
        tags = {t["Key"]: t["Value"] for t in ssm.list_tags_for_resource(ResourceType="Parameter",
                                                                          ResourceId=name)["TagList"]}
        assert tags == {"Project": "realtime-mlops-workshop", "WorkshopPrefix": PREFIX}, name

    iam = boto3.client("iam")
    role = iam.get_role(RoleName=f"{PREFIX}-model-build")["Role"]
    assert role["Arn"] == role_arn
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    tags = {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=f"{PREFIX}-model-build")["Tags"]}
    assert tags == {"Project": "realtime-mlops-workshop", "WorkshopPrefix": PREFIX}
    sagemaker = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:"
    jobs = {f"{sagemaker}{kind}-job/{name}-*" for kind in ("processing", "training", "transform")
            for name in (PREFIX, "pipelines")}
    group = {f"{sagemaker}model-package-group/{PREFIX}-avg-fee-deepar",
             f"{sagemaker}model-package/{PREFIX}-avg-fee-deepar/*"}
    arn = f"arn:aws:s3:::{bucket}"
    glue = f"arn:aws:glue:{REGION}:{ACCOUNT}:"
    expected = {
        **{f"sagemaker:{verb}{kind}Job": jobs for verb in ("Create", "Describe", "Stop")
           for kind in ("Processing", "Training", "Transform")},
        **{f"sagemaker:{verb}Model": {f"{sagemaker}model/*"} for verb in ("Create", "Describe", "Delete")},
        **{f"sagemaker:{a}": group for a in ("CreateModelPackage", "DescribeModelPackage", "UpdateModelPackage",
                                              "ListModelPackages")},
        "sagemaker:AddTags": jobs | group | {f"{sagemaker}model/*"},
        **{f"sagemaker:{a}": {f"{sagemaker}feature-group/{PREFIX}-tx-per-minute"}
           for a in ("DescribeFeatureGroup", "GetRecord", "BatchGetRecord")},  # Prepare reads the newest minute too
        **{f"sagemaker:{a}": {f"{sagemaker}pipeline/{PREFIX}-model-build",
                              f"{sagemaker}pipeline/{PREFIX}-model-build/execution/*"}
           for a in ("DescribePipeline", "ListPipelineExecutionSteps")},
        "iam:PassRole": {role_arn},
        "s3:GetObject": {f"{arn}/model-build/*", f"{arn}/athena-results/*", f"{arn}/offline-store/*"},
        **{f"s3:{a}": {f"{arn}/model-build/*", f"{arn}/athena-results/*"}
           for a in ("PutObject", "DeleteObject", "AbortMultipartUpload", "ListMultipartUploadParts")},
        "s3:ListBucket": {arn}, "s3:GetBucketLocation": {arn},
        "kms:Decrypt": {key}, "kms:GenerateDataKey": {key}, "kms:Encrypt": {key}, "kms:CreateGrant": {key},
        **{f"athena:{a}": {f"arn:aws:athena:{REGION}:{ACCOUNT}:workgroup/{PREFIX}"}
           for a in ("StartQueryExecution", "GetQueryExecution", "GetQueryResults", "StopQueryExecution")},
        **{f"glue:{a}": {f"{glue}catalog", f"{glue}database/sagemaker_featurestore",
                         f"{glue}table/sagemaker_featurestore/*"}
           for a in ("GetDatabase", "GetTable", "GetPartitions")},
        **{f"ssm:{a}": {f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/{PREFIX}/model-build/*"}
           for a in ("GetParameter", "GetParameters")},
        "ecr:GetAuthorizationToken": {"*"},
        **{f"ecr:{a}": {f"arn:aws:ecr:{REGION}:*:repository/*"}
           for a in ("BatchGetImage", "GetDownloadUrlForLayer", "BatchCheckLayerAvailability")},
        **{f"logs:{a}": {f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker/*"}
           for a in ("CreateLogGroup", "CreateLogStream", "PutLogEvents", "DescribeLogStreams")},
        "cloudwatch:PutMetricData": {"*"},
    }
    assert role_resources(iam, f"{PREFIX}-model-build") == expected


def test_deployment_stack_deploys_its_roles_function_and_rules_scoped_to_exact_arns(aws):
    storage = deploy_storage_with_lambda_code()
    bucket, key = storage["Bucket"], storage["KmsKeyArn"]
    template, dropped = moto_template(DEPLOYMENT)
    assert dropped == {"DeployInvokeConfig", "DeployDeadLetterQueuePolicy"}  # checked above, statically
    outputs = deploy("deployment", template, LambdaCodeKey="code/lambda-test.zip", EndpointInstanceType="ml.c5.xlarge")

    endpoint_role = f"arn:aws:iam::{ACCOUNT}:role/{PREFIX}-endpoint"
    queue_url = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{PREFIX}-deploy-dlq"
    assert outputs == {
        "DeployFunctionName": f"{PREFIX}-deploy", "EndpointRoleArn": endpoint_role,
        "StagingEndpointName": f"{PREFIX}-staging", "ProductionEndpointName": f"{PREFIX}-prod",
        "DataCaptureS3Uri": f"s3://{bucket}/data-capture", "DeploymentsS3Uri": f"s3://{bucket}/deployments",
        "EndpointInstanceType": "ml.c5.xlarge", "DeployDeadLetterQueueUrl": queue_url}
    sqs = boto3.client("sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    assert (attributes["KmsMasterKeyId"], attributes["MessageRetentionPeriod"]) == (key, str(14 * 86400))
    queue = attributes["QueueArn"]

    lam = boto3.client("lambda")
    function = lam.get_function(FunctionName=outputs["DeployFunctionName"])
    config = function["Configuration"]
    assert (config["Runtime"], config["Handler"], config["MemorySize"], config["Timeout"]) == \
        ("python3.12", "helpers.endpoints.aws.handler", 1024, 900)
    assert function["Concurrency"] == {"ReservedConcurrentExecutions": 1}
    assert config["Environment"]["Variables"] == {
        "MLOPS_AWS_PREFIX": PREFIX, "ENDPOINT_INSTANCE_TYPE": "ml.c5.xlarge", "ENDPOINT_ROLE_ARN": endpoint_role,
        "DATA_CAPTURE_S3_URI": f"s3://{bucket}/data-capture", "DEPLOYMENTS_S3_URI": f"s3://{bucket}/deployments",
        "KMS_KEY_ARN": key, "FEATURE_GROUP_NAME": f"{PREFIX}-tx-per-minute", "ATHENA_WORKGROUP": PREFIX}
    assert config["Role"] == f"arn:aws:iam::{ACCOUNT}:role/{PREFIX}-deploy"

    # Each rule invokes the function, and the function lets EventBridge invoke it from that rule only.
    events = boto3.client("events")
    rules = {r["Name"]: r for r in events.list_rules()["Rules"]}
    approval, state = f"{PREFIX}-deploy-on-approval", f"{PREFIX}-deploy-on-endpoint-state"
    assert set(rules) == {approval, state}
    assert json.loads(rules[approval]["EventPattern"])["detail"] == {
        "ModelPackageGroupName": [f"{PREFIX}-avg-fee-deepar"],
        "ModelApprovalStatus": ["PendingManualApproval", "Approved"]}
    assert json.loads(rules[state]["EventPattern"])["detail"]["EndpointName"] == [f"{PREFIX}-staging",
                                                                                   f"{PREFIX}-prod"]
    for name, rule in rules.items():
        (target,) = events.list_targets_by_rule(Rule=name)["Targets"]
        assert (target["Arn"], target["DeadLetterConfig"]) == (config["FunctionArn"], {"Arn": queue}), name
        tags = {t["Key"]: t["Value"] for t in events.list_tags_for_resource(ResourceARN=rule["Arn"])["Tags"]}
        assert tags == {"Project": "realtime-mlops-workshop", "WorkshopPrefix": PREFIX}, name
    policy = json.loads(lam.get_policy(FunctionName=outputs["DeployFunctionName"])["Policy"])
    assert sorted((s["Principal"]["Service"], s["Action"], s["Condition"]["ArnLike"]["AWS:SourceArn"])
                  for s in policy["Statement"]) == sorted(
        ("events.amazonaws.com", "lambda:InvokeFunction", r["Arn"]) for r in rules.values())

    groups = {g["logGroupName"]: g for g in boto3.client("logs").describe_log_groups()["logGroups"]}
    assert set(groups) == {f"/aws/lambda/{PREFIX}-deploy"}
    assert groups[f"/aws/lambda/{PREFIX}-deploy"]["retentionInDays"] == 14

    # Each role allowed exactly these actions on exactly these resources.
    arn = f"arn:aws:s3:::{bucket}"
    sagemaker = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:"
    endpoints = {f"{sagemaker}endpoint/{PREFIX}-staging", f"{sagemaker}endpoint/{PREFIX}-prod"}
    models, configs = {f"{sagemaker}model/{PREFIX}-*"}, {f"{sagemaker}endpoint-config/{PREFIX}-*"}
    group = {f"{sagemaker}model-package-group/{PREFIX}-avg-fee-deepar",
             f"{sagemaker}model-package/{PREFIX}-avg-fee-deepar/*"}
    ssm = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/{PREFIX}/"
    expected = {
        f"{PREFIX}-endpoint": {
            "s3:GetObject": {f"{arn}/model-build/*"}, "s3:PutObject": {f"{arn}/data-capture/*"},
            "s3:ListBucket": {arn}, "s3:GetBucketLocation": {arn},
            "kms:Decrypt": {key}, "kms:GenerateDataKey": {key}, "kms:Encrypt": {key}, "kms:CreateGrant": {key},
            "ecr:GetAuthorizationToken": {"*"},
            **{f"ecr:{a}": {f"arn:aws:ecr:{REGION}:*:repository/*"}
               for a in ("BatchGetImage", "GetDownloadUrlForLayer", "BatchCheckLayerAvailability")},
            **{f"logs:{a}": {f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker/Endpoints/{PREFIX}-*"}
               for a in ("CreateLogGroup", "CreateLogStream", "PutLogEvents", "DescribeLogStreams")},
            "cloudwatch:PutMetricData": {"*"}},
        f"{PREFIX}-deploy": {
            **{f"sagemaker:{verb}Model": models for verb in ("Create", "Describe", "Delete")},
            **{f"sagemaker:{verb}EndpointConfig": configs for verb in ("Create", "Describe", "Delete")},
            "sagemaker:CreateEndpoint": endpoints | configs, "sagemaker:UpdateEndpoint": endpoints | configs,
            **{f"sagemaker:{a}": endpoints for a in ("DescribeEndpoint", "DeleteEndpoint", "InvokeEndpoint")},
            "sagemaker:AddTags": models | configs | endpoints,
            **{f"sagemaker:{a}": group for a in ("DescribeModelPackage", "UpdateModelPackage", "ListModelPackages")},
            **{f"sagemaker:{a}": {f"{sagemaker}feature-group/{PREFIX}-tx-per-minute"}
               for a in ("DescribeFeatureGroup", "GetRecord", "BatchGetRecord")},
            "iam:PassRole": {endpoint_role},
            "ssm:GetParameter": {f"{ssm}*"},
            "ssm:PutParameter": {f"{ssm}model-build/wql-threshold", f"{ssm}model/current-wql"},
            "s3:GetObject": {f"{arn}/model-build/*", f"{arn}/deployments/*", f"{arn}/athena-results/*",
                             f"{arn}/offline-store/*"},
            "s3:PutObject": {f"{arn}/deployments/*", f"{arn}/athena-results/*"},
            "s3:AbortMultipartUpload": {f"{arn}/athena-results/*"},
            "s3:ListMultipartUploadParts": {f"{arn}/athena-results/*"},
            "s3:ListBucket": {arn}, "s3:GetBucketLocation": {arn},
            **athena_reads(),
            **{f"kms:{a}": {key} for a in ("Decrypt", "GenerateDataKey", "Encrypt", "DescribeKey", "CreateGrant")},
            **{f"cloudwatch:{a}": {f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{PREFIX}-wql-*"}
               for a in ("PutMetricAlarm", "DescribeAlarms", "TagResource")},
            "sqs:SendMessage": {queue},
            **{f"logs:{a}": {f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/{PREFIX}-deploy:*"}
               for a in ("CreateLogStream", "PutLogEvents")}},
    }
    roles = check_roles(expected)
    trusted = {name: r["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["Service"] for name, r in roles.items()}
    assert trusted == {f"{PREFIX}-endpoint": "sagemaker.amazonaws.com", f"{PREFIX}-deploy": "lambda.amazonaws.com"}


def test_the_flink_job_finds_every_property_it_reads_in_the_application_s_property_group():
    from helpers.ingestion.flink_job import PROPERTY_GROUP, connector_options, table_ddl

    groups = load(INGESTION)["Resources"]["FlinkApplication"]["Properties"]["ApplicationConfiguration"][
        "EnvironmentProperties"]["PropertyGroups"]
    props = {k: str(v) for k, v in next(g for g in groups if g["PropertyGroupId"] == PROPERTY_GROUP)
             ["PropertyMap"].items()}
    source, features, letters = (connector_options(props, role) for role in ("source", "features", "dead_letters"))
    assert source["connector"] == features["connector"] == "kinesis" and letters["connector"] == "filesystem"
    assert {"stream.arn", "aws.region", "source.init.position"} <= set(source)  # connector 5.x, not 4.x names
    assert "scan.stream.initpos" not in source and "stream" not in source
    assert "`hash` STRING" in table_ddl("transactions", [("hash", "STRING")], source)  # quoted: reserved in 2.x


# ------------------------------------------------------------------ the monitoring stack

def test_the_monitoring_functions_run_the_handlers_and_read_the_environment_they_are_given():
    from helpers.monitoring import aws as monitoring

    functions = resources(MONITORING, "AWS::Lambda::Function")
    handlers = {name: f["Properties"]["Handler"] for name, f in functions.items()}
    assert handlers == {"ForecastFunction": "helpers.monitoring.aws.forecast_handler",
                        "ScoreFunction": "helpers.monitoring.aws.score_handler",
                        "RetrainFunction": "helpers.monitoring.aws.retrain_handler"}
    assert all(callable(getattr(monitoring, h.rsplit(".", 1)[1])) for h in handlers.values())
    for name, function in functions.items():
        props = function["Properties"]
        assert (props["Runtime"], props["Code"]["S3Key"]) == ("python3.12", {"Ref": "LambdaCodeKey"}), name
        assert props["LoggingConfig"]["LogGroup"] == {"Ref": name.replace("Function", "LogGroup")}, name
        assert props["DeadLetterConfig"] == {"TargetArn": {"Fn::GetAtt": ["MonitoringDeadLetterQueue", "Arn"]}}
        variables = props["Environment"]["Variables"]
        assert variables["MLOPS_AWS_PREFIX"] == {"Ref": "Prefix"}  # AwsContext() reads it
        assert variables["BUCKET"] == {"Fn::ImportValue": {"Fn::Sub": "${Prefix}-bucket"}}
    for name in ("ForecastFunction", "ScoreFunction"):  # LambdaEnvironment.from_env
        variables = functions[name]["Properties"]["Environment"]["Variables"]
        assert {"FEATURE_GROUP_NAME", "ATHENA_WORKGROUP", "SCORING_PERIOD_MINUTES"} <= set(variables), name
        assert variables["SCORING_PERIOD_MINUTES"] == {"Ref": "ScoringPeriodMinutes"}
    assert functions["ScoreFunction"]["Properties"]["Environment"]["Variables"]["RETRAIN_FUNCTION"] == \
        {"Ref": "RetrainFunction"}
    # one retrain decision at a time: two alarms at once cannot start two executions
    assert functions["RetrainFunction"]["Properties"]["ReservedConcurrentExecutions"] == 1
    assert "ReservedConcurrentExecutions" not in functions["ScoreFunction"]["Properties"]


def test_the_monitoring_schedules_and_the_alarm_rule_reach_the_functions():
    from helpers.monitoring import aws as monitoring

    template = load(MONITORING)
    stack = template["Resources"]
    outputs = template["Outputs"]
    schedules = {name: r["Properties"] for name, r in stack.items() if r["Type"] == "AWS::Scheduler::Schedule"}
    targets = {name: (s["Target"]["Arn"]["Fn::GetAtt"][0], json.loads(s["Target"]["Input"]))
               for name, s in schedules.items()}
    assert targets == {"ForecastSchedule": ("ForecastFunction", {}),
                       "StagingScoreSchedule": ("ScoreFunction", {"stage": "staging"}),
                       "ProdScoreSchedule": ("ScoreFunction", {"stage": "prod"})}
    for name, schedule in schedules.items():
        assert schedule["Name"] == outputs[f"{name}Name"]["Value"], name  # the names the code reads
        assert (schedule["State"], schedule["FlexibleTimeWindow"]) == ({"Ref": "ScheduleState"}, {"Mode": "OFF"})
        assert schedule["Target"]["RoleArn"] == {"Fn::GetAtt": ["ScheduleRole", "Arn"]}
        assert schedule["Target"]["RetryPolicy"] == {"MaximumRetryAttempts": 0}
    assert template["Parameters"]["ScheduleState"]["Default"] == "DISABLED"  # ws.monitor.start() enables them

    rule = stack["AlarmRule"]["Properties"]
    assert rule["EventPattern"] == {"source": ["aws.cloudwatch"], "detail-type": ["CloudWatch Alarm State Change"],
                                    "detail": {"alarmName": [{"prefix": {"Fn::Sub": "${Prefix}-wql-"}}],
                                               "state": {"value": ["ALARM"]}}}
    for stage in ("staging", "prod"):  # the alarms the code puts match the rule's prefix
        assert monitoring.alarm_name("${Prefix}", stage).startswith(rule["EventPattern"]["detail"]["alarmName"][0][
            "prefix"]["Fn::Sub"])
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["RetrainFunction", "Arn"]}
    permission = stack["RetrainPermission"]["Properties"]
    assert (permission["Principal"], permission["SourceArn"], permission["FunctionName"]) == (
        "events.amazonaws.com", {"Fn::GetAtt": ["AlarmRule", "Arn"]}, {"Ref": "RetrainFunction"})


def test_the_monitoring_period_is_a_parameter_whose_values_divide_an_hour():
    template = load(MONITORING)
    period = template["Parameters"]["ScoringPeriodMinutes"]
    assert period["Default"] == "60" and "10" in period["AllowedValues"]
    assert all(60 % int(m) == 0 for m in period["AllowedValues"])
    from helpers.monitoring.aws import SCORING_PERIODS

    assert [str(m) for m in SCORING_PERIODS] == period["AllowedValues"]  # what ws.monitor.start() accepts
    assert {m: v["Seconds"] for m, v in template["Mappings"]["ScoringPeriods"].items()} == {
        m: str(60 * int(m)) for m in period["AllowedValues"]}
    assert template["Outputs"]["ScoringPeriodSeconds"]["Value"] == {
        "Fn::FindInMap": ["ScoringPeriods", {"Ref": "ScoringPeriodMinutes"}, "Seconds"]}
    for name, default in (("ForecastEveryMinutes", 10), ("EvaluationPeriods", 5), ("DatapointsToAlarm", 3)):
        assert template["Parameters"][name]["Default"] == default, name
    # the settings parameter starts as the stack's M of N; the code fills in the rest
    settings = template["Resources"]["SettingsParameter"]["Properties"]
    assert settings["Name"] == {"Fn::Sub": "/${Prefix}/monitoring/settings"}
    seeded = json.loads(re.sub(r"\$\{(\w+)\}", lambda m: str(template["Parameters"][m[1]]["Default"]),
                               settings["Value"]["Fn::Sub"]))
    from helpers.monitoring.settings import MonitorSettings

    assert MonitorSettings(**seeded) == MonitorSettings()


def test_the_monitoring_dashboard_shows_both_stages_the_alarms_and_the_pipeline():
    template = load(MONITORING)
    body, variables = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    assert variables == {"PeriodSeconds": {"Fn::FindInMap": ["ScoringPeriods", {"Ref": "ScoringPeriodMinutes"},
                                                             "Seconds"]}}
    values = {"Prefix": PREFIX, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws",
              "PeriodSeconds": "600", "ScoringPeriodMinutes": "10"}
    dashboard = json.loads(re.sub(r"\$\{([\w:]+)\}", lambda m: values[m[1]], body))
    widgets = {w["properties"].get("title", w["type"]): w for w in dashboard["widgets"]}
    for stage in ("staging", "prod"):
        metrics = widgets[f"{stage}: wQL and the threshold"]["properties"]
        assert metrics["period"] == 600 and metrics["stat"] == "Maximum"
        assert [m[:4] for m in metrics["metrics"]] == [
            ["CustomModelMonitoring", "weighted_quantile_loss", "StageName", stage],
            ["CustomModelMonitoring", "weighted_quantile_loss_threshold", "StageName", stage]]
    alarms = next(w for w in dashboard["widgets"] if w["type"] == "alarm")["properties"]["alarms"]
    assert alarms == [f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{PREFIX}-wql-{s}" for s in ("staging", "prod")]
    pipeline = widgets["Model-build pipeline executions"]["properties"]["metrics"]
    assert {m[3] for m in pipeline} == {f"{PREFIX}-model-build"}
    outputs = template["Outputs"]
    assert outputs["DashboardName"]["Value"] == {"Fn::Sub": "${Prefix}-workshop"}
    assert outputs["DashboardUrl"]["Value"]["Fn::Sub"].endswith("#dashboards/dashboard/${Prefix}-workshop")


def test_the_monitoring_roles_grant_no_wildcard_action_and_a_wildcard_resource_only_to_put_metric_data():
    from helpers.monitoring.cloudwatch import NAMESPACE

    wildcards = []
    for name, statement in role_statements(MONITORING):
        assert statement["Effect"] == "Allow"
        assert not any("*" in a for a in as_list(statement["Action"])), (name, statement["Sid"])
        if "*" in as_list(statement["Resource"]):
            wildcards.append((name, statement["Action"], statement.get("Condition")))
    assert wildcards == [("ScoreRole", "cloudwatch:PutMetricData",
                          {"StringEquals": {"cloudwatch:namespace": NAMESPACE}})]


def test_monitoring_stack_deploys_its_roles_functions_and_parameters_scoped_to_exact_arns(aws):
    storage = deploy_storage_with_lambda_code()
    bucket, key = storage["Bucket"], storage["KmsKeyArn"]
    template, dropped = moto_template(MONITORING)
    assert dropped == {"ForecastInvokeConfig", "ScoreInvokeConfig", "RetrainInvokeConfig", "ForecastSchedule",
                       "StagingScoreSchedule", "ProdScoreSchedule", "Dashboard"}  # checked above, statically
    outputs = deploy("monitoring", template, LambdaCodeKey="code/lambda-test.zip", ScoringPeriodMinutes="10")
    queue_url = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{PREFIX}-monitoring-dlq"
    assert outputs == {
        "ForecastFunctionName": f"{PREFIX}-monitor-forecasts", "ScoreFunctionName": f"{PREFIX}-monitor-score",
        "RetrainFunctionName": f"{PREFIX}-retrain", "ForecastScheduleName": f"{PREFIX}-monitor-forecasts",
        "StagingScoreScheduleName": f"{PREFIX}-monitor-score-staging",
        "ProdScoreScheduleName": f"{PREFIX}-monitor-score-prod", "AlarmRuleName": f"{PREFIX}-wql-alarm-to-retrain",
        "AlarmNamePrefix": f"{PREFIX}-wql-", "DashboardName": f"{PREFIX}-workshop",
        "DashboardUrl": f"https://console.aws.amazon.com/cloudwatch/home?region={REGION}#dashboards/dashboard/"
                        f"{PREFIX}-workshop",
        "ScoringPeriodMinutes": "10", "ScoringPeriodSeconds": "600",
        "SettingsParameter": f"/{PREFIX}/monitoring/settings", "DeadLetterQueueUrl": queue_url, "Bucket": bucket,
        "RecordsS3Uri": f"s3://{bucket}/monitoring/"}
    attributes = boto3.client("sqs").get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    assert (attributes["KmsMasterKeyId"], attributes["MessageRetentionPeriod"]) == (key, str(14 * 86400))
    queue = attributes["QueueArn"]

    ssm = boto3.client("ssm")
    found = {p["Name"]: p["Value"] for p in ssm.get_parameters_by_path(Path=f"/{PREFIX}/monitoring/")["Parameters"]}
    assert found == {f"/{PREFIX}/monitoring/scoring-period-minutes": "10", f"/{PREFIX}/monitoring/settings":
                     '{"forecast_every_minutes": 10, "evaluation_periods": 5, "datapoints_to_alarm": 3}'}

    lam = boto3.client("lambda")
    configs = {name: lam.get_function(FunctionName=outputs[f"{name}FunctionName"])
               for name in ("Forecast", "Score", "Retrain")}
    assert {n: (c["Configuration"]["MemorySize"], c["Configuration"]["Timeout"]) for n, c in configs.items()} == {
        "Forecast": (512, 60), "Score": (1024, 300), "Retrain": (512, 60)}
    assert configs["Retrain"]["Concurrency"] == {"ReservedConcurrentExecutions": 1}
    common = {"MLOPS_AWS_PREFIX": PREFIX, "BUCKET": bucket}
    reading = {**common, "FEATURE_GROUP_NAME": f"{PREFIX}-tx-per-minute", "ATHENA_WORKGROUP": PREFIX,
               "SCORING_PERIOD_MINUTES": "10"}
    retrain_arn = configs["Retrain"]["Configuration"]["FunctionArn"]
    assert {n: c["Configuration"]["Environment"]["Variables"] for n, c in configs.items()} == {
        "Forecast": reading, "Score": {**reading, "RETRAIN_FUNCTION": f"{PREFIX}-retrain"}, "Retrain": common}

    events = boto3.client("events")
    (rule,) = events.list_rules(NamePrefix=f"{PREFIX}-wql")["Rules"]
    assert json.loads(rule["EventPattern"])["detail"]["alarmName"] == [{"prefix": f"{PREFIX}-wql-"}]
    (target,) = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
    assert target["Arn"] == retrain_arn
    tags = {t["Key"]: t["Value"] for t in events.list_tags_for_resource(ResourceARN=rule["Arn"])["Tags"]}
    assert tags == {"Project": "realtime-mlops-workshop", "WorkshopPrefix": PREFIX}
    (statement,) = json.loads(lam.get_policy(FunctionName=outputs["RetrainFunctionName"])["Policy"])["Statement"]
    assert (statement["Principal"]["Service"], statement["Condition"]["ArnLike"]["AWS:SourceArn"]) == (
        "events.amazonaws.com", rule["Arn"])

    groups = {g["logGroupName"]: g for g in boto3.client("logs").describe_log_groups()["logGroups"]}
    assert set(groups) == {f"/aws/lambda/{PREFIX}-{n}" for n in ("monitor-forecasts", "monitor-score", "retrain")}
    assert {g["retentionInDays"] for g in groups.values()} == {14}

    # one role per function, and the schedules', each allowed exactly these actions on exactly these resources
    arn = f"arn:aws:s3:::{bucket}"
    sagemaker = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:"
    endpoints = {f"{sagemaker}endpoint/{PREFIX}-staging", f"{sagemaker}endpoint/{PREFIX}-prod"}
    group = {f"{sagemaker}feature-group/{PREFIX}-tx-per-minute"}
    ssm_arn = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/{PREFIX}/"
    alarms = {f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{PREFIX}-wql-{s}" for s in ("staging", "prod")}
    logs = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/{PREFIX}-"
    pipeline = f"{sagemaker}pipeline/{PREFIX}-model-build"

    def own(name):
        return {"sqs:SendMessage": {queue}, "kms:GenerateDataKey": {key}, "kms:Decrypt": {key},
                "logs:CreateLogStream": {f"{logs}{name}:*"}, "logs:PutLogEvents": {f"{logs}{name}:*"}}
    expected = {
        f"{PREFIX}-monitor-forecasts": {
            "sagemaker:DescribeEndpoint": endpoints, "sagemaker:InvokeEndpoint": endpoints,
            "sagemaker:GetRecord": group, "sagemaker:BatchGetRecord": group,
            "ssm:GetParameter": {f"{ssm_arn}monitoring/settings"}, **own("monitor-forecasts")},
        f"{PREFIX}-monitor-score": {
            "s3:GetObject": {f"{arn}/data-capture/*", f"{arn}/monitoring/*", f"{arn}/offline-store/*",
                             f"{arn}/athena-results/*"},
            "s3:PutObject": {f"{arn}/monitoring/*", f"{arn}/athena-results/*"},
            "s3:AbortMultipartUpload": {f"{arn}/athena-results/*"},
            "s3:ListMultipartUploadParts": {f"{arn}/athena-results/*"},
            "s3:ListBucket": {arn}, "s3:GetBucketLocation": {arn},
            **athena_reads(),
            "sagemaker:DescribeFeatureGroup": group, "sagemaker:DescribeEndpoint": endpoints,
            "ssm:GetParameter": {f"{ssm_arn}model-build/wql-threshold", f"{ssm_arn}monitoring/settings"},
            "cloudwatch:PutMetricData": {"*"},
            **{f"cloudwatch:{a}": alarms for a in ("DescribeAlarms", "PutMetricAlarm", "TagResource")},
            "lambda:InvokeFunction": {retrain_arn}, **own("monitor-score")},
        f"{PREFIX}-retrain": {
            "sagemaker:ListPipelineExecutions": {pipeline}, "sagemaker:StartPipelineExecution": {pipeline},
            "sagemaker:DescribePipelineExecution": {f"{pipeline}/execution/*"},
            "sagemaker:ListModelPackages": {f"{sagemaker}model-package-group/{PREFIX}-avg-fee-deepar",
                                            f"{sagemaker}model-package/{PREFIX}-avg-fee-deepar/*"},
            "ssm:GetParameter": {f"{ssm_arn}monitoring/settings", f"{ssm_arn}model-build/hyperparameters"},
            "s3:GetObject": {f"{arn}/monitoring/*"}, "s3:PutObject": {f"{arn}/monitoring/*"}, "s3:ListBucket": {arn},
            **own("retrain")},
        f"{PREFIX}-monitor-schedule": {"lambda:InvokeFunction": {
            configs["Forecast"]["Configuration"]["FunctionArn"], configs["Score"]["Configuration"]["FunctionArn"]}},
    }
    roles = check_roles(expected)
    trusted = {name: r["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["Service"] for name, r in roles.items()}
    assert trusted == {**{f"{PREFIX}-{n}": "lambda.amazonaws.com" for n in ("monitor-forecasts", "monitor-score",
                                                                              "retrain")},
                       f"{PREFIX}-monitor-schedule": "scheduler.amazonaws.com"}
    own_role = {"Forecast": "monitor-forecasts", "Score": "monitor-score", "Retrain": "retrain"}
    for name, config in configs.items():
        assert config["Configuration"]["Role"] == roles[f"{PREFIX}-{own_role[name]}"]["Arn"], name
