"""The offline store: Parquet files, a catalog of which are live, and compaction.

Files are laid out as SageMaker lays out its offline store in S3
(``<group>/data/year=YYYY/month=MM/day=DD/hour=HH/part-<batch>.parquet``) and
each is written atomically (temporary file, fsync, rename). A SQLite catalog
lists the live files, like a Glue/Iceberg table: readers query exactly the
files it lists, so compaction can swap many small files for one in a single
transaction, and no reader ever sees a row twice or misses one. Replaced files
are deleted only after a retention period, so a read in flight still finds them.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from helpers.core.feature_definition import FeatureGroupDefinition
from helpers.core.times import from_unix

CATALOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS offline_files (
    feature_group  TEXT NOT NULL,
    path           TEXT PRIMARY KEY,      -- relative to the store's root
    batch_id       TEXT NOT NULL,         -- the write (or compaction) that made it
    day            TEXT NOT NULL,         -- YYYY-MM-DD of its event times
    rows           INTEGER NOT NULL,
    max_event_time REAL,
    added_at       REAL NOT NULL,
    removed_at     REAL                   -- set when compaction replaced it
);
CREATE INDEX IF NOT EXISTS offline_files_live ON offline_files (feature_group, removed_at, day);
CREATE INDEX IF NOT EXISTS offline_files_batch ON offline_files (feature_group, batch_id);
"""
RETENTION_S = 120.0  # how long a replaced file stays on disk for reads already in flight


