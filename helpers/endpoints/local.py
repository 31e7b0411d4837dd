"""The endpoints on this machine: one process each (``serving``), driven by ``deploy``."""
from __future__ import annotations

import pandas as pd

from helpers.core.policies import THRESHOLD_UPDATE_RATE, SmokeTest
from helpers.endpoints import deploy
from helpers.endpoints.interface import ENDPOINTS, Approval, EndpointDescription, Invocation
from helpers.local.config import Paths


class LocalEndpoints:
    names = ENDPOINTS

    def __init__(self, paths: Paths):
        self.paths = paths
        self.root = paths.root
        self._runtime = None

    def approve(self, version: int | None = None, by: str = "", reason: str = "",
                update_rate: float = THRESHOLD_UPDATE_RATE) -> Approval:
        return deploy.approve(self.root, version, by=by, reason=reason, update_rate=update_rate)

    def reject(self, version: int | None = None, by: str = "", reason: str = "") -> str:
        return deploy.reject(self.root, version, by=by, reason=reason)

    def promote(self, version: int | None = None, by: str = "", reason: str = "") -> EndpointDescription:
        return deploy.promote(self.root, version, by=by, reason=reason)

    def deploy(self, name: str, version: int, by: str = "", reason: str = "") -> EndpointDescription:
        return deploy.deploy(self.root, name, version, by=by, reason=reason)

    def rollback(self, name: str, by: str = "", reason: str = "") -> EndpointDescription:
        return deploy.rollback(self.root, name, by=by, reason=reason)

    def describe(self, name: str) -> EndpointDescription:
        return deploy.describe(self.root, name)

    def require_in_service(self) -> dict[str, EndpointDescription]:
        return deploy.require_in_service(self.root)

    def smoke_test(self, name: str = "staging") -> SmokeTest:
        return deploy.smoke_test(self.root, name)

    def invoke(self, name: str, request: dict) -> Invocation:
        return deploy.invoke(self.root, name, request, client=self.runtime_client())

    def runtime_client(self):
        if self._runtime is None:
            self._runtime = deploy.runtime_client(self.root)
        return self._runtime

    def history(self) -> pd.DataFrame:
        return deploy.DeploymentLog(self.paths).history()

    def stop(self) -> None:
        deploy.stop_endpoints(self.root)
