"""A benchmark record, the machine it ran on, and the results file."""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from helpers.core.times import utc_now

RESULTS = Path(__file__).resolve().parent / "results.json"


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine()}


@dataclass
class Record:
    name: str
    value: float
    unit: str
    target: str  # e.g. ">= 500000" or "<= 1.0"
    details: dict = field(default_factory=dict)
    machine: dict = field(default_factory=machine)
    measured_at: str = field(default_factory=lambda: utc_now().isoformat())
    error: str | None = None  # why the benchmark could not measure (then value is NaN)

    @classmethod
    def failure(cls, name: str, error: str) -> "Record":
        return cls(f"{name}.FAILED", float("nan"), "", "n/a", error=error)

    @property
    def meets_target(self) -> bool:
        if self.error is not None:
            return False
        if self.target == "info":  # a figure to read, such as a ceiling, with no target of its own
            return True
        op, bound = self.target.split()
        return self.value >= float(bound) if op == ">=" else self.value <= float(bound)


def timed(action, repeat: int, warm_up: bool = False) -> list[float]:
    """Wall seconds of ``repeat`` calls of ``action`` (after one untimed call if ``warm_up``)."""
    if warm_up:
        action()
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - started)
    return seconds


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


def save(records: list[Record], path: Path = RESULTS) -> None:
    """Merge into the results file: the benchmarks that ran replace their own earlier records (a failure too),
    the others' records stay."""
    existing = json.loads(path.read_text()) if path.exists() else []
    ran = {r.name.split(".")[0] for r in records}
    merged = [r for r in existing if r["name"].split(".")[0] not in ran]
    merged += [{**asdict(r), "value": None if r.error else r.value, "meets_target": r.meets_target} for r in records]
    path.write_text(json.dumps(sorted(merged, key=lambda r: r["name"]), indent=2) + "\n")


def table(records: list[Record]) -> str:
    rows = [("benchmark", "value", "unit", "target", "met")]
    rows += [(r.name, f"{r.value:,.4g}", r.unit, r.target, "yes" if r.meets_target else "NO") for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return "\n".join(lines + [f"{r.name}: {r.error}" for r in records if r.error])
