"""What notebooks 03-05, the deploy step and the CLI ask of the model registry, whichever backend holds it.

The local twin is MLflow (:mod:`helpers.registry.local`); the AWS twin is a SageMaker model package group.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pandas as pd

MODEL_GROUP = "btc-avg-fee-deepar"  # the model package group
APPROVAL_STATUSES = ("PendingManualApproval", "Approved", "Rejected")


@dataclass
class ModelVersion:
    group: str
    version: int
    approval_status: str
    metrics: dict  # mean_wQuantileLoss and friends on the build's test windows
    baselines: dict  # baseline name -> the same metrics, on the same windows
    hyperparameters: dict
    data_range: dict
    feature_group: str
    pipeline_execution_id: str
    run_id: str
    artifact_uri: str
    created_at: pd.Timestamp
    tags: dict  # quality_gate: both conditions with their numbers


class Registry(Protocol):
    def versions(self) -> pd.DataFrame:
        """Every version with its status and headline metric, newest first."""

    def get(self, version: int) -> ModelVersion: ...

    def latest(self, status: str | None = None) -> ModelVersion | None: ...

    def pending(self) -> ModelVersion:
        """The newest version awaiting approval; if there is none, a ValueError that says why and what to run."""
