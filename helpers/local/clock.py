"""The simulated clock the stream, the monitor and the retrain share (a JSON file), and atomic JSON writes."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path


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
