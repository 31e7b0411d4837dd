"""Feature store benchmarks: a 30-day training dataset, online get_record, an ad-hoc SQL aggregate."""
from __future__ import annotations

import statistics
import tempfile

import numpy as np
import pandas as pd

from bench.common import Record, percentile, timed
from helpers.feature_store import open_tx_per_minute
from helpers.ingestion import ingest
from helpers.local.config import Paths
from helpers.notebooks import PINNED_NOW

DAYS = 30


def run() -> list[Record]:
    with tempfile.TemporaryDirectory() as tmp:
        ingest.backfill(tmp, days=DAYS + 0.1, now=PINNED_NOW, progress=False)  # the real stream writes the store
        group = open_tx_per_minute(Paths.at(tmp).feature_store)
        end = pd.Timestamp(group.latest_online(1)[0]["window_start"], unit="s", tz="UTC").floor("D")
        start = end - pd.Timedelta(days=DAYS)

        def dataset():
            frame = group.training_dataset(start, end).frame
            assert len(frame) == DAYS * 1440

        files_before = group.offline.stats()["files"]
        uncompacted = statistics.median(timed(dataset, 5))
        group.compact()
        files_after = group.offline.stats()["files"]
        compacted = timed(dataset, 9)

        ids = [r["tx_minute"] for r in group.latest(f"window_start >= {start.timestamp()}").to_dict("records")]
        picks = np.random.default_rng(0).choice(ids, 5000)
        gets = [timed(lambda record_id=record_id: group.get_record(record_id), 1)[0] for record_id in picks]

        sql = timed(lambda: group.sql(
            f"SELECT date_trunc('day', to_timestamp(window_start)) AS day, SUM(tx_count), AVG(avg_fee),"
            f" quantile_cont(avg_fee, 0.9) FROM {group.table_name} WHERE window_start >= ? GROUP BY 1 ORDER BY 1",
            [start.timestamp()]), 5)
        group.close()
    dataset_details = {"minutes": DAYS * 1440, "median_s": statistics.median(compacted), "runs": len(compacted),
                       "files_after_compaction": files_after, "uncompacted_median_s": uncompacted,
                       "files_before_compaction": files_before}
    return [
        Record("features.dataset_30d", statistics.median(compacted), "s", "<= 0.2", dataset_details),
        Record("features.online_get_p99", percentile(gets, 99), "s", "<= 0.002",
               {"p50_s": percentile(gets, 50), "reads": len(gets)}),
        Record("features.sql_aggregate_30d", statistics.median(sql), "s", "<= 1.0",
               {"query": "daily sum, mean and p90 over 30 days of raw offline rows", "runs": len(sql)}),
    ]
