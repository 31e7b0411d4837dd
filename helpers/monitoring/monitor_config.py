"""The monitor's settings, and those of the retrain its alarms start: read by both helpers.monitoring.monitor and
helpers.monitoring.retrain, so neither imports the other's module for them."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from helpers.local.clock import write_json_atomic
from helpers.local.config import Paths


@dataclass
class MonitorConfig:
    """The monitor's settings; saved on its first start, like the stream's."""

    forecast_every_minutes: int = 10  # the application asks each endpoint for a forecast this often
    history_minutes: int = 1440  # of features sent with each request
    auto_approve: bool = False  # headless runs: a retrained model goes on through staging to production
    # A retrain learns from the recent past, where the regime that broke the model is, and holds out less of it
    # (2 hours of test windows, 1 of validation) so that the new regime reaches its training data sooner.
    retrain_training_days: float = 1.5
    retrain_test_windows: int = 4
    retrain_validation_windows: int = 2
    retrain_epochs: int = 2
    # 3 breaching hours of the last 5 (the original: 3 of 3). After calm hours it fires as soon as 3 of 3 would,
    # but one good hour among bad ones no longer flips it back to OK while a retrain is under way: in a CI run,
    # 3 of 3 went ALARM -> OK on a single hour at 0.163 against a threshold of 0.166, mid-retrain.
    evaluation_periods: int = 5
    datapoints_to_alarm: int = 3

    def __post_init__(self):
        if self.forecast_every_minutes < 1 or self.history_minutes < 60:
            raise ValueError("forecast_every_minutes must be >= 1 and history_minutes >= 60")

    @classmethod
    def load(cls, paths: Paths) -> "MonitorConfig":
        file = paths.monitoring / "config.json"
        return cls(**json.loads(file.read_text())) if file.exists() else cls()

    def save(self, paths: Paths) -> None:
        paths.monitoring.mkdir(parents=True, exist_ok=True)
        write_json_atomic(paths.monitoring / "config.json", asdict(self))
