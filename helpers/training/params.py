"""The local parameter store: the twin of SSM Parameter Store.

Pipelines read thresholds from here *when a step runs*, never when the
pipeline is defined (the original system baked its threshold in at build time).
Every change is versioned and kept, with who made it and why.
"""
from __future__ import annotations

import time
from pathlib import Path

from helpers.local.sqlite import SQLiteFile
from helpers.training.interface import MODEL_BUILD_DEFAULTS, ParameterNotFound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS parameter_history (
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    value       TEXT NOT NULL,
    modified_at REAL NOT NULL,
    modified_by TEXT NOT NULL,
    reason      TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
"""


class ParameterStore(SQLiteFile):
    SCHEMA = _SCHEMA

    def __init__(self, path: Path):
        super().__init__(path)

    def get(self, name: str) -> str:
        row = self._conn.execute("SELECT value FROM parameter_history WHERE name = ? ORDER BY version DESC LIMIT 1",
                                 (name,)).fetchone()
        if row is None:
            raise ParameterNotFound(f"parameter {name!r} is not set: set it with ParameterStore.put({name!r}, value)"
                                    f" or `python -m helpers param set {name} VALUE`")
        return row[0]

    def get_float(self, name: str) -> float:
        value = self.get(name)
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"parameter {name!r} is {value!r}, not a number: set it to one") from None

    def put(self, name: str, value, by: str = "user", reason: str = "") -> int:
        """Set a new version of ``name``; returns the version number."""
        if not name.startswith("/"):
            raise ValueError(f"parameter name {name!r}: use a path, e.g. /rtmlops/model-build/wql-threshold")
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            version = self._conn.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM parameter_history WHERE name = ?",
                                         (name,)).fetchone()[0]
            self._conn.execute("INSERT INTO parameter_history VALUES (?, ?, ?, ?, ?, ?)",
                               (name, version, str(value), time.time(), by, reason))
        return version

    def put_if_absent(self, name: str, value, by: str = "user", reason: str = "initial value") -> str:
        """Set ``name`` only if it has no value yet; returns the value in force."""
        try:
            return self.get(name)
        except ParameterNotFound:
            self.put(name, value, by=by, reason=reason)
            return str(value)

    def history(self, name: str) -> list[dict]:
        cur = self._conn.execute("SELECT * FROM parameter_history WHERE name = ? ORDER BY version", (name,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur]

    def ensure_model_build_defaults(self) -> dict[str, float]:
        """Create the quality gate's parameters if absent (a fresh state directory); return their current values."""
        return {name: float(self.put_if_absent(name, value, by="defaults"))
                for name, value in MODEL_BUILD_DEFAULTS.items()}

