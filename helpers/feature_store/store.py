"""The local feature store: the twin of SageMaker Feature Store, online and offline.

- :class:`FeatureStore` holds feature groups (create, describe, list), like the SageMaker client.
- :class:`FeatureGroup` is one group: ``put_record``/``get_record`` on the online
  store (SQLite, latest record per id), and on the offline store (Parquet) SQL
  through DuckDB under the table name Athena users would see, as-of reads, and
  training datasets on a complete time grid.

Latest wins, one rule everywhere: per record id, the highest event time, then
the latest write (SageMaker's rule; ``api_invocation_time`` offline). The
stream gives each revision of a minute a later event time, so the latest
revision wins online and offline.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import duckdb
import pandas as pd

from helpers.core.feature_definition import FeatureGroupDefinition, FeatureStoreError
from helpers.core.times import as_unix, from_unix
from helpers.feature_store.offline import CATALOG_SCHEMA, OfflineStore
from helpers.feature_store.queries import FeatureGroupQueries
from helpers.local.sqlite import SQLiteFile

SCHEMA = CATALOG_SCHEMA + """
CREATE TABLE IF NOT EXISTS feature_groups (
    name       TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS online_records (
    feature_group TEXT NOT NULL,
    record_id     TEXT NOT NULL,
    event_time    REAL NOT NULL,
    record        TEXT NOT NULL,
    write_time    REAL NOT NULL,
    PRIMARY KEY (feature_group, record_id)
);
CREATE INDEX IF NOT EXISTS online_by_event_time ON online_records (feature_group, event_time);
"""


class FeatureStore(SQLiteFile):
    """All feature groups under one local directory (``store.db`` + ``offline/``)."""

    SCHEMA = SCHEMA

    def __init__(self, root: Path):
        self.root = Path(root)
        super().__init__(self.root / "store.db")

    def create_feature_group(self, definition: FeatureGroupDefinition) -> "FeatureGroup":
        """Create the group, or open it if it exists with the same definition."""
        row = self._conn.execute("SELECT definition FROM feature_groups WHERE name = ?", (definition.name,)).fetchone()
        if row is None:
            self._conn.execute("INSERT OR IGNORE INTO feature_groups VALUES (?, ?, ?)",
                               (definition.name, json.dumps(definition.to_dict()), time.time()))
        elif FeatureGroupDefinition.from_dict(json.loads(row[0])) != definition:
            raise FeatureStoreError(f"feature group {definition.name!r} exists with another definition: "
                                    "give the new one another name, or delete the store to start over")
        return self.feature_group(definition.name)

    def feature_group(self, name: str) -> "FeatureGroup":
        row = self._conn.execute("SELECT definition, created_at FROM feature_groups WHERE name = ?",
                                 (name,)).fetchone()
        if row is None:
            raise FeatureStoreError(f"unknown feature group {name!r}: this store has {self.list_feature_groups()}; "
                                    "create it with create_feature_group(definition)")
        return FeatureGroup(self, FeatureGroupDefinition.from_dict(json.loads(row[0])), created_at=row[1])

    def list_feature_groups(self) -> list[str]:
        return [name for (name,) in self._conn.execute("SELECT name FROM feature_groups ORDER BY name")]

    def describe_feature_group(self, name: str) -> dict:
        return self.feature_group(name).describe()


class FeatureGroup(FeatureGroupQueries):
    def __init__(self, store: FeatureStore, definition: FeatureGroupDefinition, created_at: float):
        self.store = store
        self.definition = definition
        self.name = definition.name
        self.created_at = created_at
        self._conn = store._conn
        self.offline = OfflineStore(self._conn, store.root, definition)
        self._duckdb = duckdb.connect()

    def close(self) -> None:
        self._duckdb.close()
        self.store.close()

    @property
    def table_name(self) -> str:
        """The offline table's name, as the Glue Data Catalog (and so Athena) names it."""
        return f"{self.definition.athena_table_stem}_{int(self.created_at)}"

    def describe(self) -> dict:
        """DescribeFeatureGroup's answer, with local paths where AWS has S3 URIs."""
        d = self.definition
        return {
            "FeatureGroupName": d.name,
            "FeatureGroupArn": f"arn:aws:sagemaker:local:000000000000:feature-group/{d.name}",
            "RecordIdentifierFeatureName": d.record_identifier,
            "EventTimeFeatureName": d.event_time_feature,
            "FeatureDefinitions": [{"FeatureName": f.name, "FeatureType": f.type} for f in d.features],
            "CreationTime": from_unix(self.created_at),
            "OnlineStoreConfig": {"EnableOnlineStore": True},
            "OfflineStoreConfig": {
                "S3StorageConfig": {"S3Uri": self.offline.data_dir.parent.as_uri(),
                                    "ResolvedOutputS3Uri": self.offline.data_dir.as_uri()},
                "DataCatalogConfig": {"TableName": self.table_name, "Catalog": "AwsDataCatalog",
                                      "Database": "sagemaker_featurestore"},
            },
            "FeatureGroupStatus": "Created",
            "OfflineStoreStatus": {"Status": "Active"},
            "Description": d.description,
            "LocalOfflineStore": self.offline.stats(),
        }

    # ------------------------------------------------------------ writes

    def put_record(self, record: dict) -> None:
        """Write one record online and offline (like PutRecord), after checking it against the definition."""
        self.put_records([record], batch_id=f"put-{uuid.uuid4().hex}")

    def put_records(self, records: list[dict], batch_id: str) -> bool:
        """Write a batch. Idempotent per ``batch_id``: a retried batch is not written twice."""
        checked = [self.definition.validate_record(r) for r in records]
        if not checked:
            return False
        write_time = time.time()
        written = self.offline.write(checked, batch_id, write_time)
        ident, event_time = self.definition.record_identifier, self.definition.event_time_feature
        with self._conn:
            self._conn.executemany(
                "INSERT INTO online_records VALUES (?, ?, ?, ?, ?) ON CONFLICT (feature_group, record_id) DO UPDATE"
                " SET event_time = excluded.event_time, record = excluded.record, write_time = excluded.write_time"
                " WHERE excluded.event_time >= online_records.event_time",
                [(self.name, r[ident], as_unix(r[event_time], "event_time"), json.dumps(r), write_time)
                 for r in checked])
        return written

    # ------------------------------------------------------------ online reads

    def get_record(self, record_id: str, feature_names: list[str] | None = None) -> dict | None:
        """The online store's latest record for ``record_id`` (None if there is none), like GetRecord."""
        if not isinstance(record_id, str):
            raise FeatureStoreError(f"record_id={record_id!r}: the record identifier "
                                    f"{self.definition.record_identifier!r} is a string")
        names = self.definition.check_feature_names(feature_names) if feature_names is not None else None
        row = self._conn.execute("SELECT record FROM online_records WHERE feature_group = ? AND record_id = ?",
                                 (self.name, record_id)).fetchone()
        if row is None:
            return None
        record = json.loads(row[0])
        return {n: record[n] for n in names} if names is not None else record

    def latest_online(self, n: int = 1) -> list[dict]:
        """The ``n`` records with the latest event times, newest first."""
        rows = self._conn.execute("SELECT record FROM online_records WHERE feature_group = ?"
                                  " ORDER BY event_time DESC LIMIT ?", (self.name, n))
        return [json.loads(r) for (r,) in rows]

    # ------------------------------------------------------------ offline reads

    def sql(self, query: str, params: list | None = None) -> pd.DataFrame:
        """Run SQL on the offline store with DuckDB, where Athena would run it.

        The table is :attr:`table_name` and holds every row written, revisions
        included, as the SageMaker offline store does.
        """
        self._register_table(self.offline.live_files())
        try:
            return self._duckdb.execute(query, params or []).df()
        except duckdb.Error as error:
            raise FeatureStoreError(f"SQL failed: {error}. The offline table is {self.table_name!r} with columns "
                                    f"{self.definition.arrow_schema().names}") from None

    def _register_table(self, files: list[str]) -> None:
        if files:
            listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            source = f"read_parquet([{listed}])"
        else:
            self._duckdb.register("_empty_offline", self.definition.arrow_schema().empty_table())
            source = "_empty_offline"
        self._duckdb.execute(f'CREATE OR REPLACE TEMP VIEW "{self.table_name}" AS SELECT * FROM {source}')

    def offline_stats(self) -> dict:
        """The offline store's files and rows: what compaction merges."""
        return self.offline.stats()

    def compact(self) -> dict:
        """Merge small offline files (one per day), then delete replaced files past their retention."""
        summary = self.offline.compact()
        summary["files_deleted"] = self.offline.vacuum()
        return summary
