"""The monitor on this machine: :mod:`helpers.monitoring.monitor` in a background process, retrains in their own."""
from __future__ import annotations

import pandas as pd

from helpers.local.config import Paths
from helpers.monitoring import monitor
from helpers.monitoring.interface import MonitorStatus


class LocalMonitor:
    def __init__(self, paths: Paths):
        self.root = paths.root

    def start(self, **settings) -> MonitorStatus:
        """``scoring_period_minutes``: here always an hour of event time (speed the simulated clock up instead);
        the AWS twin, on the wall clock, takes shorter periods."""
        scoring_period_minutes = settings.pop("scoring_period_minutes", 60)
        if scoring_period_minutes != 60:
            raise ValueError(f"scoring_period_minutes={scoring_period_minutes}: the local monitor scores hours of "
                             "event time; to see them sooner, speed up the simulated clock (ws.stream.set_speed)")
        return _typed(monitor.start(self.root, **settings))

    def stop(self) -> None:
        monitor.stop(self.root)

    def status(self) -> MonitorStatus:
        return _typed(monitor.status(self.root))

    def run_now(self) -> list[dict]:
        return monitor.run_now(self.root)

    def timeline(self) -> pd.DataFrame:
        return monitor.timeline(self.root)

    def alarm_history(self) -> pd.DataFrame:
        return monitor.alarm_history(self.root)

    def retrains(self) -> pd.DataFrame:
        return monitor.retrains(self.root)

    def retrain_report(self) -> str:
        return monitor.retrain_report(self.root)

    def loop_summary(self, first_version: int, drift_at: pd.Timestamp, stage: str = "prod") -> str:
        return monitor.loop_summary(self.root, first_version, drift_at, stage)

    def wait_for_hours(self, hours: int = 1, stage: str = "prod", timeout_s: float = 300) -> pd.DataFrame:
        return monitor.wait_for_hours(self.root, hours, stage, timeout_s)

    def wait_for_alarm(self, timeout_s: float = 300) -> pd.DataFrame:
        return monitor.wait_for_alarm(self.root, timeout_s)

    def wait_for_retrain(self, outcome: str = "Deployed", timeout_s: float = 600,
                         within_hours: float | None = None) -> pd.Series | None:
        return monitor.wait_for_retrain(self.root, outcome, timeout_s, within_hours)

    def wait_for_recovery(self, after_version: int = 1, stage: str = "prod", hours: int = 2,
                          timeout_s: float = 600) -> pd.DataFrame:
        return monitor.wait_for_recovery(self.root, after_version, stage, hours, timeout_s)


def _typed(status: dict) -> MonitorStatus:
    return MonitorStatus(status["running"], status["config"],
                         {stage: alarm["StateValue"] for stage, alarm in status["alarms"].items()})
