"""Where local state lives, and the defaults every component shares.

All local services keep their files under one state directory: ``$MLOPS_STATE_DIR``
if set, else ``.state/`` at the repository root. Delete it to start over.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # helpers/local/config.py -> the repository
# Every local background service, in the order a teardown stops them: the monitor first (it starts nothing new),
# the stream last (after its checkpoint).
SERVICES = ("monitor", "retrain", "endpoint-staging", "endpoint-prod", "ingest")
# What the services and stages write directly under the state directory: a reset deletes it all (it keeps logs/).
RESET = ("stream", "feature_store", "pipelines", "registry", "endpoints", "monitoring", "run", "params.db",
         "ingest.json", "clock.json", "drifts.json", "ingest-status.json")


def default_state_dir() -> Path:
    return Path(os.environ.get("MLOPS_STATE_DIR", REPO_ROOT / ".state")).resolve()


@dataclass(frozen=True)
class Paths:
    """Every file of the local twin, under one state directory."""

    root: Path

    @classmethod
    def at(cls, state_dir: str | Path | None = None) -> "Paths":
        root = Path(state_dir).resolve() if state_dir else default_state_dir()
        root.mkdir(parents=True, exist_ok=True)
        (root / "logs").mkdir(exist_ok=True)
        return cls(root)

    @property
    def event_log(self) -> Path:
        return self.root / "stream" / "events.db"

    @property
    def checkpoint(self) -> Path:
        return self.root / "stream" / "aggregator.db"

    @property
    def feature_store(self) -> Path:
        return self.root / "feature_store"

    @property
    def ingest_config(self) -> Path:
        return self.root / "ingest.json"

    @property
    def clock(self) -> Path:
        return self.root / "clock.json"

    @property
    def drifts(self) -> Path:
        return self.root / "drifts.json"

    def pid_file(self, service: str) -> Path:
        """The pid file of a background service (one of SERVICES), held by the service's own process."""
        if service not in SERVICES:
            raise ValueError(f"service {service!r}: use one of {SERVICES}")
        return self.root / "run" / f"{service}.pid"

    @property
    def ingest_status(self) -> Path:
        return self.root / "ingest-status.json"

    @property
    def ingest_log(self) -> Path:
        return self.root / "logs" / "ingest.log"

    @property
    def params(self) -> Path:
        return self.root / "params.db"

    @property
    def pipelines(self) -> Path:
        """Pipeline execution records (pipelines.db) and each execution's artifacts."""
        return self.root / "pipelines"

    @property
    def endpoints(self) -> Path:
        """Endpoint processes: ports (config.json), state files, deployment history, data capture."""
        return self.root / "endpoints"

    @property
    def monitoring(self) -> Path:
        """The hourly monitor: its forecasts ledger, metrics and alarms (the CloudWatch twin), retrains."""
        return self.root / "monitoring"

    @property
    def registry(self) -> Path:
        """The MLflow tracking and registry store (mlflow.db) and its artifacts."""
        return self.root / "registry"
