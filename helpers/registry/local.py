"""The model registry: MLflow (SQLite backend, no server) with SageMaker's approval statuses.

The twin of a SageMaker model package group. Each registered model version
carries its approval status (PendingManualApproval, Approved, Rejected), its
metrics and baselines, hyperparameters, data range, feature group, the pipeline
execution that built it, and the model artifact (a serialized GluonTS predictor).
Open the MLflow UI on it with ``python -m helpers mlflow-ui``.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pandas as pd

from helpers.local.config import Paths
from helpers.registry.interface import APPROVAL_STATUSES, MODEL_GROUP, ModelVersion
from helpers.training.pipeline import ExecutionStore

log = logging.getLogger("helpers.registry")

EXPERIMENT = "model-build"


class ModelRegistry:
    def __init__(self, directory: Path):
        import mlflow

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = f"sqlite:///{self.directory / 'mlflow.db'}"
        self._mlflow = mlflow
        self.client = mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            EXPERIMENT, artifact_location=(self.directory / "artifacts").as_uri())

    def log_build(self, pipeline_execution_id: str, status: str, hyperparameters: dict, metrics: dict | None = None,
                  baselines: dict | None = None, gate_reason: str | None = None, failure_reason: str | None = None,
                  model_dir: Path | None = None) -> str:
        """The MLflow run of a pipeline execution, whatever its outcome (a gate-rejected build too): its
        hyperparameters, metrics beside the baselines', the gate's decision. Logged once; returns the run id."""
        client = self.client
        found = client.search_runs([self.experiment_id], f"tags.pipeline_execution_id = '{pipeline_execution_id}'")
        if found:
            run_id = found[0].info.run_id
        else:
            run_id = client.create_run(self.experiment_id, run_name=pipeline_execution_id,
                                       tags={"pipeline_execution_id": pipeline_execution_id}).info.run_id
            for name, value in hyperparameters.items():
                client.log_param(run_id, name, value)
            if metrics:
                for name, value in _flat_metrics(metrics, baselines or {}).items():
                    client.log_metric(run_id, name, value)
                client.log_dict(run_id, {"metrics": metrics, "baselines": baselines}, "evaluation.json")
            if model_dir is not None:
                client.log_artifacts(run_id, str(model_dir), "model")
        for key, value in {"pipeline_status": status, "quality_gate": gate_reason,
                           "failure_reason": failure_reason}.items():
            if value:
                client.set_tag(run_id, key, value[:5000])
        client.set_terminated(run_id, "FAILED" if status == "Failed" else "FINISHED")  # a rejection is an outcome
        return run_id

    def register(self, model_dir: Path, metrics: dict, baselines: dict, hyperparameters: dict, data_range: dict,
                 feature_group: str, pipeline_execution_id: str, gate_reason: str = "",
                 group: str = MODEL_GROUP) -> ModelVersion:
        """Log the build's run with everything the version must carry, then register it as PendingManualApproval."""
        client = self.client
        run_id = self.log_build(pipeline_execution_id, "Executing", hyperparameters, metrics, baselines, gate_reason,
                                model_dir=model_dir)
        run = client.get_run(run_id)
        if not _group_exists(client, group):
            client.create_registered_model(group, description="DeepAR forecasts of the per-minute average fee")
        tags = {
            "approval_status": "PendingManualApproval",
            "metrics": json.dumps(metrics), "baselines": json.dumps(baselines),
            "hyperparameters": json.dumps(hyperparameters), "data_range": json.dumps(data_range),
            "feature_group": feature_group, "pipeline_execution_id": pipeline_execution_id,
            "mean_wQuantileLoss": str(metrics["mean_wQuantileLoss"]), "quality_gate": gate_reason,
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLflow warns that a source outside a logged model is unusual
            version = client.create_model_version(group, source=f"{run.info.artifact_uri}/model", run_id=run_id,
                                                  tags=tags, description=_describe_status("PendingManualApproval"))
        log.info("registered %s version %s: PendingManualApproval", group, version.version)
        return self.get(group, int(version.version))

    def get(self, group: str, version: int) -> ModelVersion:
        try:
            mv = self.client.get_model_version(group, str(version))
        except self._mlflow.exceptions.MlflowException:
            raise ValueError(f"no version {version} of model group {group!r}: see python -m helpers models") from None
        tags = dict(mv.tags)
        return ModelVersion(
            group=group, version=int(mv.version), approval_status=tags.get("approval_status", "PendingManualApproval"),
            metrics=json.loads(tags.get("metrics", "{}")), baselines=json.loads(tags.get("baselines", "{}")),
            hyperparameters=json.loads(tags.get("hyperparameters", "{}")),
            data_range=json.loads(tags.get("data_range", "{}")), feature_group=tags.get("feature_group", ""),
            pipeline_execution_id=tags.get("pipeline_execution_id", ""), run_id=mv.run_id, artifact_uri=mv.source,
            created_at=pd.Timestamp(mv.creation_timestamp, unit="ms", tz="UTC"), tags=tags)

    def set_approval(self, group: str, version: int, status: str, by: str, reason: str) -> ModelVersion:
        """Approve or reject a version (UpdateModelPackage's ModelApprovalStatus), keeping who, why and when."""
        if status not in APPROVAL_STATUSES:
            raise ValueError(f"approval status {status!r}: use one of {APPROVAL_STATUSES}")
        if not by or not reason:
            raise ValueError("say who decides and why: by='your name', reason='...'")
        current = self.get(group, version)
        entry = {"status": status, "by": by, "reason": reason, "at": pd.Timestamp.now(tz="UTC").isoformat(),
                 "previous": current.approval_status}
        history = json.loads(current.tags.get("approval_history", "[]")) + [entry]
        for key, value in {"approval_status": status, "approval_by": by, "approval_reason": reason,
                           "approval_history": json.dumps(history)}.items():
            self.client.set_model_version_tag(group, str(version), key, value)
        self.client.update_model_version(group, str(version), _describe_status(status, by, reason))
        log.info("%s version %s: %s -> %s by %s (%s)", group, version, current.approval_status, status, by, reason)
        return self.get(group, version)

    def set_stage_alias(self, stage: str, version: int, group: str = MODEL_GROUP) -> None:
        """Point the alias ``stage`` (staging, prod) at the version that endpoint now serves."""
        self.client.set_registered_model_alias(group, stage, str(version))

    def stage_aliases(self, group: str = MODEL_GROUP) -> dict[str, int]:
        """{alias: version}: which version each endpoint serves, as the registry shows it."""
        if not _group_exists(self.client, group):
            return {}
        return {alias: int(version) for alias, version in self.client.get_registered_model(group).aliases.items()}

    def latest(self, group: str = MODEL_GROUP, status: str | None = None) -> ModelVersion | None:
        """The newest version, optionally only among those with ``status``."""
        table = self.versions(group)
        if status is not None:
            table = table[table["approval_status"] == status]
        return None if table.empty else self.get(group, int(table["version"].iloc[0]))

    def versions(self, group: str = MODEL_GROUP) -> pd.DataFrame:
        """Every version with its status and headline metric, newest first."""
        if not _group_exists(self.client, group):
            return pd.DataFrame(columns=["version", "approval_status", "mean_wQuantileLoss", "created_at",
                                         "pipeline_execution_id"])
        rows = [self.get(group, int(mv.version)) for mv in self.client.search_model_versions(f"name='{group}'")]
        return pd.DataFrame([{"version": v.version, "approval_status": v.approval_status,
                              "mean_wQuantileLoss": v.metrics.get("mean_wQuantileLoss"), "created_at": v.created_at,
                              "pipeline_execution_id": v.pipeline_execution_id} for v in rows]
                            ).sort_values("version", ascending=False, ignore_index=True)

    def model_path(self, group: str, version: int) -> Path:
        """A local directory holding the version's serialized predictor."""
        return Path(self._mlflow.artifacts.download_artifacts(artifact_uri=self.get(group, version).artifact_uri,
                                                              tracking_uri=self.tracking_uri))


def _describe_status(status: str, by: str = "", reason: str = "") -> str:
    """The version's description, which the MLflow UI shows in its versions list: the approval status first."""
    return f"{status}: {reason} (by {by})" if by else f"{status}: awaiting a decision (python -m helpers approve)"


def _group_exists(client, group: str) -> bool:
    return bool(client.search_registered_models(filter_string=f"name='{group}'"))


def _flat_metrics(metrics: dict, baselines: dict) -> dict[str, float]:
    """MLflow metric names allow no brackets: wQuantileLoss[0.1] becomes wQuantileLoss_0.1."""
    flat = {_metric_name(k): v for k, v in metrics.items() if isinstance(v, (int, float))}
    for name, values in baselines.items():
        flat.update({f"{name}.{_metric_name(k)}": v for k, v in values.items() if isinstance(v, (int, float))})
    return flat


def _metric_name(key: str) -> str:
    return key.replace("[", "_").replace("]", "").replace("-", "_to_")


class LocalRegistry:
    """The registry stage on this machine: the MLflow registry, opened on first use."""

    def __init__(self, paths: Paths):
        self.paths = paths
        self._models: ModelRegistry | None = None

    @property
    def models(self) -> ModelRegistry:
        if self._models is None:
            self._models = ModelRegistry(self.paths.registry)
        return self._models

    def versions(self) -> pd.DataFrame:
        return self.models.versions()

    def get(self, version: int) -> ModelVersion:
        return self.models.get(MODEL_GROUP, version)

    def latest(self, status: str | None = None) -> ModelVersion | None:
        return self.models.latest(status=status)

    def pending(self) -> ModelVersion:
        pending = self.latest(status="PendingManualApproval")
        if pending is None:
            raise ValueError(f"no model version is pending approval: {why_nothing_is_pending(self.paths)}")
        return pending


def why_nothing_is_pending(paths: Paths) -> str:
    """The newest model build's outcome, as a reason and what to run next."""
    builds = ExecutionStore(paths.pipelines).list("model-build", limit=1)
    rebuild = "run notebook 03 (or python -m helpers train)"
    if builds.empty:
        return f"no model has been built yet: {rebuild}"
    last = builds.iloc[0]
    if last["status"] == "FailedQualityGate":
        return (f"the last model build ({last['execution_id']}) was rejected by the quality gate: "
                f"{last['failure_reason'].removeprefix('QualityGate: ')}. Notebook 03 says what to do; then {rebuild}")
    if last["status"] != "Succeeded":
        return f"the last model build ({last['execution_id']}) {last['status']}: {last['failure_reason']}; {rebuild}"
    return f"the last build's version has been decided already: {rebuild} for a new one"
