"""Clean-up on AWS: find everything the workshop made, delete it in a safe order, and look again to prove it is gone.

What it finds, never from a hand-written list of names:

- by tag, through the Resource Groups Tagging API: every resource tagged ``Project=realtime-mlops-workshop`` and
  ``WorkshopPrefix=<prefix>`` (``AwsContext.tags``);
- from the stacks: every stack ``<prefix>-*`` carrying those tags, each one's resources (deleted with the stack) and
  what its outputs name that the code creates (the feature group, the pipeline);
- where tags do not reach: the versions inside a model package group it found, the SSM parameters under
  ``/<prefix>/`` (the path the model-build stack names), and, by the prefix in their name, what carries no tags:
  CloudWatch dashboards, EventBridge Scheduler schedules and the log groups Lambda, Managed Flink and SageMaker
  create themselves (``/aws/lambda/<prefix>-*``, ``/aws/kinesis-analytics/<prefix>-*``,
  ``/aws/sagemaker/Endpoints/<prefix>-*``), unless the name belongs to a longer prefix another learner's resources
  are tagged with; and the EventBridge rules whose tags match (moto's Tagging API does not list rules).

SageMaker's job records and pipeline executions are history, not resources: there is no call to delete them and
they cost nothing, so they are not listed (a running execution is stopped with its pipeline). A KMS key can only be
scheduled for deletion (its stack does that): once scheduled it is ``pending``, not left over.

The order (:data:`DELETE`): the EventBridge rules are disabled first (so that the deploy Lambda re-creates no
endpoint), then what serves and runs, then what writes into the bucket (the feature group, waited for; Flink,
stopped), then the buckets are emptied, then the stacks (unknown ones first, then newest first, each waited for),
then what the stacks leave behind (SSM parameters, log groups, a KMS key outside a stack).
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from helpers.aws import stacks
from helpers.aws.session import AwsContext, explained
from helpers.core.cleanup import CleanupReport, Failure, Resource, confirmed, finish

POLL_S = 10.0  # between two looks at something being deleted
TIMEOUT_S = {"endpoint": 900, "pipeline": 1800, "feature-group": 1200, "flink-application": 900, "stack": 2700}
SETTLE = (3, 20.0)  # the Tagging API lags deletions: look again this many times, this many seconds apart
LOG_GROUP_BASES = ("/aws/lambda/", "/aws/kinesis-analytics/", "/aws/sagemaker/Endpoints/")
# SageMaker records that cannot be deleted and cost nothing (the Tagging API lists them).
RECORDS = {"training-job", "processing-job", "transform-job", "hyper-parameter-tuning-job", "compilation-job",
           "automl-job", "pipeline-execution"}
# What a stack's outputs name that the code creates (listed once :func:`_exists` finds it): output -> kind.
OUTPUT_KINDS = {"FeatureGroupName": "feature-group", "PipelineName": "pipeline"}
# (service, resource type in the ARN) -> kind; anything else keeps "service:type".
ARN_KINDS = {
    ("sagemaker", "endpoint"): "endpoint", ("sagemaker", "endpoint-config"): "endpoint-config",
    ("sagemaker", "model"): "model", ("sagemaker", "pipeline"): "pipeline",
    ("sagemaker", "model-package"): "model-package", ("sagemaker", "model-package-group"): "model-package-group",
    ("sagemaker", "feature-group"): "feature-group", ("cloudwatch", "alarm"): "alarm",
    ("cloudwatch", "dashboard"): "dashboard", ("logs", "log-group"): "log-group", ("ssm", "parameter"): "ssm-parameter",
    ("s3", ""): "bucket", ("kms", "key"): "kms-key", ("cloudformation", "stack"): "stack",
    ("kinesis", "stream"): "kinesis-stream", ("lambda", "function"): "lambda-function", ("sqs", ""): "sqs-queue",
    ("kinesisanalytics", "application"): "flink-application", ("athena", "workgroup"): "athena-workgroup",
    ("scheduler", "schedule"): "schedule", ("iam", "role"): "iam-role",
}
# A stack resource's type -> kind; anything else "service:type", as its ARN names it (AWS::Lambda::EventSourceMapping:
# lambda:event-source-mapping), so that what the Tagging API finds of a stack is known as the stack's.
STACK_KINDS = {
    "AWS::S3::Bucket": "bucket", "AWS::KMS::Key": "kms-key", "AWS::Kinesis::Stream": "kinesis-stream",
    "AWS::Logs::LogGroup": "log-group", "AWS::SSM::Parameter": "ssm-parameter", "AWS::Scheduler::Schedule": "schedule",
    "AWS::KinesisAnalyticsV2::Application": "flink-application", "AWS::Lambda::Function": "lambda-function",
    "AWS::SageMaker::ModelPackageGroup": "model-package-group", "AWS::SageMaker::Endpoint": "endpoint",
    "AWS::SageMaker::EndpointConfig": "endpoint-config", "AWS::SageMaker::Model": "model",
    "AWS::CloudWatch::Alarm": "alarm", "AWS::CloudWatch::Dashboard": "dashboard", "AWS::SQS::Queue": "sqs-queue",
    "AWS::IAM::Role": "iam-role", "AWS::Athena::WorkGroup": "athena-workgroup",
}
# A stack cannot delete a full bucket; Flink is stopped first; a rule is disabled so that it triggers nothing.
BEFORE_ITS_STACK = {"bucket", "flink-application", "events:rule"}
GONE_CODES = {"ResourceNotFound", "ResourceNotFoundException", "NoSuchBucket", "ParameterNotFound", "NotFoundException",
              "NotFound", "NoSuchEntity", "EntityNotFoundException", "ResourceNotFoundFault", "NoSuchKey",
              "AWS.SimpleQueueService.NonExistentQueue", "DashboardNotFoundError"}


# ------------------------------------------------------------------ what there is


def inventory(context: AwsContext) -> list[Resource]:
    """Everything the workshop made in this region under this prefix (see the module's docstring); a KMS key already
    scheduled for deletion is not listed."""
    return _look(context)[0]


def _look(context: AwsContext) -> tuple[list[Resource], list[Resource]]:
    """(what is there, what is pending deletion)."""
    found = _stack_resources(context) + _tagged(context)
    found += _untaggable(context) + _inside_groups(context, found)
    merged: dict[tuple[str, str], Resource] = {}
    for r in found:  # the first source that found it says how (a stack first: it owns it); the ARN from any
        first = merged.setdefault(r.key, r)
        if first.arn is None and r.arn:
            merged[r.key] = replace(first, arn=r.arn)
    pending = [r for r in merged.values() if r.kind == "kms-key" and _key_pending(context, r)]
    return [r for r in merged.values() if r not in pending], pending


def _stack_resources(context: AwsContext) -> list[Resource]:
    found = []
    cfn = context.client("cloudformation")
    for stack in _stacks(context):
        name = stack["StackName"]
        found.append(Resource("stack", name, stack["StackId"], "tag"))
        with explained(f"listing the resources of the stack {name}"):
            summaries = [s for page in cfn.get_paginator("list_stack_resources").paginate(StackName=name)
                         for s in page["StackResourceSummaries"]]
        found += [Resource(_stack_kind(s["ResourceType"]), _physical_name(s["ResourceType"], s["PhysicalResourceId"]),
                           None, f"stack {name}", name)
                  for s in summaries if s.get("PhysicalResourceId") and s["ResourceStatus"] != "DELETE_COMPLETE"]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        found += [Resource(kind, outputs[key], None, f"stack {name} (output {key})")
                  for key, kind in OUTPUT_KINDS.items() if key in outputs and _exists(context, kind, outputs[key])]
    return found


def _stacks(context: AwsContext) -> list[dict]:
    """The stacks named <prefix>-* that carry the workshop's tags: unknown ones first, then STACKS newest first."""
    with explained("listing the CloudFormation stacks"):
        every = [s for page in context.client("cloudformation").get_paginator("describe_stacks").paginate()
                 for s in page["Stacks"]]
    ours = [s for s in every if s["StackName"].startswith(f"{context.prefix}-") and s["StackStatus"] !=
            "DELETE_COMPLETE" and _carries_tags(context, s.get("Tags", []))]
    return sorted(ours, key=lambda s: _stack_rank(context, s["StackName"]))


def _stack_rank(context: AwsContext, name: str) -> int:
    known = [stacks.stack_name(context, stack) for stack in reversed(stacks.STACKS)]
    return known.index(name) + 1 if name in known else 0


def _carries_tags(context: AwsContext, tags: list[dict]) -> bool:
    return all(tag in tags for tag in context.tags)


def _tagged(context: AwsContext) -> list[Resource]:
    filters = [{"Key": t["Key"], "Values": [t["Value"]]} for t in context.tags]
    with explained("listing the resources tagged for this workshop (the Resource Groups Tagging API)"):
        arns = [m["ResourceARN"] for page in context.client("resourcegroupstaggingapi").get_paginator(
            "get_resources").paginate(TagFilters=filters) for m in page["ResourceTagMappingList"]]
    found = [Resource(*_kind_and_name(arn), arn, "tag") for arn in arns]
    return [r for r in found if r.kind not in RECORDS]


def _kind_and_name(arn: str) -> tuple[str, str]:
    service, resource = arn.split(":", 5)[2], arn.split(":", 5)[5]
    slash, colon = resource.find("/"), resource.find(":")
    if slash > 0 and (colon < 0 or slash < colon):
        rtype, name = resource.split("/", 1)
    elif colon > 0:
        rtype, name = resource.split(":", 1)
    else:
        rtype, name = "", resource
    if service == "sagemaker" and rtype == "pipeline" and "/execution/" in name:
        return "pipeline-execution", name
    kind = ARN_KINDS.get((service, rtype), f"{service}:{rtype}" if rtype else service)
    name = {"stack": lambda n: n.split("/")[0], "log-group": lambda n: n.removesuffix(":*"),
            "ssm-parameter": lambda n: f"/{n}"}.get(kind, lambda n: n)(name)
    return kind, name


def _stack_kind(resource_type: str) -> str:
    if resource_type in STACK_KINDS:
        return STACK_KINDS[resource_type]
    _, service, rtype = resource_type.split("::")
    return f"{service.lower()}:{re.sub(r'(?<!^)(?=[A-Z])', '-', rtype).lower()}"


def _physical_name(resource_type: str, physical_id: str) -> str:
    if physical_id.startswith("arn:"):
        return _kind_and_name(physical_id)[1]
    if physical_id.startswith("https://"):  # an SQS queue's URL
        return physical_id.rstrip("/").rsplit("/", 1)[1]
    if resource_type == "AWS::Scheduler::Schedule" and "/" not in physical_id:
        return f"default/{physical_id}"  # as the ARN names it: <group>/<name>
    return physical_id


def _untaggable(context: AwsContext) -> list[Resource]:
    """SSM parameters under /<prefix>/; tagged EventBridge rules; and, by name, dashboards, schedules and the
    services' own log groups."""
    mine = _name_is_mine(context)
    found = []
    with explained(f"listing the SSM parameters under /{context.prefix}/"):
        for page in context.client("ssm").get_paginator("get_parameters_by_path").paginate(
                Path=f"/{context.prefix}/", Recursive=True):
            found += [Resource("ssm-parameter", p["Name"], p.get("ARN"), f"path /{context.prefix}/")
                      for p in page["Parameters"]]
    with explained("listing the CloudWatch dashboards"):
        for page in context.client("cloudwatch").get_paginator("list_dashboards").paginate(
                DashboardNamePrefix=f"{context.prefix}-"):
            found += [Resource("dashboard", d["DashboardName"], d.get("DashboardArn"), "name")
                      for d in page["DashboardEntries"] if mine(d["DashboardName"])]
    with explained("listing the EventBridge Scheduler schedules"):
        for page in context.client("scheduler").get_paginator("list_schedules").paginate(
                NamePrefix=f"{context.prefix}-"):
            found += [Resource("schedule", f"{s['GroupName']}/{s['Name']}", s.get("Arn"), "name")
                      for s in page["Schedules"] if mine(s["Name"])]
    events = context.client("events")
    with explained("listing the EventBridge rules"):  # tagged: the Tagging API finds them too (moto's does not)
        for page in events.get_paginator("list_rules").paginate(NamePrefix=f"{context.prefix}-"):
            found += [Resource("events:rule", rule["Name"], rule["Arn"], "tag") for rule in page["Rules"]
                      if _carries_tags(context, events.list_tags_for_resource(ResourceARN=rule["Arn"])["Tags"])]
    logs = context.client("logs").get_paginator("describe_log_groups")
    for base in LOG_GROUP_BASES:
        with explained(f"listing the log groups {base}{context.prefix}-*"):
            for page in logs.paginate(logGroupNamePrefix=f"{base}{context.prefix}-"):
                found += [Resource("log-group", g["logGroupName"], g.get("arn"), "name")
                          for g in page["logGroups"] if mine(g["logGroupName"][len(base):])]
    return found


def _name_is_mine(context: AwsContext) -> Callable[[str], bool]:
    """Whether a name that starts with <prefix>- is this workshop's, not that of a longer prefix (``ws`` and
    ``ws-2``) whose resources are tagged in this account."""
    with explained("listing the workshop prefixes tagged in this account"):
        prefixes = [v for page in context.client("resourcegroupstaggingapi").get_paginator("get_tag_values").paginate(
            Key="WorkshopPrefix") for v in page["TagValues"]]
    longer = [p for p in prefixes if p.startswith(f"{context.prefix}-")]
    return lambda name: name.startswith(f"{context.prefix}-") and not any(name.startswith(f"{p}-") for p in longer)


def _inside_groups(context: AwsContext, found: list[Resource]) -> list[Resource]:
    """The versions inside each model package group found: a group cannot be deleted while it holds any."""
    versions = []
    sagemaker = context.client("sagemaker")
    for group in {r.name for r in found if r.kind == "model-package-group"}:
        with explained(f"listing the model packages in {group}"):
            for page in sagemaker.get_paginator("list_model_packages").paginate(ModelPackageGroupName=group):
                versions += [Resource("model-package", _kind_and_name(p["ModelPackageArn"])[1], p["ModelPackageArn"],
                                      f"group {group}") for p in page["ModelPackageSummaryList"]]
    return versions


def _exists(context: AwsContext, kind: str, name: str) -> bool:
    sagemaker = context.client("sagemaker")
    describe = {"feature-group": lambda: sagemaker.describe_feature_group(FeatureGroupName=name),
                "pipeline": lambda: sagemaker.describe_pipeline(PipelineName=name)}[kind]
    return _answers(describe)


def _answers(call: Callable[[], object]) -> bool:
    """True if the call answers; False if it says the resource does not exist."""
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as error:
        if _gone(error):
            return False
        raise
    return True


def _gone(error) -> bool:
    answer = error.response.get("Error", {})
    message = answer.get("Message", "").lower()
    return answer.get("Code") in GONE_CODES or any(
        words in message for words in ("could not find", "does not exist", "not found"))


def _key_pending(context: AwsContext, key: Resource) -> bool:
    with explained(f"describing the KMS key {key.name}"):
        state = context.client("kms").describe_key(KeyId=key.name)["KeyMetadata"]["KeyState"]
    return state in ("PendingDeletion", "PendingReplicaDeletion")


# ------------------------------------------------------------------ deleting


@dataclass
class _Run:
    context: AwsContext
    found: list[Resource]
    wait: Callable[[float], None]

    def client(self, service: str):
        return self.context.client(service)

    def until(self, done: Callable[[], bool], what: str, kind: str) -> None:
        """Look every POLL_S until ``done()``; a TimeoutError past the kind's timeout."""
        waited = 0.0
        while not done():
            if waited >= TIMEOUT_S[kind]:
                raise TimeoutError(f"{what}: not done after {waited / 60:.0f} minutes; run the clean-up again later")
            self.wait(POLL_S)
            waited += POLL_S


def _rule(run: _Run, r: Resource) -> None:
    """Disable it first, so that nothing it triggers (the deploy Lambda, the retrain) acts while the clean-up runs;
    delete it unless its stack does."""
    events = run.client("events")
    bus, name = r.name.rsplit("/", 1) if "/" in r.name else ("default", r.name)
    events.disable_rule(Name=name, EventBusName=bus)
    if r.owner is None:
        targets = [t["Id"] for t in events.list_targets_by_rule(Rule=name, EventBusName=bus)["Targets"]]
        if targets:
            events.remove_targets(Rule=name, EventBusName=bus, Ids=targets)
        events.delete_rule(Name=name, EventBusName=bus)


def _endpoint(run: _Run, r: Resource) -> None:
    sagemaker = run.client("sagemaker")
    sagemaker.delete_endpoint(EndpointName=r.name)
    run.until(lambda: not _answers(lambda: sagemaker.describe_endpoint(EndpointName=r.name)),
              f"deleting the endpoint {r.name}", "endpoint")


def _pipeline(run: _Run, r: Resource) -> None:
    """Stop its running executions, wait until none runs (DeletePipeline refuses otherwise), delete it."""
    sagemaker = run.client("sagemaker")
    for arn in _executions(sagemaker, r.name, {"Executing"}):
        sagemaker.stop_pipeline_execution(PipelineExecutionArn=arn)
    run.until(lambda: not _executions(sagemaker, r.name, {"Executing", "Stopping"}),
              f"stopping the executions of {r.name}", "pipeline")
    sagemaker.delete_pipeline(PipelineName=r.name)


def _executions(sagemaker, pipeline: str, statuses: set[str]) -> list[str]:
    pages = sagemaker.get_paginator("list_pipeline_executions").paginate(PipelineName=pipeline)
    return [e["PipelineExecutionArn"] for page in pages for e in page["PipelineExecutionSummaries"]
            if e.get("PipelineExecutionStatus") in statuses]


def _schedule(run: _Run, r: Resource) -> None:
    group, name = r.name.split("/", 1)
    run.client("scheduler").delete_schedule(Name=name, GroupName=group)


def _feature_group(run: _Run, r: Resource) -> None:
    """Delete it, wait until it is gone (its offline store writes into the bucket until then), then its Glue table,
    which Feature Store leaves behind."""
    sagemaker = run.client("sagemaker")
    described = sagemaker.describe_feature_group(FeatureGroupName=r.name)
    catalog = described.get("OfflineStoreConfig", {}).get("DataCatalogConfig")
    if described["FeatureGroupStatus"] != "Deleting":  # a clean-up before this one may have started it
        sagemaker.delete_feature_group(FeatureGroupName=r.name)
    run.until(lambda: _feature_group_gone(sagemaker, r.name), f"deleting the feature group {r.name}", "feature-group")
    if catalog:
        _answers(lambda: run.client("glue").delete_table(DatabaseName=catalog["Database"], Name=catalog["TableName"]))


def _feature_group_gone(sagemaker, name: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        described = sagemaker.describe_feature_group(FeatureGroupName=name)
    except ClientError as error:
        if _gone(error):
            return True
        raise
    if described["FeatureGroupStatus"] == "DeleteFailed":
        raise RuntimeError(f"DeleteFailed: {described.get('FailureReason', 'no reason given')}")
    return False


def _flink(run: _Run, r: Resource) -> None:
    """Stop it and wait until it is READY; deleting it is its stack's job, unless no stack owns it."""
    flink = run.client("kinesisanalyticsv2")
    run.until(lambda: _flink_stopped(flink, r.name), f"stopping the Flink application {r.name}", "flink-application")
    if r.owner is None:
        created = flink.describe_application(ApplicationName=r.name)["ApplicationDetail"]["CreateTimestamp"]
        flink.delete_application(ApplicationName=r.name, CreateTimestamp=created)


def _flink_stopped(flink, name: str) -> bool:
    status = flink.describe_application(ApplicationName=name)["ApplicationDetail"]["ApplicationStatus"]
    if status in ("RUNNING", "AUTOSCALING"):
        flink.stop_application(ApplicationName=name)
    return status in ("READY", "ROLLED_BACK")


def _bucket(run: _Run, r: Resource) -> None:
    """Empty it, every version and delete marker; delete it unless its stack does."""
    _empty(run.client("s3"), r.name)
    if r.owner is None:
        run.client("s3").delete_bucket(Bucket=r.name)


def _empty(s3, bucket: str) -> None:
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        objects = [{"Key": o["Key"], "VersionId": o["VersionId"]}
                   for o in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        for start in range(0, len(objects), 1000):
            refused = s3.delete_objects(Bucket=bucket, Delete={"Objects": objects[start:start + 1000],
                                                               "Quiet": True}).get("Errors", [])
            if refused:
                first = refused[0]
                raise RuntimeError(f"{len(refused)} objects refused to go, the first {first['Key']}: "
                                   f"{first.get('Code')} {first.get('Message', '')}")
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        for upload in page.get("Uploads", []):
            s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


def _stack(run: _Run, r: Resource) -> None:
    """Empty its buckets once more (the stacks deleted before it could write until they went), delete it, wait."""
    for bucket in [b for b in run.found if b.kind == "bucket" and b.owner == r.name]:
        _empty(run.client("s3"), bucket.name)
    cfn = run.client("cloudformation")
    cfn.delete_stack(StackName=r.arn or r.name)
    run.until(lambda: _stack_deleted(cfn, r.arn or r.name), f"deleting the stack {r.name}", "stack")


def _stack_deleted(cfn, stack_id: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        status = cfn.describe_stacks(StackName=stack_id)["Stacks"][0]["StackStatus"]
    except ClientError as error:
        if _gone(error):
            return True
        raise
    if status == "DELETE_FAILED":
        events = cfn.describe_stack_events(StackName=stack_id)["StackEvents"]
        reasons = [f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason', '')}" for e in events
                   if e.get("ResourceStatus") == "DELETE_FAILED"][:3]
        raise RuntimeError(f"DELETE_FAILED: {'; '.join(reasons) or 'see its events in the CloudFormation console'}")
    return status == "DELETE_COMPLETE"


def _kms_key(run: _Run, r: Resource) -> None:
    run.client("kms").schedule_key_deletion(KeyId=r.name, PendingWindowInDays=7)


def _queue(run: _Run, r: Resource) -> None:
    sqs = run.client("sqs")
    sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=r.name)["QueueUrl"])


# The deletion calls, in the order they run: the rules that react to changes first, then what serves and runs, what
# writes into the bucket before the bucket is emptied, the stacks (unknown ones first, then newest first, each waited
# for), then what they leave behind. A resource its stack owns waits for its stack, except those in BEFORE_ITS_STACK.
DELETE: dict[str, Callable[[_Run, Resource], None]] = {
    "events:rule": _rule,
    "endpoint": _endpoint,
    "endpoint-config": lambda run, r: run.client("sagemaker").delete_endpoint_config(EndpointConfigName=r.name),
    "model": lambda run, r: run.client("sagemaker").delete_model(ModelName=r.name),
    "pipeline": _pipeline,
    "schedule": _schedule,
    "alarm": lambda run, r: run.client("cloudwatch").delete_alarms(AlarmNames=[r.name]),
    "dashboard": lambda run, r: run.client("cloudwatch").delete_dashboards(DashboardNames=[r.name]),
    "model-package": lambda run, r: run.client("sagemaker").delete_model_package(ModelPackageName=r.arn or r.name),
    "model-package-group": lambda run, r: run.client("sagemaker").delete_model_package_group(
        ModelPackageGroupName=r.name),
    "feature-group": _feature_group,
    "flink-application": _flink,
    "lambda-function": lambda run, r: run.client("lambda").delete_function(FunctionName=r.name),
    "kinesis-stream": lambda run, r: run.client("kinesis").delete_stream(StreamName=r.name,
                                                                         EnforceConsumerDeletion=True),
    "sqs-queue": _queue,
    "athena-workgroup": lambda run, r: run.client("athena").delete_work_group(WorkGroup=r.name,
                                                                              RecursiveDeleteOption=True),
    "bucket": _bucket,
    "stack": _stack,
    "ssm-parameter": lambda run, r: run.client("ssm").delete_parameter(Name=r.name),
    "log-group": lambda run, r: run.client("logs").delete_log_group(logGroupName=r.name),
    "kms-key": _kms_key,
}
BEFORE_AND_STACKS = tuple(DELETE)[:tuple(DELETE).index("stack") + 1]
AFTER_STACKS = tuple(DELETE)[len(BEFORE_AND_STACKS):]  # found again once the stacks are gone


def clean_up(context: AwsContext, ask: Callable[[str], str] | None = None, yes: bool = False,
             wait: Callable[[float], None] = time.sleep) -> CleanupReport:
    """Find everything (:func:`inventory`), ask (unless ``yes``; ``ask`` defaults to ``input``), delete it in the
    order of :data:`DELETE`, each error caught and reported, then look again."""
    found, pending = _look(context)
    report = _report(context, found)
    if not found:
        return finish(report, [], pending)
    if not confirmed(report, ask, yes):
        return finish(report, found, pending)
    run = _Run(context, found, wait)
    _delete_kinds(run, report, BEFORE_AND_STACKS)
    try:  # what the stacks left behind (a log group a Lambda wrote to again): a fresh look
        run.found = _look(context)[0]
    except Exception as error:
        report.failed.append(Failure(Resource("inventory", context.prefix), f"listing what the stacks left: {error}"))
        return _look_again(context, report, wait)
    report.found += [r for r in run.found if r.key not in {f.key for f in found}]
    _delete_kinds(run, report, AFTER_STACKS)
    return _look_again(context, report, wait)


def _delete_kinds(run: _Run, report: CleanupReport, kinds: tuple[str, ...]) -> None:
    """Delete what ``run`` found of these kinds, in their order (the stacks: unknown ones first, then newest first);
    what a stack owns waits for it, except the kinds in BEFORE_ITS_STACK."""
    for kind in kinds:
        ours = [r for r in run.found if r.kind == kind and (r.owner is None or kind in BEFORE_ITS_STACK)]
        for resource in sorted(ours, key=lambda r: _stack_rank(run.context, r.name) if kind == "stack" else 0):
            report.failed += _delete(DELETE[kind], run, resource)


def _delete(delete: Callable[[_Run, Resource], None], run: _Run, resource: Resource) -> list[Failure]:
    """[] when it went (or was already gone), else its Failure: one resource that refuses stops nothing."""
    from botocore.exceptions import ClientError

    try:
        with explained(f"deleting the {resource.kind} {resource.name}"):
            delete(run, resource)
    except ClientError as error:
        if _gone(error):
            return []
        answer = error.response.get("Error", {})
        return [Failure(resource, f"{answer.get('Code')}: {answer.get('Message', '')}")]
    except Exception as error:  # AwsSetupError (explained), TimeoutError, DELETE_FAILED, ...
        return [Failure(resource, str(error))]
    return []


def _look_again(context: AwsContext, report: CleanupReport, wait: Callable[[float], None]) -> CleanupReport:
    """What is left, looking again a few times while the Tagging API catches up with the deletions."""
    tries, pause = SETTLE
    try:
        left, pending = _look(context)
        for _ in range(tries):
            if not left:
                break
            wait(pause)
            left, pending = _look(context)
    except Exception as error:  # the second look failed: say so, rather than claim anything
        report.failed.append(Failure(Resource("inventory", context.prefix), f"listing what is left: {error}"))
        return finish(report, None)
    report.failed += [Failure(r, f"the clean-up has no way to delete a {r.kind}") for r in left
                      if r.owner is None and r.kind not in DELETE]
    return finish(report, left, pending)


def _report(context: AwsContext, found: list[Resource]) -> CleanupReport:
    region = context.region or context.session.region_name
    options = f"--prefix {context.prefix}" + (f" --region {context.region}" if context.region else "")
    return CleanupReport(
        subject=f"tagged WorkshopPrefix={context.prefix}", place=region, found=found,
        by_hand=(f"in the console: https://{region}.console.aws.amazon.com/resource-groups/tag-editor/find-resources"
                 f"?region={region} (Tag Editor: find resources with the tag WorkshopPrefix = {context.prefix})"),
        confirm_hint=(f"ws.clean_up(yes=True), notebook 99_cleanup with yes = True, or "
                      f"`python -m helpers aws {options} cleanup --yes`"))
