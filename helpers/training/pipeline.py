"""A local pipeline runner with execution records: the twin of SageMaker Pipelines.

A pipeline is a list of named steps. Each run is an *execution* with an id;
every step's status, timing, log and outputs are recorded in SQLite as they
happen, so they can be listed from a notebook or with ``python -m helpers runs``
(users of the original system found execution ids hard to find). Statuses use
SageMaker's words: Executing, Succeeded, Failed; a failed quality gate ends an
execution as FailedQualityGate (on AWS: a Fail step with that reason).
"""
from __future__ import annotations

import json
import logging
import secrets
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from helpers.core.times import from_unix
from helpers.local.sqlite import SQLiteFile

log = logging.getLogger("helpers.training.pipeline")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    execution_id   TEXT PRIMARY KEY,
    pipeline       TEXT NOT NULL,
    status         TEXT NOT NULL,
    started_at     REAL NOT NULL,
    ended_at       REAL,
    parameters     TEXT NOT NULL,
    failure_reason TEXT,
    outputs        TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS steps (
    execution_id TEXT NOT NULL,
    position     INTEGER NOT NULL,
    name         TEXT NOT NULL,
    status       TEXT NOT NULL,
    started_at   REAL,
    ended_at     REAL,
    log          TEXT NOT NULL DEFAULT '',
    outputs      TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (execution_id, position)
);
"""


class QualityGateFailed(Exception):
    """Raised by a gate step: the execution ends FailedQualityGate and the rest is skipped.

    ``outputs`` are recorded as the step's outputs, so a rejection keeps its numbers."""

    def __init__(self, message: str, outputs: dict | None = None):
        super().__init__(message)
        self.outputs = outputs or {}


@dataclass
class Step:
    name: str
    run: Callable[[dict], dict | None]  # reads and adds to the shared context; returns outputs to record
    description: str = ""


@dataclass
class Execution:
    execution_id: str
    pipeline: str
    status: str
    started_at: pd.Timestamp
    ended_at: pd.Timestamp | None
    parameters: dict
    failure_reason: str | None
    outputs: dict
    steps: pd.DataFrame = field(repr=False)

    @property
    def succeeded(self) -> bool:
        return self.status == "Succeeded"


class ExecutionStore(SQLiteFile):
    SCHEMA = _SCHEMA

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        super().__init__(self.directory / "pipelines.db")

    def start(self, pipeline: str, steps: list[Step], parameters: dict) -> str:
        execution_id = f"{pipeline}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(2)}"
        with self._conn:
            self._conn.execute("INSERT INTO executions (execution_id, pipeline, status, started_at, parameters)"
                               " VALUES (?, ?, 'Executing', ?, ?)",
                               (execution_id, pipeline, time.time(), json.dumps(parameters, default=str)))
            self._conn.executemany("INSERT INTO steps (execution_id, position, name, status) VALUES (?, ?, ?, ?)",
                                   [(execution_id, i, s.name, "NotStarted") for i, s in enumerate(steps)])
        return execution_id

    def update_step(self, execution_id: str, position: int, **fields) -> None:
        fields = {k: json.dumps(v, default=str) if k == "outputs" else v for k, v in fields.items()}
        assignments = ", ".join(f"{k} = ?" for k in fields)
        self._conn.execute(f"UPDATE steps SET {assignments} WHERE execution_id = ? AND position = ?",
                           [*fields.values(), execution_id, position])

    def finish(self, execution_id: str, status: str, failure_reason: str | None, outputs: dict) -> None:
        self._conn.execute("UPDATE executions SET status = ?, ended_at = ?, failure_reason = ?, outputs = ?"
                           " WHERE execution_id = ?",
                           (status, time.time(), failure_reason, json.dumps(outputs, default=str), execution_id))

    def get(self, execution_id: str) -> Execution:
        row = self._conn.execute("SELECT * FROM executions WHERE execution_id = ?", (execution_id,)).fetchone()
        if row is None:
            known = self.list(limit=5)["execution_id"].tolist()
            raise KeyError(f"no pipeline execution {execution_id!r}; the latest are {known} (python -m helpers runs)")
        _, pipeline, status, started, ended, parameters, reason, outputs = row
        steps = pd.read_sql("SELECT name, status, started_at, ended_at, outputs, log FROM steps"
                            " WHERE execution_id = ? ORDER BY position", self._conn, params=(execution_id,))
        steps["seconds"] = steps["ended_at"] - steps["started_at"]
        for column in ("started_at", "ended_at"):
            steps[column] = pd.to_datetime(steps[column], unit="s", utc=True)
        return Execution(execution_id, pipeline, status, pd.Timestamp(from_unix(started)),
                         pd.Timestamp(from_unix(ended)) if ended else None, json.loads(parameters), reason,
                         json.loads(outputs), steps)

    def list(self, pipeline: str | None = None, limit: int = 20) -> pd.DataFrame:
        """The latest executions, newest first."""
        frame = pd.read_sql("SELECT execution_id, pipeline, status, started_at, ended_at, failure_reason"
                            " FROM executions WHERE (? IS NULL OR pipeline = ?) ORDER BY started_at DESC LIMIT ?",
                            self._conn, params=(pipeline, pipeline, limit))
        frame["seconds"] = frame["ended_at"] - frame["started_at"]
        for column in ("started_at", "ended_at"):
            frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
        return frame

    def artifacts(self, execution_id: str) -> Path:
        """A directory for the execution's files (the model, forecasts)."""
        path = self.directory / execution_id
        path.mkdir(parents=True, exist_ok=True)
        return path