class OfflineStore:
    def __init__(self, conn, root: Path, definition: FeatureGroupDefinition):
        self._conn = conn
        self.root = Path(root)
        self.definition = definition
        self.data_dir = self.root / "offline" / definition.name / "data"

    def write(self, records: list[dict], batch_id: str, write_time: float) -> bool:
        """Write validated records as one batch; False if this batch was written before (a retry)."""
        name = self.definition.name
        if self._conn.execute("SELECT 1 FROM offline_files WHERE feature_group = ? AND batch_id = ?",
                              (name, batch_id)).fetchone():
            return False
        event_time = self.definition.event_time_feature
        by_hour: dict[tuple[str, str], list[dict]] = {}
        for record in records:
            by_hour.setdefault(_partition(record[event_time]), []).append(record)
        entries = []
        for (partition, day), rows in by_hour.items():
            path = self.data_dir / partition / f"part-{batch_id}.parquet"
            _write_atomic(self._table(rows, write_time), path)
            entries.append((name, self._relative(path), batch_id, day, len(rows), max(r[event_time] for r in rows),
                            time.time()))
        with self._conn:
            self._conn.executemany("INSERT OR IGNORE INTO offline_files (feature_group, path, batch_id, day, rows,"
                                   " max_event_time, added_at) VALUES (?, ?, ?, ?, ?, ?, ?)", entries)
        return True

    def _table(self, rows: list[dict], write_time: float) -> pa.Table:
        columns = {name: [row[name] for row in rows] for name in self.definition.types}
        columns["write_time"] = [write_time] * len(rows)
        # One PutRecord call per row on AWS: distinct, increasing invocation times keep "latest wins" exact.
        columns["api_invocation_time"] = [write_time + i * 1e-6 for i in range(len(rows))]
        columns["is_deleted"] = [False] * len(rows)
        return pa.table(columns, schema=self.definition.arrow_schema())

    def live_files(self, min_event_time: float | None = None) -> list[str]:
        """Absolute paths of the live files, skipping those wholly older than ``min_event_time``."""
        rows = self._conn.execute(
            "SELECT path FROM offline_files WHERE feature_group = ? AND removed_at IS NULL"
            " AND (? IS NULL OR max_event_time >= ?) ORDER BY path",
            (self.definition.name, min_event_time, min_event_time),
        )
        return [str(self.root / path) for (path,) in rows]

    def stats(self) -> dict:
        files, rows = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(rows), 0) FROM offline_files WHERE feature_group = ? AND removed_at IS NULL",
            (self.definition.name,)).fetchone()
        return {"files": files, "rows": rows}

    def compact(self) -> dict:
        """Merge each day's live files into one (the hourly Glue job of the original system).

        Rows are copied, never changed or dropped; the swap is one catalog transaction,
        which gives up if another compaction got there first.
        """
        before = self.stats()
        days = [day for (day,) in self._conn.execute(
            "SELECT day FROM offline_files WHERE feature_group = ? AND removed_at IS NULL"
            " GROUP BY day HAVING COUNT(*) > 1 ORDER BY day", (self.definition.name,))]
        merged = sum(self._compact_day(day) for day in days)
        return {"days_compacted": merged, "files_before": before["files"], "files_after": self.stats()["files"],
                "rows": self.stats()["rows"]}

    def _compact_day(self, day: str) -> bool:
        inputs = self._conn.execute(
            "SELECT path, rows FROM offline_files WHERE feature_group = ? AND removed_at IS NULL AND day = ?"
            " ORDER BY path", (self.definition.name, day)).fetchall()
        table = pa.concat_tables([pq.read_table(self.root / path, schema=self.definition.arrow_schema())
                                  for path, _ in inputs])
        if table.num_rows != sum(rows for _, rows in inputs):
            raise RuntimeError(f"compaction of {day}: read {table.num_rows} rows, the catalog lists more; aborted")
        table = table.sort_by([(self.definition.event_time_feature, "ascending")])
        digest = hashlib.sha1("".join(path for path, _ in inputs).encode()).hexdigest()[:16]
        year, month, dom = day.split("-")
        path = self.data_dir / f"year={year}" / f"month={month}" / f"day={dom}" / f"compacted-{digest}.parquet"
        _write_atomic(table, path)
        now = time.time()
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            marks = ",".join("?" * len(inputs))
            still_live = self._conn.execute(
                f"SELECT COUNT(*) FROM offline_files WHERE removed_at IS NULL AND path IN ({marks})",
                [p for p, _ in inputs]).fetchone()[0]
            if still_live != len(inputs):
                self._conn.execute("ROLLBACK")
                path.unlink(missing_ok=True)
                return False
            self._conn.executemany("UPDATE offline_files SET removed_at = ? WHERE path = ?",
                                   [(now, p) for p, _ in inputs])
            self._conn.execute(
                "INSERT OR REPLACE INTO offline_files (feature_group, path, batch_id, day, rows, max_event_time,"
                " added_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self.definition.name, self._relative(path), f"compaction-{digest}", day, table.num_rows,
                 pc.max(table[self.definition.event_time_feature]).as_py(), now))
        return True

    def vacuum(self, retention_s: float = RETENTION_S) -> int:
        """Delete replaced files past their retention, and leftovers of crashed writes; returns files deleted."""
        cutoff = time.time() - retention_s
        known = {self.root / p for (p,) in self._conn.execute(
            "SELECT path FROM offline_files WHERE feature_group = ? AND removed_at IS NULL", (self.definition.name,))}
        deleted = 0
        for path in list(self.data_dir.rglob("*")):
            if path.is_file() and path not in known and path.stat().st_mtime < cutoff:
                replaced = self._conn.execute("SELECT removed_at FROM offline_files WHERE path = ?",
                                              (self._relative(path),)).fetchone()
                if replaced is None or replaced[0] < cutoff:
                    path.unlink()
                    deleted += 1
        for directory in sorted((d for d in self.data_dir.rglob("*") if d.is_dir()), reverse=True):
            if not any(directory.iterdir()):
                directory.rmdir()
        return deleted

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def _partition(event_time: float) -> tuple[str, str]:
    """SageMaker's hour partition of an event time, and its day."""
    t = from_unix(event_time)
    return f"year={t:%Y}/month={t:%m}/day={t:%d}/hour={t:%H}", f"{t:%Y-%m-%d}"


def _write_atomic(table: pa.Table, path: Path) -> None:
    """Readers see the whole file or none of it: write aside, fsync, rename into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    for attempt in range(3):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            pq.write_table(table, tmp)
            break
        except FileNotFoundError:  # a concurrent vacuum removed the directory while it was still empty
            if attempt == 2:
                raise
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
