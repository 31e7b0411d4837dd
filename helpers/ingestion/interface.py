"""What notebooks 01, 02 and 05 and the CLI ask of the stream, whichever backend runs it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import pandas as pd


@dataclass(frozen=True)
class StreamStatus:
    """The stream's health at one moment. ``where`` says where it runs and where its logs are, in the backend's
    terms (a pid and a file locally; an application and a log group on AWS)."""

    state: str  # running, stopped, crashed, never started
    running: bool
    where: str
    source: str | None = None
    log_events: int = 0  # events appended to the log or stream, duplicates included
    windows_emitted: int = 0  # minutes closed and written to the feature store
    watermark: str | None = None  # event time up to which minutes are complete, ISO-8601 UTC
    detail: dict = field(default_factory=dict, repr=False)  # every figure the backend reports (``describe``)


@dataclass(frozen=True)
class DriftApplied:
    """A fee rush injected into the simulator, from ``drift_from`` (event time, ISO-8601 UTC) on."""

    drift_from: str
    fee_factor: float
    rate_factor: float


@dataclass(frozen=True)
class ClockSpeed:
    """The simulator's clock after a change of speed: simulated "now" and simulated seconds per wall second."""

    sim_now: str
    speed: float


class Stream(Protocol):
    def start(self, source: str = "simulator", **settings) -> StreamStatus:
        """Start the stream (a no-op if it runs); the first start of a backend's state saves its settings."""

    def ensure_running(self) -> StreamStatus:
        """Start or resume the stream if needed and wait until it has worked through its backlog."""

    def wait_until_caught_up(self, timeout_s: float = 900) -> StreamStatus: ...

    def status(self) -> StreamStatus: ...

    def describe(self) -> pd.DataFrame:
        """Every health figure with what it means: a two-column table."""

    def dead_letters(self, limit: int = 10) -> pd.DataFrame:
        """The newest events later than the allowed lateness: kept, not counted."""

    def set_speed(self, speed: float) -> ClockSpeed:
        """The simulator's simulated seconds per wall second, from now on."""

    def inject_drift(self, fee_factor: float = 3.0, rate_factor: float = 1.0) -> DriftApplied: ...

    def stop(self) -> StreamStatus: ...
