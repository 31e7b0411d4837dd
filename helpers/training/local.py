"""The model build on this machine: :mod:`helpers.training.model_build`'s pipeline, its records in SQLite."""
from __future__ import annotations

import pandas as pd

from helpers.core.preparation import BuildSettings
from helpers.local.config import Paths
from helpers.training import model_build
from helpers.training.interface import BuildReport
from helpers.training.pipeline import ExecutionStore


class LocalModelBuilds:
    def __init__(self, paths: Paths):
        self.paths = paths

    def run(self, settings: BuildSettings | None = None) -> BuildReport:
        return model_build.run(self.paths.root, settings)

    def report(self, execution_id: str) -> BuildReport:
        return model_build.report(self.paths, execution_id)

    def list(self, limit: int = 20) -> pd.DataFrame:
        store = ExecutionStore(self.paths.pipelines)
        try:
            return store.list("model-build", limit)
        finally:
            store.close()
