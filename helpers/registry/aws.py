"""The model registry on AWS: the SageMaker model package group ``<prefix>-avg-fee-deepar``.

A version is a model package the pipeline's Register step created. What a :class:`ModelVersion` carries beyond
the package's own fields is read from the build's artifacts beside its model metrics in S3 (evaluation.json: the
metrics and the baselines'; gate.json: the gate's decision; settings.json: the hyperparameters and the data
range), so the registry never keeps a second copy of what the build measured.

The promotion guard's evidence (InService on staging, the staging smoke test) is kept on the package itself, in
its customer metadata, by the deploy Lambda.
"""
from __future__ import annotations

import json

import pandas as pd

from helpers.aws.session import AwsContext, explained
from helpers.registry.interface import APPROVAL_STATUSES, ModelVersion

GROUP_SUFFIX = "avg-fee-deepar"
VERSION_COLUMNS = ["version", "approval_status", "mean_wQuantileLoss", "created_at", "pipeline_execution_id"]
ARTIFACTS = {"evaluation": "evaluation/evaluation.json", "gate": "evaluation/gate.json",
             "settings": "prepare/settings/settings.json"}


def group_name(prefix: str) -> str:
    return f"{prefix}-{GROUP_SUFFIX}"


class AwsRegistry:
    """:class:`helpers.registry.interface.Registry` on a SageMaker model package group."""

    def __init__(self, context: AwsContext):
        self.context = context
        self.group = group_name(context.prefix)

    @property
    def _sagemaker(self):
        return self.context.client("sagemaker")

    def package_arn(self, version: int) -> str:
        return (f"arn:aws:sagemaker:{self.context.session.region_name}:{self.context.account_id}:model-package/"
                f"{self.group}/{version}")

    def versions(self) -> pd.DataFrame:
        rows = []
        with explained(f"listing the versions of {self.group}"):
            pages = self._sagemaker.get_paginator("list_model_packages").paginate(ModelPackageGroupName=self.group)
            summaries = [s for page in pages for s in page["ModelPackageSummaryList"]]
        for summary in summaries:
            metadata = self.describe(summary["ModelPackageVersion"]).get("CustomerMetadataProperties", {})
            rows.append({"version": summary["ModelPackageVersion"], "approval_status": summary["ModelApprovalStatus"],
                         "mean_wQuantileLoss": float(metadata["mean_wQuantileLoss"])
                         if "mean_wQuantileLoss" in metadata else None,
                         "created_at": pd.Timestamp(summary["CreationTime"]),
                         "pipeline_execution_id": metadata.get("pipeline_execution_id", "")})
        return pd.DataFrame(rows, columns=VERSION_COLUMNS).sort_values("version", ascending=False, ignore_index=True)

    def describe(self, version: int) -> dict:
        from botocore.exceptions import ClientError

        try:
            with explained(f"describing version {version} of {self.group}"):
                return self._sagemaker.describe_model_package(ModelPackageName=self.package_arn(version))
        except ClientError as error:
            if error.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound"):
                raise ValueError(f"no version {version} of model package group {self.group!r}: see "
                                 "ws.registry.versions()") from None
            raise

    def get(self, version: int) -> ModelVersion:
        package = self.describe(version)
        metadata = package.get("CustomerMetadataProperties", {})
        artifacts = self._artifacts(package)
        evaluation, gate, settings = (artifacts.get(k, {}) for k in ("evaluation", "gate", "settings"))
        extract, prepare = settings.get("extract", {}), settings.get("prepare", {})
        approval = package.get("ApprovalDescription", "")
        return ModelVersion(
            group=self.group, version=int(package["ModelPackageVersion"]),
            approval_status=package["ModelApprovalStatus"], metrics=evaluation.get("deepar", {}),
            baselines={k: v for k, v in evaluation.items() if k != "deepar"},
            hyperparameters=settings.get("settings", {}).get("hyperparameters", {}),
            data_range={"start": extract.get("data_start"), "end": extract.get("data_end"),
                        "gaps": extract.get("gaps"), "test_from": prepare.get("test_from")},
            feature_group=extract.get("feature_group", ""),
            pipeline_execution_id=metadata.get("pipeline_execution_id", ""), run_id=package["ModelPackageArn"],
            artifact_uri=package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"],
            created_at=pd.Timestamp(package["CreationTime"]),
            tags={**metadata, "quality_gate": gate.get("reason", ""), "approval_description": approval})

    def latest(self, status: str | None = None) -> ModelVersion | None:
        table = self.versions()
        if status is not None:
            table = table[table["approval_status"] == status]
        return None if table.empty else self.get(int(table["version"].iloc[0]))

    def pending(self) -> ModelVersion:
        pending = self.latest(status="PendingManualApproval")
        if pending is None:
            raise ValueError(f"no model version is pending approval in {self.group}: run notebook 03 (or python -m "
                             "helpers aws build --wait), whose report says whether the gate registered one")
        return pending

    def set_approval(self, version: int, status: str, by: str, reason: str) -> ModelVersion:
        """UpdateModelPackage's ModelApprovalStatus, with who and why in its approval description."""
        if status not in APPROVAL_STATUSES:
            raise ValueError(f"approval status {status!r}: use one of {APPROVAL_STATUSES}")
        if not by or not reason:
            raise ValueError("say who decides and why: by='your name', reason='...'")
        with explained(f"setting version {version} of {self.group} to {status}"):
            self._sagemaker.update_model_package(ModelPackageArn=self.package_arn(version),
                                                 ModelApprovalStatus=status,
                                                 ApprovalDescription=f"{by}: {reason}"[:1000])
        return self.get(version)

    def record(self, version: int, **evidence: str) -> None:
        """Add to a version's customer metadata (UpdateModelPackage adds and replaces keys; the rest is sent too,
        so that it holds however the service merges)."""
        metadata = {**self.describe(version).get("CustomerMetadataProperties", {}),
                    **{k: str(v)[:256] for k, v in evidence.items()}}
        with explained(f"recording {sorted(evidence)} on version {version} of {self.group}"):
            self._sagemaker.update_model_package(ModelPackageArn=self.package_arn(version),
                                                 CustomerMetadataProperties=metadata)

    def _artifacts(self, package: dict) -> dict:
        """The build's JSON artifacts beside the package's model metrics (evaluation.json) in S3."""
        from botocore.exceptions import ClientError

        statistics = package.get("ModelMetrics", {}).get("ModelQuality", {}).get("Statistics", {}).get("S3Uri")
        if not statistics:
            return {}
        bucket, _, key = statistics.removeprefix("s3://").partition("/")
        root = key.removesuffix(ARTIFACTS["evaluation"])
        found, s3 = {}, self.context.client("s3")
        for name, relative in ARTIFACTS.items():
            try:
                with explained(f"reading {relative} of model version {package.get('ModelPackageVersion')}"):
                    found[name] = json.loads(s3.get_object(Bucket=bucket, Key=root + relative)["Body"].read())
            except ClientError as error:
                if error.response["Error"]["Code"] not in ("NoSuchKey", "404"):
                    raise
        return found