class Pipeline:
    def __init__(self, name: str, steps: list[Step]):
        self.name = name
        self.steps = steps

    def run(self, store: ExecutionStore, parameters: dict, context: dict | None = None) -> Execution:
        """Run every step in order, recording each; a failing step ends the execution, never the caller."""
        execution_id = store.start(self.name, self.steps, parameters)
        status, reason, outputs = "Succeeded", None, {}
        context = {**(context or {}), "parameters": parameters, "execution_id": execution_id,
                   "artifacts": store.artifacts(execution_id), "step_outputs": outputs}
        log.info("pipeline %s: execution %s started", self.name, execution_id)
        for position, step in enumerate(self.steps):
            step_status, step_outputs, step_log = self._run_step(step, context, store, execution_id, position)
            outputs.update(step_outputs)
            if step_status != "Succeeded":
                status = "FailedQualityGate" if step_status == "FailedQualityGate" else "Failed"
                reason = f"{step.name}: {step_log.strip().splitlines()[-1]}"
                for later in range(position + 1, len(self.steps)):
                    store.update_step(execution_id, later, status="Skipped")
                break
        store.finish(execution_id, status, reason, outputs)
        log.info("pipeline %s: execution %s %s", self.name, execution_id, status)
        execution = store.get(execution_id)
        return execution

    def _run_step(self, step: Step, context: dict, store: ExecutionStore, execution_id: str, position: int):
        store.update_step(execution_id, position, status="Executing", started_at=time.time())
        capture, helpers_log = _LogCapture(), logging.getLogger("helpers")
        level = helpers_log.level
        helpers_log.addHandler(capture)
        helpers_log.setLevel(min(level or logging.INFO, logging.INFO))  # a step's INFO lines belong in its record
        try:
            outputs, status = step.run(context) or {}, "Succeeded"
        except QualityGateFailed as gate:
            outputs, status = gate.outputs, "FailedQualityGate"
            capture.lines.append(str(gate))
        except Exception as error:  # a step's failure is recorded, never raised out of the pipeline
            outputs, status = {}, "Failed"
            capture.lines.append("".join(traceback.format_exception(error)).rstrip())
            capture.lines.append(f"{type(error).__name__}: {error}")
        finally:
            helpers_log.removeHandler(capture)
            helpers_log.setLevel(level)
        store.update_step(execution_id, position, status=status, ended_at=time.time(), outputs=outputs,
                          log="\n".join(capture.lines))
        return status, outputs, "\n".join(capture.lines)


class _LogCapture(logging.Handler):
    """Collects a step's log lines for its execution record."""

    def __init__(self):
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{time.strftime('%H:%M:%S', time.gmtime(record.created))}Z {record.getMessage()}")
