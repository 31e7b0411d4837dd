"""The event log with several processes at once, and the feature store's write path."""
import multiprocessing
import sqlite3

import numpy as np
import pyarrow.parquet as pq

from conftest import make_events
from helpers.eventlog import EventLog
from helpers.events import EventBatch
from helpers.feature_store import FeatureStore

PRODUCERS, BATCHES = 3, 40


def produce(path, producer):
    log = EventLog(path)
    for i in range(BATCHES):
        key = producer * 1_000_000 + i
        log.append(EventBatch(make_events([(key, 1_800_000_000 + i, key)]), fetched_at=float(i),
                              source_pos=str(i)), f"producer-{producer}")
    log.close()


def test_concurrent_producers_and_a_consumer_see_every_record_once_in_order(tmp_path):
    path = tmp_path / "events.db"
    EventLog(path).close()
    context = multiprocessing.get_context("spawn")
    producers = [context.Process(target=produce, args=(path, p)) for p in range(PRODUCERS)]
    for process in producers:
        process.start()
    consumer, offset, seen = EventLog(path), 0, []
    while any(p.is_alive() for p in producers) or consumer.last_offset() > offset:
        for record in consumer.read(offset, max_events=7):
            assert record.offset == offset + 1, "a reader only ever sees a gap-free prefix"
            offset = record.offset
            seen.append(int(record.events["fee"][0]))
    for process in producers:
        process.join()
        assert process.exitcode == 0
    expected = sorted(p * 1_000_000 + i for p in range(PRODUCERS) for i in range(BATCHES))
    assert sorted(seen) == expected and len(seen) == len(set(seen))
    assert consumer.last_source_pos("producer-1") == str(BATCHES - 1)
    assert consumer.totals()["events"] == PRODUCERS * BATCHES


def test_malformed_counts_are_kept_with_their_record(tmp_path):
    log = EventLog(tmp_path / "events.db")
    log.append(EventBatch(make_events([]), fetched_at=0.0, malformed={"fee: missing": 2}), "s")
    log.append(EventBatch(make_events([]), fetched_at=0.0, malformed={"fee: missing": 1, "hash: x": 1}), "s")
    assert log.totals()["malformed"] == {"fee: missing": 3, "hash: x": 1}


def record(minute: int, revision: int, tx_count: int) -> dict:
    return {"tx_minute": f"2027-01-15T08:{minute:02d}:00Z", "window_start": 1_800_000_000.0 + 60 * minute,
            "event_time": 1_800_000_060.0 + 60 * minute, "revision": revision, "tx_count": tx_count,
            "total_fee": 10 * tx_count, "avg_fee": 10.0, "total_vsize": 100, "avg_fee_rate": 0.1 * tx_count,
            "min_fee": 10, "max_fee": 10}


def test_online_store_keeps_the_highest_revision_whatever_the_write_order(tmp_path):
    store = FeatureStore(tmp_path)
    store.write([record(0, 1, 5)], "b")
    store.write([record(0, 0, 3)], "a")  # an older revision arriving late must not win
    assert store.get_record("2027-01-15T08:00:00Z")["tx_count"] == 5
    store.write([record(0, 1, 5)], "c")  # the same revision again: idempotent
    assert store.get_record("2027-01-15T08:00:00Z")["revision"] == 1
    assert store.get_record("2027-01-15T09:00:00Z") is None


def test_offline_store_is_partitioned_like_sagemaker_idempotent_and_latest_revision_wins(tmp_path):
    store = FeatureStore(tmp_path)
    store.write([record(0, 0, 3), record(1, 0, 4)], "000001-000002")
    store.write([record(0, 0, 3), record(1, 0, 4)], "000001-000002")  # a retried publish: same file
    store.write([record(0, 1, 6)], "000003-000003")
    files = sorted(p.relative_to(store.offline_dir).as_posix() for p in store.offline_dir.rglob("*"))
    assert "year=2027/month=01/day=15/hour=08/part-000001-000002.parquet" in files
    assert not [f for f in files if f.endswith(".tmp")]
    table = pq.read_table(store.offline_dir / "year=2027/month=01/day=15/hour=08/part-000001-000002.parquet")
    assert {"tx_minute", "event_time", "write_time", "is_deleted"} <= set(table.column_names)
    latest = store.offline_latest()
    assert latest["tx_count"].tolist() == [6, 4] and latest["revision"].tolist() == [1, 0]
    assert np.issubdtype(latest["avg_fee"].dtype, np.floating)


def test_online_store_is_readable_while_a_writer_holds_it(tmp_path):
    store = FeatureStore(tmp_path)
    store.write([record(0, 0, 3)], "a")
    writer = sqlite3.connect(tmp_path / "online.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a writer mid-transaction (WAL: readers are not blocked)
    assert FeatureStore(tmp_path).get_record("2027-01-15T08:00:00Z")["tx_count"] == 3
    writer.execute("ROLLBACK")
