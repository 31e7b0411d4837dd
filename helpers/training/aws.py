"""The model build on AWS: :mod:`helpers.training.sagemaker_pipeline` upserted and started, its report read back
from the execution's step records and the artifacts its jobs left in S3, as the local report is from SQLite and
the execution's directory.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from helpers.aws import stacks
from helpers.aws.session import AwsContext, explained
from helpers.core.gate import GateDecision
from helpers.core.preparation import BuildSettings
from helpers.training.build_steps import EVALUATION_FILE, FORECASTS_FILE, GATE_FILE, load_forecasts
from helpers.training.interface import BuildReport
from helpers.training.sagemaker_jobs import SETTINGS_FILE
from helpers.training.sagemaker_pipeline import PipelineConfig, build_pipeline, settings_parameter

RUNNING = {"Executing", "Stopping"}
GATE_FIELDS = ("score", "threshold", "margin", "best_baseline", "best_baseline_score")
ARTIFACT_FILES = {"evaluation": (EVALUATION_FILE, GATE_FILE, FORECASTS_FILE), "prepare/settings": (SETTINGS_FILE,)}


class AwsModelBuilds:
    """:class:`helpers.training.interface.ModelBuilds` as a SageMaker Pipeline."""

    def __init__(self, context: AwsContext, clock=time.time, poll_s: float = 30.0, print_progress=print):
        self.context = context
        self.clock, self.poll_s, self.print = clock, poll_s, print_progress

    # ------------------------------------------------------------ the pipeline

    def config(self) -> PipelineConfig:
        from helpers.aws.package import upload_jobs_bundle

        model_build = stacks.require(self.context, "model-build").outputs
        ingestion = stacks.require(self.context, "ingestion").outputs
        return PipelineConfig.from_outputs(self.context.prefix, self.context.session.region_name, model_build,
                                           ingestion, upload_jobs_bundle(self.context, ingestion["Bucket"]))

    def upsert(self, config: PipelineConfig | None = None) -> PipelineConfig:
        """Define the pipeline (again) from this checkout's code; idempotent."""
        from sagemaker.core.workflow.pipeline_context import PipelineSession

        config = config or self.config()
        bucket = config.artifacts_uri.removeprefix("s3://").split("/")[0]
        session = PipelineSession(boto_session=self.context.session, default_bucket=bucket,
                                  default_bucket_prefix="model-build/sdk")
        with explained(f"defining the pipeline {config.pipeline_name}"):
            build_pipeline(config, session).upsert(role_arn=config.role_arn, tags=self.context.tags)
        return config

    def start(self, settings: BuildSettings | None = None, config: PipelineConfig | None = None) -> str:
        """Upsert and start an execution; returns its ARN at once."""
        config = self.upsert(config)
        with explained(f"starting the pipeline {config.pipeline_name}"):
            arn = self._sagemaker.start_pipeline_execution(
                PipelineName=config.pipeline_name, PipelineExecutionDisplayName=f"build-{int(self.clock())}",
                PipelineParameters=[{"Name": "BuildSettings", "Value": settings_parameter(settings)}],
            )["PipelineExecutionArn"]
        return arn

    def run(self, settings: BuildSettings | None = None) -> BuildReport:
        """Start an execution and wait for it (about 30 minutes: training and the batch transform start
        instances of their own), printing each step as it ends."""
        arn = self.start(settings)
        self.print(f"pipeline execution {_execution_id(arn)} started; it takes about 30 minutes")
        seen: set[str] = set()
        while True:
            status = self._describe(arn)["PipelineExecutionStatus"]
            for step in self._steps(arn):
                if step["StepStatus"] not in RUNNING | {"Starting"} and step["StepName"] not in seen:
                    seen.add(step["StepName"])
                    self.print(f"  {step['StepName']}: {step['StepStatus']}")
            if status not in RUNNING:
                return self.report(arn)
            time.sleep(self.poll_s)

    # ------------------------------------------------------------ what an execution left

    def report(self, execution_id: str) -> BuildReport:
        """The execution's report: its steps, and evaluation.json, gate.json and test_forecasts.npz from S3."""
        arn = self._arn(execution_id)
        described, steps = self._describe(arn), self._steps(arn)
        artifacts = self._artifacts(_execution_id(arn))
        frame = _steps_frame(steps)
        by_name = {s["StepName"]: s for s in steps}
        gate_document = artifacts.get(GATE_FILE)
        status = described["PipelineExecutionStatus"]
        if status == "Failed" and "GateFailed" in by_name:
            status = "FailedQualityGate"
        failure = by_name.get("GateFailed", {}).get("FailureReason") or described.get("FailureReason") or next(
            (f"{s['StepName']}: {s['FailureReason']}" for s in steps if s.get("FailureReason")), None)
        settings = artifacts.get(SETTINGS_FILE)
        outputs = {**(settings or {}).get("extract", {}), **(settings or {}).get("prepare", {})}
        registered = by_name.get("Register", {}).get("Metadata", {}).get("RegisterModel", {}).get("Arn")
        if registered:
            outputs["model_version"] = int(registered.rsplit("/", 1)[1])
        built = BuildReport(_execution_id(arn), status, None if status == "Succeeded" else failure,
                            settings["settings"] if settings else self._given_settings(arn), outputs, frame,
                            gate=GateDecision(**{k: gate_document[k] for k in GATE_FIELDS}) if gate_document else None,
                            evaluation=artifacts.get(EVALUATION_FILE, {}))
        if FORECASTS_FILE in artifacts:
            built.target, built.test_origins, built.actuals, built.forecasts = artifacts[FORECASTS_FILE]
        return built

    def list(self, limit: int = 20) -> pd.DataFrame:
        name = f"{self.context.prefix}-model-build"
        with explained(f"listing the executions of {name}"):
            found = self._sagemaker.list_pipeline_executions(PipelineName=name, SortBy="CreationTime",
                                                            SortOrder="Descending", MaxResults=limit)
        rows = []
        for summary in found["PipelineExecutionSummaries"]:
            described = self._describe(summary["PipelineExecutionArn"])
            ended = described.get("LastModifiedTime") if summary["PipelineExecutionStatus"] not in RUNNING else None
            rows.append({"execution_id": _execution_id(summary["PipelineExecutionArn"]), "pipeline": name,
                         "status": summary["PipelineExecutionStatus"], "started_at": pd.Timestamp(summary["StartTime"]),
                         "ended_at": pd.Timestamp(ended) if ended else pd.NaT,
                         "failure_reason": described.get("FailureReason")})
        frame = pd.DataFrame(rows, columns=["execution_id", "pipeline", "status", "started_at", "ended_at",
                                            "failure_reason"])
        frame["seconds"] = (frame["ended_at"] - frame["started_at"]).dt.total_seconds()
        return frame

    # ------------------------------------------------------------ plumbing

    @property
    def _sagemaker(self):
        return self.context.client("sagemaker")

    def _arn(self, execution_id: str) -> str:
        if execution_id.startswith("arn:"):
            return execution_id
        return (f"arn:aws:sagemaker:{self.context.session.region_name}:{self.context.account_id}:pipeline/"
                f"{self.context.prefix}-model-build/execution/{execution_id}")

    def _describe(self, arn: str) -> dict:
        with explained(f"describing the pipeline execution {_execution_id(arn)}"):
            return self._sagemaker.describe_pipeline_execution(PipelineExecutionArn=arn)

    def _steps(self, arn: str) -> list[dict]:
        steps, token = [], {}
        with explained(f"listing the steps of {_execution_id(arn)}"):
            while True:
                page = self._sagemaker.list_pipeline_execution_steps(PipelineExecutionArn=arn, SortOrder="Ascending",
                                                                     **token)
                steps += page["PipelineExecutionSteps"]
                if not page.get("NextToken"):
                    return steps
                token = {"NextToken": page["NextToken"]}

    def _given_settings(self, arn: str) -> dict:
        with explained(f"reading the parameters of {_execution_id(arn)}"):
            given = self._sagemaker.list_pipeline_parameters_for_execution(PipelineExecutionArn=arn)
        values = {p["Name"]: p["Value"] for p in given["PipelineParameters"]}
        return json.loads(values.get("BuildSettings", "{}"))

    def _artifacts(self, execution_id: str) -> dict:
        """The files an execution's jobs wrote, parsed; those it never got to are absent."""
        from botocore.exceptions import ClientError

        artifacts_uri = stacks.require(self.context, "model-build").outputs["ArtifactsS3Uri"]
        bucket, _, root = artifacts_uri.removeprefix("s3://").partition("/")
        found, s3 = {}, self.context.client("s3")
        for folder, names in ARTIFACT_FILES.items():
            for name in names:
                try:
                    with explained(f"reading {name} of {execution_id}"):
                        body = s3.get_object(Bucket=bucket, Key=f"{root}/{execution_id}/{folder}/{name}")["Body"]
                except ClientError as error:
                    if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
                        continue
                    raise
                found[name] = _forecasts(body.read()) if name == FORECASTS_FILE else json.loads(body.read())
        return found


def _forecasts(data: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / FORECASTS_FILE
        path.write_bytes(data)
        return load_forecasts(path)


def _execution_id(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def _steps_frame(steps: list[dict]) -> pd.DataFrame:
    """The step records as the local report has them: name, status, started_at, ended_at, seconds, outputs, log."""
    rows = [{"name": s["StepName"], "status": s["StepStatus"], "started_at": pd.Timestamp(s.get("StartTime")),
             "ended_at": pd.Timestamp(s.get("EndTime")) if s.get("EndTime") else pd.NaT,
             "outputs": json.dumps(s.get("Metadata", {}), default=str), "log": s.get("FailureReason", "")}
            for s in steps]
    frame = pd.DataFrame(rows, columns=["name", "status", "started_at", "ended_at", "outputs", "log"])
    frame["seconds"] = (frame["ended_at"] - frame["started_at"]).dt.total_seconds()
    return frame

