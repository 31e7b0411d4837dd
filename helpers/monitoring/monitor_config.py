"""The monitor's settings, and those of the retrain its alarms start: read by both helpers.monitoring.monitor and
helpers.monitoring.retrain, so neither imports the other's module for them. The fields are
:class:`helpers.monitoring.settings.MonitorSettings` (pure, shared with the AWS twin); this adds where they are kept
on this machine."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from helpers.local.clock import write_json_atomic
from helpers.local.config import Paths
from helpers.monitoring.settings import MonitorSettings


@dataclass
class MonitorConfig(MonitorSettings):
    """The monitor's settings; saved on its first start, like the stream's."""

    @classmethod
    def load(cls, paths: Paths) -> "MonitorConfig":
        file = paths.monitoring / "config.json"
        return cls(**json.loads(file.read_text())) if file.exists() else cls()

    def save(self, paths: Paths) -> None:
        paths.monitoring.mkdir(parents=True, exist_ok=True)
        write_json_atomic(paths.monitoring / "config.json", asdict(self))
