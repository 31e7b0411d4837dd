"""The endpoints on AWS: SageMaker endpoints ``<prefix>-staging`` and ``<prefix>-prod``.

Each model version is its own SageMaker model (from its model package), endpoint config and production variant
(``model-vN``), with SageMaker's data capture into ``s3://<bucket>/data-capture/``.

Approval is the model package's status, as in the original system: :meth:`AwsEndpoints.approve` sets it, and the
EventBridge rule on that change runs the deploy Lambda (:func:`handler`): the threshold rule, then the deploy to
staging. When SageMaker reports staging InService, the same Lambda smoke-tests it and keeps the outcome on the
model package (the promotion guard's evidence). ``approve`` waits for all of it and returns the same
:class:`Approval` as the local twin. Production takes a version only through :meth:`promote`, behind the same guard
(:func:`helpers.core.policies.deploy_refusal`). Every deploy, InService and smoke test is a JSON record under
``s3://<bucket>/deployments/``.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass

import pandas as pd

from helpers.aws.session import AwsContext, explained
from helpers.core.policies import THRESHOLD_UPDATE_RATE, SmokeTest, ThresholdChange, deploy_refusal
from helpers.endpoints import approval
from helpers.endpoints.approval import SMOKE_HISTORY_MINUTES
from helpers.endpoints.interface import (
    ENDPOINTS,
    Approval,
    EndpointDescription,
    Invocation,
    PromotionError,
    served_version,
    variant_name,
)
from helpers.registry.aws import AwsRegistry

log = logging.getLogger("helpers.endpoints.aws")

HISTORY_COLUMNS = ["endpoint", "model_version", "action", "status", "by", "reason", "at"]
EVIDENCE_IN_SERVICE, EVIDENCE_SMOKE = "staging_in_service_at", "staging_smoke_test"


@dataclass(frozen=True)
class DeploymentSettings:
    """What the deployment stack decided: read from its outputs in a notebook, from the environment in the Lambda."""

    instance_type: str
    endpoint_role_arn: str
    data_capture_uri: str  # s3://bucket/data-capture
    deployments_uri: str  # s3://bucket/deployments
    feature_group: str
    athena_workgroup: str
    kms_key_arn: str | None = None

    ENV = {"instance_type": "ENDPOINT_INSTANCE_TYPE", "endpoint_role_arn": "ENDPOINT_ROLE_ARN",
           "data_capture_uri": "DATA_CAPTURE_S3_URI", "deployments_uri": "DEPLOYMENTS_S3_URI",
           "feature_group": "FEATURE_GROUP_NAME", "athena_workgroup": "ATHENA_WORKGROUP", "kms_key_arn": "KMS_KEY_ARN"}

    @classmethod
    def from_env(cls) -> "DeploymentSettings":
        return cls(**{field: os.environ.get(name) for field, name in cls.ENV.items()})

    @classmethod
    def from_stacks(cls, context: AwsContext) -> "DeploymentSettings":
        from helpers.aws import stacks

        deployment = stacks.require(context, "deployment").outputs
        ingestion = stacks.require(context, "ingestion").outputs
        return cls(deployment["EndpointInstanceType"], deployment["EndpointRoleArn"], deployment["DataCaptureS3Uri"],
                   deployment["DeploymentsS3Uri"], ingestion["FeatureGroupName"], ingestion["AthenaWorkGroup"],
                   ingestion.get("KmsKeyArn"))


class AwsEndpoints:
    """:class:`helpers.endpoints.interface.Endpoints` on SageMaker endpoints."""

    names = ENDPOINTS

    def __init__(self, context: AwsContext, settings: DeploymentSettings | None = None, clock=time.time,
                 poll_s: float = 20.0, print_progress=print):
        self.context = context
        self._settings = settings
        self.registry = AwsRegistry(context)
        self.clock, self.poll_s, self.print = clock, poll_s, print_progress

    @property
    def settings(self) -> DeploymentSettings:
        if self._settings is None:
            self._settings = DeploymentSettings.from_stacks(self.context)
        return self._settings

    def endpoint_name(self, stage: str) -> str:
        if stage not in ENDPOINTS:
            raise ValueError(f"endpoint {stage!r}: use one of {ENDPOINTS}")
        return f"{self.context.prefix}-{stage}"

    @property
    def _sagemaker(self):
        return self.context.client("sagemaker")

    # ------------------------------------------------------------ approval and promotion

    def approve(self, version: int | None = None, by: str = "", reason: str = "",
                update_rate: float = THRESHOLD_UPDATE_RATE, timeout_s: float = 1800) -> Approval:
        """Approve a version; the deploy Lambda then applies the threshold rule, deploys it to staging and
        smoke-tests it there (about 10 minutes: SageMaker starts an instance). Waits for all of it."""
        version = version if version is not None else self.registry.pending().version
        if update_rate != THRESHOLD_UPDATE_RATE:
            raise ValueError(f"update_rate={update_rate}: on AWS the deploy Lambda applies the rule with its rate "
                             f"({THRESHOLD_UPDATE_RATE})")
        self.registry.set_approval(version, "Approved", by, reason)
        self.print(f"version {version} Approved; the deploy Lambda deploys it to staging and smoke-tests it "
                   "(about 10 minutes)")
        threshold = ThresholdChange(**self._wait_for_record(f"approvals/v{version}.json", timeout_s))
        staging = self._wait_in_service("staging", version, timeout_s)
        smoke = SmokeTest(**self._wait_for_record(f"smoke/staging-v{version}.json", timeout_s))
        return Approval(version, threshold, staging, smoke)

    def reject(self, version: int | None = None, by: str = "", reason: str = "") -> str:
        version = version if version is not None else self.registry.pending().version
        return self.registry.set_approval(version, "Rejected", by, reason).approval_status

    def promote(self, version: int | None = None, by: str = "", reason: str = "") -> EndpointDescription:
        """The second approval: production takes the version staging serves (or ``version``), guard first."""
        if not by or not reason:
            raise ValueError("say who promotes and why: by='your name', reason='...'")
        version = version if version is not None else self.describe("staging").get("ModelVersion")
        if version is None:
            raise ValueError("staging serves no model: approve a version first, which deploys it to staging")
        return self.deploy("prod", version, by=by, reason=f"promoted: {reason}")

    def deploy(self, name: str, version: int, by: str = "", reason: str = "",
               timeout_s: float = 1800) -> EndpointDescription:
        """Deploy a registered version to ``name`` and wait until it serves it (production: through the guard)."""
        served = self.describe(name)
        if (served["EndpointStatus"], served["ModelVersion"]) == ("InService", version):
            return served  # already done (the deploy Lambda's auto-approve may have promoted it)
        self.start_deploy(name, version, by, reason)
        self.print(f"{self.endpoint_name(name)} is taking version {version} (5 to 10 minutes)")
        return self._wait_in_service(name, version, timeout_s)

    def rollback(self, name: str, by: str = "", reason: str = "") -> EndpointDescription:
        previous = self.describe(name).get("PreviousModelVersion")
        if previous is None:
            raise ValueError(f"{name} has no previous version to roll back to")
        return self.deploy(name, previous, by=by, reason=f"rollback: {reason}")

    def start_deploy(self, name: str, version: int, by: str, reason: str) -> str:
        """Guard, then the version's model, a new endpoint config and CreateEndpoint or UpdateEndpoint; returns at
        once (SageMaker takes minutes) with the endpoint config's name."""
        package = self.registry.describe(version)
        evidence = package.get("CustomerMetadataProperties", {})
        refusal = deploy_refusal(name, version, package["ModelApprovalStatus"], EVIDENCE_IN_SERVICE in evidence,
                                 evidence.get(EVIDENCE_SMOKE) == "passed")
        if refusal:
            raise PromotionError(refusal)
        previous = self.describe(name).get("ModelVersion")
        model = self._ensure_model(version, package["ModelPackageArn"])
        config = self._create_endpoint_config(name, version, model)
        endpoint = self.endpoint_name(name)
        current = self._describe_raw(endpoint)
        with explained(f"deploying version {version} to {endpoint}"):
            if current is not None and current["EndpointStatus"] == "Failed":  # cannot be updated: replaced
                self._sagemaker.delete_endpoint(EndpointName=endpoint)
                self._sagemaker.get_waiter("endpoint_deleted").wait(EndpointName=endpoint)
                current = None
            if current is not None:
                self._sagemaker.update_endpoint(EndpointName=endpoint, EndpointConfigName=config)
            else:
                self._sagemaker.create_endpoint(EndpointName=endpoint, EndpointConfigName=config,
                                                Tags=self.context.tags)
        self._log(name, version, "deploy", "Updating" if previous is not None else "Creating", by, reason,
                  previous_version=previous, endpoint_config=config)
        return config

    def _ensure_model(self, version: int, package_arn: str) -> str:
        from botocore.exceptions import ClientError

        name = f"{self.context.prefix}-v{version}"
        try:
            with explained(f"creating the model {name}"):
                self._sagemaker.create_model(ModelName=name, ExecutionRoleArn=self.settings.endpoint_role_arn,
                                             Containers=[{"ModelPackageName": package_arn}], Tags=self.context.tags)
        except ClientError as error:
            if "already exist" not in str(error):
                raise
        return name

    def _create_endpoint_config(self, stage: str, version: int, model: str) -> str:
        name = f"{self.endpoint_name(stage)}-v{version}-{int(self.clock())}"
        capture = {"EnableCapture": True, "InitialSamplingPercentage": 100,
                   "DestinationS3Uri": self.settings.data_capture_uri,
                   "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                   "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}}
        kms = {"KmsKeyId": self.settings.kms_key_arn} if self.settings.kms_key_arn else {}
        with explained(f"creating the endpoint config {name}"):
            self._sagemaker.create_endpoint_config(
                EndpointConfigName=name, DataCaptureConfig={**capture, **kms}, Tags=self.context.tags, **kms,
                ProductionVariants=[{"VariantName": variant_name(version), "ModelName": model,
                                     "InitialInstanceCount": 1, "InstanceType": self.settings.instance_type,
                                     "InitialVariantWeight": 1.0}])
        return name

    # ------------------------------------------------------------ what the endpoints are doing

    def describe(self, name: str) -> EndpointDescription:
        endpoint = self.endpoint_name(name)
        found = self._describe_raw(endpoint)
        last = self._last_deploy(name)
        if found is None:
            return EndpointDescription(EndpointName=name, EndpointStatus="OutOfService", ModelVersion=None,
                                       PreviousModelVersion=None, InServiceSince=None, LastModifiedTime=None,
                                       FailureReason=None)
        version = served_version(found)
        status = found["EndpointStatus"]
        return EndpointDescription(
            EndpointName=name, EndpointStatus=status, ModelVersion=version,
            PreviousModelVersion=last.get("previous_version") if last else None,
            InServiceSince=str(found["LastModifiedTime"]) if status == "InService" else None,
            LastModifiedTime=str(found["LastModifiedTime"]), FailureReason=found.get("FailureReason"))

    def require_in_service(self) -> dict[str, EndpointDescription]:
        described = {name: self.describe(name) for name in ENDPOINTS}
        down = [name for name, d in described.items() if d.get("EndpointStatus") != "InService"]
        if down:
            pending = self.registry.latest(status="PendingManualApproval")
            hint = (f"version {pending.version} awaits approval: run notebook 04" if pending else
                    "run notebook 03 for a model, then notebook 04")
            raise ValueError(f"{' and '.join(down)} not InService: {hint}")
        return described

    def _exists(self, endpoint: str) -> bool:
        return self._describe_raw(endpoint) is not None

    def _describe_raw(self, endpoint: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            with explained(f"describing the endpoint {endpoint}"):
                return self._sagemaker.describe_endpoint(EndpointName=endpoint)
        except ClientError as error:
            if "Could not find" in str(error):
                return None
            raise

    def _wait_in_service(self, name: str, version: int, timeout_s: float) -> EndpointDescription:
        deadline = self.clock() + timeout_s
        while True:
            described = self.describe(name)
            if described["EndpointStatus"] == "InService" and described["ModelVersion"] == version:
                return described
            if described["EndpointStatus"] == "Failed":
                raise RuntimeError(f"{self.endpoint_name(name)} failed to take version {version}: "
                                   f"{described.get('FailureReason')}")
            if self.clock() > deadline:
                raise TimeoutError(f"{self.endpoint_name(name)} is {described['EndpointStatus']} after "
                                   f"{timeout_s / 60:.0f} minutes; see it in the SageMaker console (Endpoints)")
            time.sleep(self.poll_s)

    # ------------------------------------------------------------ invoking, smoke test

    def runtime_client(self):
        """A sagemaker-runtime client on which the short names work too: EndpointName="staging" reaches
        ``<prefix>-staging``, so the notebooks' cells are the same on both backends."""
        client = self.context.session.client("sagemaker-runtime")

        def to_prefixed_name(params, **_):
            if params.get("EndpointName") in ENDPOINTS:
                params["EndpointName"] = self.endpoint_name(params["EndpointName"])

        client.meta.events.register("provide-client-params.sagemaker-runtime.InvokeEndpoint", to_prefixed_name)
        return client

    def invoke(self, name: str, request: dict) -> Invocation:
        return approval.invoke(self.runtime_client(), self.endpoint_name(name), name, request)

    def smoke_test(self, name: str = "staging") -> SmokeTest:
        from helpers.feature_store.aws import AwsFeatureGroup

        served = self.describe(name)
        version = served.get("ModelVersion")
        if served.get("EndpointStatus") != "InService" or version is None:
            raise RuntimeError(f"endpoint {name} is {served.get('EndpointStatus')}: deploy a version first")
        model = self.registry.get(version)
        horizon = int(model.hyperparameters["prediction_length"])
        features = AwsFeatureGroup(self.context, {"FeatureGroupName": self.settings.feature_group,
                                                  "AthenaWorkGroup": self.settings.athena_workgroup}, clock=self.clock)
        result = approval.smoke_test(name, version, model.metrics["mean_wQuantileLoss"], horizon,
                                     features.recent("avg_fee", SMOKE_HISTORY_MINUTES + horizon),
                                     lambda request: self.invoke(name, request))
        self._put(f"smoke/{name}-v{version}.json", asdict(result))
        if name == "staging":
            self.registry.record(version, **{EVIDENCE_SMOKE: "passed" if result.passed else "failed",
                                             "staging_smoke_wql": f"{result.mean_wQuantileLoss:.6f}"})
        return result

    # ------------------------------------------------------------ history

    def history(self) -> pd.DataFrame:
        records = [self._get(key) for key in self._keys("log/")]
        return pd.DataFrame([{**r, "at": pd.Timestamp(r["at"])} for r in records], columns=HISTORY_COLUMNS)

    def stop(self) -> list[str]:
        """Delete both endpoints, the part that bills by the hour; their configs and models stay (clean-up
        removes them), so approving or promoting again brings them back. Returns the endpoints deleted."""
        deleted = []
        for name in ENDPOINTS:
            endpoint = self.endpoint_name(name)
            found = self._describe_raw(endpoint)
            if found is not None:
                with explained(f"deleting the endpoint {endpoint}"):
                    self._sagemaker.delete_endpoint(EndpointName=endpoint)
                self._log(name, served_version(found), "stop", "Deleting", "teardown", "stop what bills by the hour")
                deleted.append(endpoint)
        return deleted

    def _last_deploy(self, name: str) -> dict | None:
        keys = [k for k in self._keys("log/") if f"-{name}-deploy" in k]
        return self._get(keys[-1]) if keys else None

    def _log(self, name: str, version, action: str, status: str, by: str, reason: str, **extra) -> None:
        at = pd.Timestamp(self.clock(), unit="s", tz="UTC")
        self._put(f"log/{at.strftime('%Y%m%dT%H%M%S.%fZ')}-{name}-{action}.json",
                  {"endpoint": name, "model_version": version, "action": action, "status": status, "by": by,
                   "reason": reason, "at": at.isoformat(), **extra})

    # ------------------------------------------------------------ the records under s3://<bucket>/deployments/

    def _where(self, key: str) -> tuple[str, str]:
        bucket, _, root = self.settings.deployments_uri.removeprefix("s3://").partition("/")
        return bucket, f"{root}/{key}"

    def _put(self, key: str, document: dict) -> None:
        bucket, full = self._where(key)
        with explained(f"recording s3://{bucket}/{full}"):
            self.context.client("s3").put_object(Bucket=bucket, Key=full, Body=json.dumps(document, default=str))

    def _get(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        bucket, full = self._where(key)
        try:
            with explained(f"reading s3://{bucket}/{full}"):
                return json.loads(self.context.client("s3").get_object(Bucket=bucket, Key=full)["Body"].read())
        except ClientError as error:
            if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise

    def _keys(self, folder: str) -> list[str]:
        bucket, root = self._where(folder)
        with explained(f"listing s3://{bucket}/{root}"):
            pages = self.context.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=root)
            keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        base = self._where("")[1]
        return sorted(k.removeprefix(base) for k in keys)

    def _wait_for_record(self, key: str, timeout_s: float) -> dict:
        deadline = self.clock() + timeout_s
        while (found := self._get(key)) is None:
            if self.clock() > deadline:
                raise TimeoutError(f"the deploy Lambda left no {key} in {timeout_s / 60:.0f} minutes: see its log "
                                   f"group /aws/lambda/{self.context.prefix}-deploy")
            time.sleep(self.poll_s)
        return found


# ---------------------------------------------------------------- the deploy Lambda


def on_approval(endpoints: AwsEndpoints, version: int) -> None:
    """A version was Approved: the threshold rule on SSM, then staging takes it."""
    from helpers.training.ssm import SsmParameters

    model = endpoints.registry.get(version)
    change = approval.update_threshold_on_approval(
        SsmParameters(endpoints.context), model.metrics["mean_wQuantileLoss"], by="deploy Lambda", version=version,
        floor=model.metrics.get("worst_hour_wQuantileLoss"))
    endpoints._put(f"approvals/v{version}.json", asdict(change))
    endpoints.start_deploy("staging", version, "deploy Lambda (approval)",
                           model.tags.get("approval_description", ""))


def on_registered(endpoints: AwsEndpoints, version: int) -> None:
    """A build registered a version: with the monitor's auto_approve (headless runs), approve it, as notebook 04's
    auto_approve does; the approval event then deploys it."""
    if auto_approve(endpoints.context):
        endpoints.registry.set_approval(version, "Approved", "auto-approve",
                                        "the monitor's auto_approve: a retrained version goes on by itself")


def on_in_service(endpoints: AwsEndpoints, name: str) -> None:
    """An endpoint is InService: record it and move its alarm to the version it serves; on staging, the evidence
    for the guard and the smoke test, then, with auto_approve, production behind the same guard."""
    from helpers.monitoring.aws import put_stage_alarm

    served = endpoints.describe(name)
    version = served.get("ModelVersion")
    endpoints._log(name, version, "in-service", "InService", "SageMaker", "the endpoint reported InService")
    put_stage_alarm(endpoints.context, name, version)  # a deploy moves the alarm to the new version's metrics
    if name == "staging" and version is not None:
        endpoints.registry.record(version, **{EVIDENCE_IN_SERVICE: served.get("InServiceSince") or ""})
        if endpoints.smoke_test("staging").passed and auto_approve(endpoints.context):
            endpoints.start_deploy("prod", version, "auto-approve", "the monitor's auto_approve: staging passed "
                                                                    "its smoke test")


def auto_approve(context: AwsContext) -> bool:
    from helpers.monitoring.aws import load_settings

    return bool(load_settings(context).auto_approve)


def handler(event: dict, _context=None, clock=time.time) -> dict:
    """EventBridge: "SageMaker Model Package State Change" (PendingManualApproval or Approved), or "SageMaker
    Endpoint State Change".
    ``clock``: the wall clock in Lambda; tests pin it."""
    logging.getLogger().setLevel(logging.INFO)
    endpoints = AwsEndpoints(AwsContext(), DeploymentSettings.from_env(), clock=clock, print_progress=log.info)
    detail, kind = event.get("detail", {}), event.get("detail-type", "")
    if kind == "SageMaker Model Package State Change":
        version, status = int(detail["ModelPackageVersion"]), detail.get("ModelApprovalStatus")
        if status == "Approved":
            on_approval(endpoints, version)
            return {"approved": version}
        if status == "PendingManualApproval":
            on_registered(endpoints, version)
            return {"registered": version}
    if kind == "SageMaker Endpoint State Change":
        name = detail.get("EndpointName", "").removeprefix(f"{endpoints.context.prefix}-")
        if name in ENDPOINTS and detail.get("EndpointStatus", "").upper().replace("_", "") == "INSERVICE":
            on_in_service(endpoints, name)
            return {"in_service": name}
    return {"ignored": kind}
