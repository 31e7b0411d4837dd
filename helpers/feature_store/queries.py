"""The reads both feature store twins make the same way: SQL on the offline table, and the time grid.

A twin provides ``definition``, ``name``, ``table_name``, ``sql(query, params)`` (DuckDB locally, Athena on AWS)
and ``latest_online(n)``; everything here is written once on top of them, so a training dataset is built by the
same rule, from the same SQL, on both backends.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from helpers.core.feature_definition import FeatureGroupDefinition, FeatureStoreError
from helpers.core.times import as_unix, from_unix
from helpers.feature_store.interface import TrainingDataset


class FeatureGroupQueries:
    definition: FeatureGroupDefinition
    name: str
    table_name: str

    def sql(self, query: str, params: list | None = None) -> pd.DataFrame:
        raise NotImplementedError

    def latest_online(self, n: int = 1) -> list[dict]:
        raise NotImplementedError

    def newest_slot(self) -> pd.Timestamp | None:
        """The start of the newest slot (minute) in the online store, in UTC; None while the store is empty."""
        newest = self.latest_online(1)
        return pd.Timestamp(newest[0][self._grid()[0]], unit="s", tz="UTC") if newest else None

    def recent(self, feature: str, slots: int) -> pd.Series:
        """One feature over the newest ``slots`` slots, the newest included, on the complete grid (gaps NaN)."""
        newest = self.newest_slot()
        if newest is None:
            raise FeatureStoreError("the feature store is empty: start the stream first (notebook 01 or "
                                    "python -m helpers start)")
        step = pd.Timedelta(seconds=self._grid()[1])
        end = newest + step
        return self.training_dataset(end - slots * step, end, features=[feature]).frame[feature]

    def hourly_sql(self) -> str:
        """Notebook 02's hourly summary, as an Athena user would write it: the latest revision of each minute,
        then one row per hour (``?``: the first window_start to include).

        Hours are bucketed with arithmetic on unix seconds, never with date_trunc on a timestamp with time zone:
        DuckDB truncates those in the kernel's time zone (under TZ=Pacific/Chatham its hours start at :15 UTC).
        The same SQL runs on Athena, where integer / integer truncates: hence the CAST.
        """
        d = self.definition
        return f"""SELECT floor(window_start / 3600) * 3600 AS hour_start,
       SUM(tx_count) AS transactions,
       CAST(SUM(total_fee) AS DOUBLE) / SUM(tx_count) AS avg_fee_sat,
       COUNT(*) AS minutes
FROM (SELECT *, row_number() OVER (PARTITION BY "{d.record_identifier}"
                                   ORDER BY "{d.event_time_feature}" DESC, api_invocation_time DESC) AS latest
      FROM "{self.table_name}")
WHERE latest = 1 AND window_start >= ?
GROUP BY 1 ORDER BY 1 DESC LIMIT 12"""

    def hourly(self, start) -> pd.DataFrame:
        """:meth:`hourly_sql` from ``start``, the newest hour first, each labelled by its UTC start."""
        frame = self.sql(self.hourly_sql(), [as_unix(start, "start")])
        frame.insert(0, "hour", pd.to_datetime(frame.pop("hour_start"), unit="s", utc=True))
        return frame

    def latest(self, where: str = "TRUE", params: list | None = None, as_of=None) -> pd.DataFrame:
        """One row per record id, the latest (as known at event time ``as_of``, if given), sorted by id."""
        query, values = self.latest_sql(where, params, as_of)
        return self.sql(query, values).drop(columns="latest_revision")

    def latest_sql(self, where: str = "TRUE", params: list | None = None, as_of=None) -> tuple[str, list]:
        """:meth:`latest`'s query and its values. A ``row_number()`` subquery, not DuckDB's ``QUALIFY``: Athena's
        engine has no QUALIFY, and the AWS twin runs this same query there."""
        d = self.definition
        clauses, values = [f"({where})"], list(params or [])
        if as_of is not None:
            if d.types[d.event_time_feature] != "Fractional":
                raise FeatureStoreError("as_of needs a Fractional (unix seconds) event-time feature")
            clauses.append(f'"{d.event_time_feature}" <= ?')
            values.append(as_unix(as_of, "as_of"))
        query = (f'SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY "{d.record_identifier}" ORDER BY '
                 f'"{d.event_time_feature}" DESC, api_invocation_time DESC) AS latest_revision '
                 f'FROM "{self.table_name}" WHERE {" AND ".join(clauses)}) '
                 f'WHERE latest_revision = 1 ORDER BY "{d.record_identifier}"')
        return query, values

    def time_range(self) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        """First and last grid slot in the offline store, or None when it is empty."""
        grid = self._grid()[0]
        low, high = self.sql(f'SELECT MIN("{grid}"), MAX("{grid}") FROM "{self.table_name}"').iloc[0]
        if pd.isna(low):
            return None
        return pd.Timestamp(low, unit="s", tz="UTC"), pd.Timestamp(high, unit="s", tz="UTC")

    def training_dataset(self, start, end, features: list[str] | None = None, as_of=None) -> TrainingDataset:
        """Exactly one row per slot in [start, end) on a complete grid: the latest revision, gaps as NaN."""
        grid, step = self._grid()
        start_s, end_s = _grid_bounds(start, end, step)
        features = self.definition.check_feature_names(features) if features is not None else self._value_features()
        latest = self.latest(f'"{grid}" >= ? AND "{grid}" < ?', [start_s, end_s], as_of=as_of)
        if latest.empty:  # nothing known then is a dataset of gaps; a range beside the data is a mistake
            held = self.time_range()
            if held is None or not (held[0].timestamp() < end_s and start_s <= held[1].timestamp()):
                where = f"from {held[0]} to {held[1]}" if held else "nothing yet: start the stream (notebook 01)"
                raise FeatureStoreError(f"no data in [{from_unix(start_s)}, {from_unix(end_s)}): "
                                        f"the store holds {where}")
            latest = pd.DataFrame(columns=[grid, *features])
        slots = np.arange(start_s, end_s, step)
        frame = latest.set_index(grid)[features].reindex(slots)
        frame.index = pd.to_datetime(frame.index, unit="s", utc=True).rename(grid)
        return TrainingDataset(frame=frame, start=frame.index[0], end=pd.Timestamp(end_s, unit="s", tz="UTC"),
                               gaps=int(frame.isna().all(axis=1).sum()),
                               as_of=None if as_of is None else pd.Timestamp(as_unix(as_of, "as_of"), unit="s",
                                                                             tz="UTC"))

    def _grid(self) -> tuple[str, int]:
        if self.definition.grid is None:
            raise FeatureStoreError(f"feature group {self.name!r} has no time grid: training datasets need one")
        return self.definition.grid

    def _value_features(self) -> list[str]:
        d = self.definition
        skip = {d.record_identifier, d.event_time_feature, d.grid[0] if d.grid else None}
        return [f.name for f in d.features if f.name not in skip and f.type != "String"]



def _grid_bounds(start, end, step: int) -> tuple[int, int]:
    start_s, end_s = as_unix(start, "start"), as_unix(end, "end")
    if not start_s < end_s:
        raise FeatureStoreError(f"start ({from_unix(start_s)}) must be before end ({from_unix(end_s)}): swap them")
    return int(math.ceil(start_s / step) * step), int(math.ceil(end_s / step) * step)
