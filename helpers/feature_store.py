"""The local feature store: the twin of a SageMaker Feature Store feature group.

- Offline store: Parquet files partitioned by event time as SageMaker lays them
  out (``<group>/data/year=YYYY/month=MM/day=DD/hour=HH/<file>.parquet``), each
  written atomically (temporary file, fsync, rename), queried with DuckDB.
- Online store: the latest record per ``tx_minute`` in SQLite.

Revision rule: every record carries ``revision`` (0 when its minute first
closes, +1 for each late update). The highest revision of a minute wins, online
(the upsert refuses an older revision) and offline (readers keep the highest
revision per minute). On AWS the same order follows from ``event_time`` then
``api_invocation_time``, since revisions are written in order.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from helpers.clock import from_unix
from helpers.sqlite import connect

DEFAULT_FEATURE_GROUP = "btc-tx-per-minute"

# Feature name -> SageMaker feature type. The record identifier is tx_minute,
# the event-time feature is event_time (unix seconds of the window's end).
FEATURES = {
    "tx_minute": "String",
    "window_start": "Fractional",
    "event_time": "Fractional",
    "revision": "Integral",
    "tx_count": "Integral",
    "total_fee": "Integral",
    "avg_fee": "Fractional",
    "total_vsize": "Integral",
    "avg_fee_rate": "Fractional",
    "min_fee": "Integral",
    "max_fee": "Integral",
}
RECORD_IDENTIFIER = "tx_minute"
EVENT_TIME_FEATURE = "event_time"

_ARROW_TYPES = {"String": pa.string(), "Integral": pa.int64(), "Fractional": pa.float64()}
# Columns the SageMaker offline store adds to every row.
OFFLINE_SCHEMA = pa.schema(
    [pa.field(name, _ARROW_TYPES[kind]) for name, kind in FEATURES.items()]
    + [pa.field("write_time", pa.float64()), pa.field("is_deleted", pa.bool_())]
)

_ONLINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS online_records (
    feature_group TEXT NOT NULL,
    record_id     TEXT NOT NULL,
    revision      INTEGER NOT NULL,
    record        TEXT NOT NULL,
    write_time    REAL NOT NULL,
    PRIMARY KEY (feature_group, record_id)
);
"""


class FeatureStore:
    def __init__(self, root: Path, group: str = DEFAULT_FEATURE_GROUP):
        self.root = Path(root)
        self.group = group
        self.offline_dir = self.root / "offline" / group / "data"
        self.offline_dir.mkdir(parents=True, exist_ok=True)
        self._online = connect(self.root / "online.db")
        self._online.executescript(_ONLINE_SCHEMA)

    def close(self) -> None:
        self._online.close()

    def write(self, records: list[dict], batch_id: str) -> None:
        """Write records offline then online. Idempotent for the same ``batch_id``."""
        if not records:
            return
        write_time = time.time()
        self._write_offline(records, batch_id, write_time)
        self._write_online(records, write_time)

    def _write_offline(self, records: list[dict], batch_id: str, write_time: float) -> None:
        by_hour: dict[Path, list[dict]] = {}
        for record in records:
            by_hour.setdefault(self._partition(record[EVENT_TIME_FEATURE]), []).append(record)
        for partition, rows in by_hour.items():
            columns = {name: [row[name] for row in rows] for name in FEATURES}
            columns["write_time"] = [write_time] * len(rows)
            columns["is_deleted"] = [False] * len(rows)
            _write_parquet_atomic(pa.table(columns, schema=OFFLINE_SCHEMA), partition / f"part-{batch_id}.parquet")

    def _partition(self, event_time: float) -> Path:
        t = from_unix(event_time)
        return self.offline_dir / f"year={t:%Y}" / f"month={t:%m}" / f"day={t:%d}" / f"hour={t:%H}"

    def _write_online(self, records: list[dict], write_time: float) -> None:
        with self._online:
            self._online.executemany(
                "INSERT INTO online_records VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (feature_group, record_id) DO UPDATE SET"
                " revision = excluded.revision, record = excluded.record, write_time = excluded.write_time"
                " WHERE excluded.revision >= online_records.revision",
                [(self.group, r[RECORD_IDENTIFIER], r["revision"], json.dumps(r), write_time) for r in records],
            )

    def get_record(self, tx_minute: str) -> dict | None:
        """The online store's latest record for one minute, or None."""
        row = self._online.execute(
            "SELECT record FROM online_records WHERE feature_group = ? AND record_id = ?", (self.group, tx_minute)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def latest_online(self, n: int = 1) -> list[dict]:
        """The ``n`` most recent minutes in the online store, newest first."""
        rows = self._online.execute(
            "SELECT record FROM online_records WHERE feature_group = ? ORDER BY record_id DESC LIMIT ?",
            (self.group, n),
        )
        return [json.loads(r) for (r,) in rows]

    def offline_latest(self):
        """Every minute in the offline store, latest revision only, as a DataFrame sorted by minute."""
        files = str(self.offline_dir / "**" / "*.parquet")
        if not any(self.offline_dir.rglob("*.parquet")):
            return pa.Table.from_pylist([], schema=OFFLINE_SCHEMA).to_pandas()
        return duckdb.sql(
            f"SELECT * EXCLUDE (year, month, day, hour) FROM read_parquet('{files}', hive_partitioning = true)"
            " QUALIFY row_number() OVER (PARTITION BY tx_minute ORDER BY revision DESC, write_time DESC) = 1"
            " ORDER BY tx_minute"
        ).df()


def _write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Readers see the whole file or none of it: write aside, fsync, rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
