"""What notebook 03, the retrain and the CLI ask of the parameters and the model build, whichever backend runs it.

A build's report is read back from what the execution left behind (its step records and its artifacts:
``evaluation.json``, ``test_forecasts.npz``), never from the memory of the process that ran it: a SageMaker
Pipeline execution has only those.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from helpers.core.gate import GateDecision
from helpers.core.preparation import BuildSettings

# The parameters' names (on AWS each lives under /<prefix>/ instead of /rtmlops/: helpers.training.ssm).
WQL_THRESHOLD = "/rtmlops/model-build/wql-threshold"  # the quality gate's bar: mean wQL must not exceed it
CURRENT_MODEL_WQL = "/rtmlops/model/current-wql"  # the mean wQL of the model in production
BASELINE_MARGIN = "/rtmlops/model-build/baseline-margin"  # how much worse than the best naive forecast is tolerated
# What a new state directory starts with (on AWS: the model-build stack's parameters). The threshold is the
# original system's; the margin is measured (helpers.core.gate, python -m bench train).
MODEL_BUILD_DEFAULTS = {WQL_THRESHOLD: 0.24, BASELINE_MARGIN: 0.10}


class ParameterNotFound(KeyError):
    def __str__(self) -> str:
        return self.args[0]


# What :meth:`BuildReport.comparison` shows, in this order.
COMPARISON_COLUMNS = ["mean_wQuantileLoss", "wQuantileLoss[0.1]", "wQuantileLoss[0.5]", "wQuantileLoss[0.9]", "RMSE",
                      "coverage[0.1-0.9]"]


@dataclass
class BuildReport:
    execution_id: str
    status: str  # Succeeded, FailedQualityGate, Failed
    failure_reason: str | None
    parameters: dict  # the settings it ran with: enough to rebuild the same model
    outputs: dict  # every step's recorded outputs (model_version once registered)
    steps: pd.DataFrame = field(repr=False)  # name, status, seconds, log, outputs
    gate: GateDecision | None = None  # None: it ended before the quality gate ran
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)  # forecaster -> metrics
    target: pd.Series | None = field(default=None, repr=False)  # the series it trained and tested on
    test_origins: list[int] = field(default_factory=list, repr=False)  # positions in ``target``
    actuals: np.ndarray | None = field(default=None, repr=False)  # (windows, horizon): what really happened
    forecasts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)  # forecaster -> q -> arr

    @property
    def succeeded(self) -> bool:
        return self.status == "Succeeded"

    @property
    def model_version(self) -> int | None:
        return self.outputs.get("model_version")

    def gate_report(self) -> str:
        """What the quality gate decided, with its numbers, and after a rejection what to do."""
        if self.gate is None:
            return f"execution {self.execution_id} ended {self.status} before the quality gate ran"
        outcome = (f"registered as version {self.model_version}, PendingManualApproval: approve it in notebook 04"
                   if self.gate.passed else "nothing was registered. " + self.gate.advice)
        return f"{self.gate.reason}\n\n{outcome}"

    def comparison(self) -> pd.DataFrame:
        """DeepAR beside the baselines on the same test windows, best first."""
        if not self.evaluation:
            raise ValueError(f"execution {self.execution_id} ended {self.status} before it evaluated anything")
        table = pd.DataFrame(self.evaluation).T
        return table[COMPARISON_COLUMNS].astype(float).sort_values("mean_wQuantileLoss")


class Parameters(Protocol):
    """Named parameters with a history (SSM Parameter Store on AWS)."""

    def get(self, name: str) -> str: ...

    def get_float(self, name: str) -> float: ...

    def put(self, name: str, value, by: str = "user", reason: str = "") -> int: ...

    def history(self, name: str) -> list[dict]: ...

    def ensure_model_build_defaults(self) -> dict[str, float]:
        """The quality gate's parameters, created with their defaults if absent, else kept."""


class ModelBuilds(Protocol):
    def run(self, settings: BuildSettings | None = None) -> BuildReport:
        """Run the model build pipeline on the latest features; a failing step ends the build, never the caller."""

    def report(self, execution_id: str) -> BuildReport: ...

    def list(self, limit: int = 20) -> pd.DataFrame:
        """The latest executions, newest first."""
