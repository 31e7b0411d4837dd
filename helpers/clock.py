"""UTC time helpers and the simulated clock shared by the stream and the monitor.

Every timestamp in this project is UTC and timezone-aware. Unix seconds are
used on hot paths; they are converted with these helpers, never with local time.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

PINNED_NOW_ENV = "MLOPS_PINNED_NOW"


def pinned_now() -> float | None:
    """The simulated "now" pinned by $MLOPS_PINNED_NOW (ISO-8601 UTC), or None: runs that must come out the same at
    any hour (the tests, make demo) set it, and a learner who sets nothing sees the wall clock's market."""
    value = os.environ.get(PINNED_NOW_ENV)
    return as_unix(value, PINNED_NOW_ENV) if value else None


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def from_unix(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def minute_iso(unix_minute_start: float) -> str:
    """'2026-11-22T13:05:00Z': the record identifier of a one-minute window."""
    return from_unix(unix_minute_start).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class SimClock:
    """Event time that runs ``speed`` times faster than the wall clock.

    Anchored at (wall, sim): at wall time ``anchor_wall`` it read ``anchor_sim``.
    Saved in the state directory so that every process (stream, monitor,
    notebook) reads the same simulated time, and a restart carries on from it.
    """

    anchor_wall: float
    anchor_sim: float
    speed: float = 1.0

    @classmethod
    def starting_now(cls, sim_now: float | None = None, speed: float = 1.0) -> "SimClock":
        wall = time.time()
        return cls(anchor_wall=wall, anchor_sim=wall if sim_now is None else sim_now, speed=speed)

    def now(self) -> float:
        return self.anchor_sim + (time.time() - self.anchor_wall) * self.speed

    def wall_seconds(self, sim_seconds: float) -> float:
        """How long ``sim_seconds`` of event time take on the wall clock."""
        return sim_seconds / self.speed

    def save(self, path: Path) -> None:
        write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> "SimClock":
        return cls(**json.loads(Path(path).read_text()))

    def at_speed(self, speed: float) -> "SimClock":
        """The same simulated time from now on, running at ``speed``."""
        if not speed > 0:
            raise ValueError(f"speed={speed}: must be > 0 (simulated seconds per wall second)")
        return SimClock.starting_now(self.now(), speed)


class SharedClock:
    """The simulated clock in ``path``, re-read when the file changes: a speed change reaches every process."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._version: tuple | None = None
        self._clock = self._reload()

    def now(self) -> float:
        return self._reload().now()

    def wall_seconds(self, sim_seconds: float) -> float:
        return self._reload().wall_seconds(sim_seconds)

    @property
    def speed(self) -> float:
        return self._reload().speed

    def _reload(self) -> SimClock:
        stat = self.path.stat()
        version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if version != self._version:
            self._clock, self._version = SimClock.load(self.path), version
        return self._clock


def set_speed(path: Path, speed: float) -> SimClock:
    """Change how fast simulated time runs, from now on, for every process sharing ``path``."""
    clock = SimClock.load(path).at_speed(speed)
    clock.save(path)
    return clock


def write_json_atomic(path: Path, payload) -> None:
    """Write JSON so that a reader never sees half a file (write, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def as_unix(value, field: str) -> float:
    """A moment given as unix seconds, an aware datetime/Timestamp or an ISO-8601 string, as unix seconds.

    Raises ValueError naming ``field`` for a naive time or anything unreadable.
    """
    if isinstance(value, bool):
        raise ValueError(f"{field}={value!r}: give a UTC time (ISO-8601 with 'Z', an aware datetime or unix seconds)")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{field}={value!r}: not an ISO-8601 time; write e.g. '2026-11-22T13:05:00Z'") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{field}={value!r} has no time zone: add one, e.g. tzinfo=timezone.utc or a 'Z' suffix")
        return value.timestamp()
    raise ValueError(f"{field}={value!r}: give a UTC time (ISO-8601 with 'Z', an aware datetime or unix seconds)")


def first_now(now: float | str | None = None) -> float:
    """The simulated "now" a first start uses: ``now`` if given, else $MLOPS_PINNED_NOW, else the wall clock."""
    if now is not None:
        return as_unix(now, "now")
    pinned = pinned_now()
    return time.time() if pinned is None else pinned
