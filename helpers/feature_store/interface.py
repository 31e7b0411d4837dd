"""What notebooks 01-04, the model build and the monitor ask of a feature group, whichever backend holds it.

The local twin is :class:`helpers.feature_store.store.FeatureGroup` (SQLite online, Parquet + DuckDB offline);
the AWS twin reads SageMaker Feature Store (GetRecord online, Athena offline) with the same SQL.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pandas as pd


@dataclass
class TrainingDataset:
    """Exactly one row per grid slot in [start, end): the latest revision, gaps as NaN."""

    frame: pd.DataFrame  # indexed by the slot's UTC start
    start: pd.Timestamp
    end: pd.Timestamp
    gaps: int  # slots with no record
    as_of: pd.Timestamp | None = None


class FeatureGroupReader(Protocol):
    name: str

    def describe(self) -> dict:
        """DescribeFeatureGroup's answer: name, record identifier, event time, features, offline table."""

    def get_record(self, record_id: str, feature_names: list[str] | None = None) -> dict | None:
        """The online store's latest record for one id (GetRecord)."""

    def latest_online(self, n: int = 1) -> list[dict]:
        """The ``n`` online records with the latest event times, newest first."""

    def newest_slot(self) -> pd.Timestamp | None: ...

    def recent(self, feature: str, slots: int) -> pd.Series:
        """One feature over the newest ``slots`` minutes on the complete grid (gaps NaN)."""

    def latest(self, where: str = "TRUE", params: list | None = None, as_of=None) -> pd.DataFrame:
        """The offline store's latest revision of every record (SQL that DuckDB and Athena both run)."""

    def hourly_sql(self) -> str: ...

    def hourly(self, start) -> pd.DataFrame: ...

    def time_range(self) -> tuple[pd.Timestamp, pd.Timestamp] | None: ...

    def training_dataset(self, start, end, features: list[str] | None = None, as_of=None) -> TrainingDataset: ...

    def offline_stats(self) -> dict: ...

    def compact(self) -> dict: ...

    def close(self) -> None: ...
