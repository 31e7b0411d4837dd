"""What notebook 05 and the CLI ask of the monitor, whichever backend runs it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pandas as pd


@dataclass(frozen=True)
class MonitorStatus:
    running: bool
    settings: dict  # the monitor's settings (forecast cadence, alarm M of N, the retrain's build settings)
    alarms: dict[str, str]  # stage -> OK, ALARM, INSUFFICIENT_DATA (or "not created yet")


class Monitor(Protocol):
    def start(self, **settings) -> MonitorStatus:
        """Start scoring every hour (a no-op if it runs); ``settings`` change what it runs with from now on.
        ``scoring_period_minutes``: an hour of event time locally; on AWS, where time runs at wall speed, 5 to 60
        minutes (60 divisible by it)."""

    def stop(self) -> None: ...

    def status(self) -> MonitorStatus: ...

    def run_now(self) -> list[dict]:
        """Score every hour that has matured since the last run, and evaluate the alarms, now."""

    def timeline(self) -> pd.DataFrame:
        """One row per (hour, stage): wQL, threshold, points, versions."""

    def alarm_history(self) -> pd.DataFrame: ...

    def retrains(self) -> pd.DataFrame:
        """Every retrain an alarm asked for: started or skipped (and why), its build, version and outcome."""

    def retrain_report(self) -> str: ...

    def loop_summary(self, first_version: int, drift_at: pd.Timestamp, stage: str = "prod") -> str: ...

    def wait_for_hours(self, hours: int = 1, stage: str = "prod", timeout_s: float = 300) -> pd.DataFrame: ...

    def wait_for_alarm(self, timeout_s: float = 300) -> pd.DataFrame: ...

    def wait_for_retrain(self, outcome: str = "Deployed", timeout_s: float = 600,
                         within_hours: float | None = None) -> pd.Series | None: ...

    def wait_for_recovery(self, after_version: int = 1, stage: str = "prod", hours: int = 2,
                          timeout_s: float = 600) -> pd.DataFrame: ...
