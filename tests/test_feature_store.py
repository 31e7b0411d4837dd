"""The local feature store: definitions, online and offline reads, datasets, compaction, concurrency."""
import json
import multiprocessing
import os
import subprocess
import sys
from datetime import datetime

import boto3
import pandas as pd
import pyarrow.parquet as pq
import pytest
from moto import mock_aws

from helpers.feature_store import TX_PER_MINUTE, FeatureStore, FeatureStoreError, open_tx_per_minute

T0 = 1_800_000_000 // 3600 * 3600  # 2027-01-15T08:00:00Z


def minute(i: int, revision: int = 0, tx_count: int = 10, lag: float = 60.0) -> dict:
    """A record for minute ``i`` after T0; a later revision is known at a later event time."""
    start = T0 + 60 * i
    return {"tx_minute": pd.Timestamp(start, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ"),
            "window_start": float(start), "event_time": start + lag + 15.0 * revision, "revision": revision,
            "tx_count": tx_count, "total_fee": 100 * tx_count, "avg_fee": 100.0, "total_vsize": 250 * tx_count,
            "avg_fee_rate": 0.4, "min_fee": 50, "max_fee": 150}


@pytest.fixture
def group(tmp_path):
    group = open_tx_per_minute(tmp_path / "fs")
    yield group
    group.close()


# ---------------------------------------------------------------- definition and catalog


def test_definition_becomes_a_create_feature_group_request_sagemaker_accepts():
    request = TX_PER_MINUTE.create_request("s3://bucket/offline", "arn:aws:iam::123456789012:role/fs")
    with mock_aws():
        client = boto3.client("sagemaker", region_name="eu-west-1")
        client.create_feature_group(**request)
        described = client.describe_feature_group(FeatureGroupName=TX_PER_MINUTE.name)
    assert described["RecordIdentifierFeatureName"] == "tx_minute"
    assert described["EventTimeFeatureName"] == "event_time"
    assert described["FeatureDefinitions"] == request["FeatureDefinitions"]


def test_describe_mirrors_sagemaker_and_names_the_athena_table(group):
    described = group.describe()
    assert described["FeatureGroupName"] == "btc-tx-per-minute" and described["FeatureGroupStatus"] == "Created"
    assert {"FeatureName": "avg_fee", "FeatureType": "Fractional"} in described["FeatureDefinitions"]
    table = described["OfflineStoreConfig"]["DataCatalogConfig"]["TableName"]
    assert table == group.table_name and table.startswith("btc_tx_per_minute_")
    assert described["CreationTime"].tzinfo is not None


def test_unknown_group_and_a_conflicting_definition_are_clear_errors(tmp_path):
    store = FeatureStore(tmp_path)
    with pytest.raises(FeatureStoreError, match="unknown feature group 'nope'.*create_feature_group"):
        store.feature_group("nope")
    store.create_feature_group(TX_PER_MINUTE)
    store.create_feature_group(TX_PER_MINUTE)  # the same definition again: fine
    from dataclasses import replace
    with pytest.raises(FeatureStoreError, match="exists with another definition"):
        store.create_feature_group(replace(TX_PER_MINUTE, description="changed"))
    assert store.list_feature_groups() == ["btc-tx-per-minute"]


@pytest.mark.parametrize(("change", "message"), [
    ({"colour": "red"}, "unknown feature 'colour'.*its features are"),
    ({"tx_count": 1.5}, "'tx_count' is Integral: got the float"),
    ({"tx_count": True}, "'tx_count' is Integral: got bool"),
    ({"avg_fee": "12"}, "'avg_fee' is Fractional: got str"),
    ({"avg_fee": float("nan")}, "finite number"),
    ({"tx_minute": 5}, "'tx_minute' is a String"),
    ({"event_time": None}, "missing 'event_time'"),
])
def test_bad_records_are_refused_naming_the_feature_and_nothing_stored_is_lost(group, change, message):
    group.put_record(minute(0))
    with pytest.raises(FeatureStoreError, match=message):
        group.put_record({**minute(1), **change})
    assert group.get_record(minute(0)["tx_minute"])["tx_count"] == 10
    assert len(group.sql(f"SELECT * FROM {group.table_name}")) == 1


# ---------------------------------------------------------------- online


def test_get_record_returns_the_latest_and_only_the_features_asked_for(group):
    group.put_records([minute(0), minute(1)], "b1")
    group.put_records([minute(0, revision=1, tx_count=12)], "b2")
    assert group.get_record(minute(0)["tx_minute"])["tx_count"] == 12
    assert group.get_record(minute(1)["tx_minute"], ["tx_count", "avg_fee"]) == {"tx_count": 10, "avg_fee": 100.0}
    assert group.get_record("2000-01-01T00:00:00Z") is None
    with pytest.raises(FeatureStoreError, match="unknown feature 'fee'"):
        group.get_record(minute(0)["tx_minute"], ["fee"])
    with pytest.raises(FeatureStoreError, match="record identifier 'tx_minute' is a string"):
        group.get_record(12)
    assert [r["tx_minute"] for r in group.latest_online(2)] == [minute(1)["tx_minute"], minute(0)["tx_minute"]]


def test_an_older_event_time_arriving_late_does_not_win_online(group):
    group.put_records([minute(0, revision=1, tx_count=12)], "b1")
    group.put_records([minute(0, revision=0, tx_count=10)], "b0")
    assert group.get_record(minute(0)["tx_minute"])["revision"] == 1


# ---------------------------------------------------------------- offline


def test_offline_files_are_partitioned_like_sagemaker_and_a_retried_batch_is_written_once(group):
    assert group.put_records([minute(0), minute(1)], "000001-000002")
    assert not group.put_records([minute(0), minute(1)], "000001-000002")  # a retried publish
    files = [p.relative_to(group.offline.data_dir).as_posix() for p in group.offline.data_dir.rglob("*.parquet")]
    assert files == ["year=2027/month=01/day=15/hour=08/part-000001-000002.parquet"]
    columns = pq.read_schema(group.offline.data_dir / files[0]).names
    assert {"write_time", "api_invocation_time", "is_deleted"} <= set(columns)
    assert len(group.sql(f"SELECT * FROM {group.table_name}")) == 2


def test_sql_runs_on_the_athena_table_name_and_errors_name_the_table(group):
    group.put_records([minute(i, tx_count=i) for i in range(5)], "b")
    total = group.sql(f"SELECT SUM(tx_count) AS n FROM {group.table_name} WHERE revision = ?", [0])
    assert total["n"].iloc[0] == sum(range(5))
    with pytest.raises(FeatureStoreError, match=f"offline table is '{group.table_name}'"):
        group.sql("SELECT * FROM transactions")


def test_as_of_reads_what_was_known_at_an_event_time(group):
    group.put_records([minute(0, tx_count=10), minute(1, tx_count=20)], "b1")
    group.put_records([minute(0, revision=1, tx_count=11)], "b2")  # known 15 s later
    known_then = group.latest(as_of=T0 + 70)  # before revision 1 and minute 1 were known
    known_now = group.latest()
    assert known_then["tx_count"].tolist() == [10] and known_now["tx_count"].tolist() == [11, 20]


def test_the_latest_revision_sql_is_portable_to_athena(group):
    """Athena's engine has no QUALIFY: the latest revision is a row_number() subquery, which both engines run."""
    group.put_records([minute(0, tx_count=10)], "b1")
    group.put_records([minute(0, revision=1, tx_count=11)], "b2")
    for query in (group.latest_sql('"window_start" >= ?', [T0], as_of=T0 + 3600)[0], group.hourly_sql()):
        assert "QUALIFY" not in query.upper() and "ROW_NUMBER() OVER" in query.upper()
    assert group.latest()["tx_count"].tolist() == [11] and "latest_revision" not in group.latest().columns


def test_training_dataset_has_one_row_per_minute_on_a_complete_grid(group):
    group.put_records([minute(i, tx_count=i + 1) for i in range(10) if i not in (3, 4, 7)], "b1")
    group.put_records([minute(2, revision=1, tx_count=99)], "b2")
    dataset = group.training_dataset("2027-01-15T08:00:00Z", T0 + 600)
    frame = dataset.frame
    assert len(frame) == 10 and frame.index.is_unique and str(frame.index.tz) == "UTC"
    assert (frame.index.to_series().diff().dropna() == pd.Timedelta("1min")).all()
    assert dataset.gaps == 3 and frame.loc[frame.index[3], "avg_fee"] != frame.loc[frame.index[3], "avg_fee"]
    assert frame["tx_count"].iloc[2] == 99  # the latest revision wins
    assert {"tx_count", "total_fee", "avg_fee"} <= set(frame.columns) and "tx_minute" not in frame.columns
    as_of = group.training_dataset(T0, T0 + 600, features=["tx_count"], as_of=T0 + 190)
    assert as_of.frame["tx_count"].iloc[2] == 3 and as_of.frame["tx_count"].iloc[5:].isna().all()


@pytest.mark.parametrize(("start", "end", "message"), [
    (T0 + 600, T0, "must be before end"),
    (T0 + 86400, T0 + 90000, "no data in .* the store holds"),
    (datetime(2027, 1, 15, 8), T0 + 600, "has no time zone"),
    ("yesterday", T0 + 600, "not an ISO-8601 time"),
])
def test_training_dataset_errors_say_what_to_do(group, start, end, message):
    group.put_records([minute(i) for i in range(10)], "b")
    with pytest.raises(ValueError, match=message):
        group.training_dataset(start, end)


def test_training_dataset_of_an_empty_store_says_to_start_the_stream(group):
    with pytest.raises(FeatureStoreError, match="start the stream"):
        group.training_dataset(T0, T0 + 600)
    with pytest.raises(FeatureStoreError, match="unknown feature 'fees'"):
        group.training_dataset(T0, T0 + 600, features=["fees"])


def test_recent_is_the_newest_minutes_on_the_grid_with_their_gaps(group):
    with pytest.raises(FeatureStoreError, match="start the stream"):
        group.recent("avg_fee", 5)
    assert group.newest_slot() is None
    group.put_records([{**minute(i), "avg_fee": float(i)} for i in (0, 1, 3, 4)], "a")  # minute 2: a gap
    assert group.newest_slot() == pd.Timestamp(T0 + 240, unit="s", tz="UTC")
    recent = group.recent("avg_fee", 4)
    assert list(recent.index) == list(pd.date_range(pd.Timestamp(T0 + 60, unit="s", tz="UTC"), periods=4,
                                                    freq="1min"))
    assert recent.tolist()[0] == 1.0 and pd.isna(recent.iloc[1]) and recent.tolist()[2:] == [3.0, 4.0]


# ---------------------------------------------------------------- compaction and concurrency


def rows(group) -> list[tuple]:
    frame = group.sql(f"SELECT tx_minute, revision, tx_count FROM {group.table_name}")
    return sorted(frame.itertuples(index=False, name=None))


def test_compaction_merges_a_days_files_into_one_without_losing_or_duplicating_a_row(group):
    for batch in range(30):  # 30 small writes over two days
        group.put_records([minute(batch * 60 + j, tx_count=batch) for j in range(3)], f"b{batch:03d}")
    group.put_records([minute(0, revision=1, tx_count=7)], "late")
    before = rows(group)
    summary = group.compact()
    assert summary["files_before"] == 31 and summary["files_after"] == 2 and summary["days_compacted"] == 2
    assert rows(group) == before and len(before) == 91
    assert group.offline.vacuum(retention_s=0) == 31  # replaced files go once their retention is over
    assert rows(group) == before and len(list(group.offline.data_dir.rglob("*.parquet"))) == 2
    assert group.compact()["days_compacted"] == 0  # nothing left to merge


def write_steadily(root, n_batches):
    group = open_tx_per_minute(root)
    for batch in range(n_batches):
        group.put_records([minute(batch * 2 + j, tx_count=batch) for j in range(2)], f"w{batch:04d}")
        if batch % 5 == 0:
            group.put_records([minute(batch * 2, revision=1, tx_count=batch + 1000)], f"r{batch:04d}")
    group.close()


def test_reads_and_compaction_while_the_stream_writes_never_see_a_row_twice_or_lose_one(tmp_path):
    root, n_batches = tmp_path / "fs", 150
    reader = open_tx_per_minute(root)
    writer = multiprocessing.get_context("spawn").Process(target=write_steadily, args=(root, n_batches))
    writer.start()
    seen_rows, compactions = 0, 0
    while writer.is_alive() or compactions == 0:
        current = rows(reader)
        assert len(current) == len(set(current)), "a row was counted twice"
        assert len(current) >= seen_rows, "a row disappeared"
        seen_rows = len(current)
        dataset = reader.latest()
        assert dataset["tx_minute"].is_unique and not dataset[["tx_count", "avg_fee"]].isna().any().any()
        reader.compact()
        compactions += 1
    writer.join()
    assert writer.exitcode == 0 and compactions > 1
    final = rows(reader)
    expected = sorted({(minute(b * 2 + j)["tx_minute"], 0, b) for b in range(n_batches) for j in range(2)}
                      | {(minute(b * 2)["tx_minute"], 1, b + 1000) for b in range(0, n_batches, 5)})
    assert final == expected
    reader.compact()
    assert rows(reader) == expected and reader.offline.stats()["files"] == 1


def test_data_quality_reports_gaps_revisions_duplicates_and_outliers(group):
    from helpers.feature_store.quality import data_quality, plot_data_quality

    records = [minute(i, tx_count=100 + i % 3) for i in range(120) if not 40 <= i < 45 and i != 90]
    records[60] = {**records[60], "avg_fee": 5000.0}  # a fee spike among ~100 sat averages
    group.put_records(records, "b1")
    group.put_records([minute(10, revision=1, tx_count=150), minute(11, revision=1, tx_count=151)], "b2")
    group.put_record(minute(12, tx_count=100 + 12 % 3))  # the same (minute, revision) written twice
    report = data_quality(group, T0, T0 + 120 * 60)
    summary = report.summary()
    assert summary["minutes expected"] == 120 and summary["minutes present"] == 114
    assert report.gaps[["minutes"]].to_dict("list") == {"minutes": [5, 1]}
    assert report.gaps["gap_start"].iloc[0] == pd.Timestamp(T0 + 40 * 60, unit="s", tz="UTC")
    assert report.revised["tx_minute"].tolist() == [minute(10)["tx_minute"], minute(11)["tx_minute"]]
    assert report.revised["final_tx_count"].tolist() == [150, 151] and summary["late revision rows"] == 2
    assert report.duplicate_rows == 1
    assert report.outliers[["feature"]].to_dict("list") == {"feature": ["tx_count", "tx_count", "avg_fee"]}
    assert plot_data_quality(report).axes[0].get_title().startswith("data quality: 6 missing minutes")


def test_as_of_before_anything_was_known_gives_a_dataset_of_gaps(group):
    group.put_records([minute(i) for i in range(10)], "b")
    dataset = group.training_dataset(T0, T0 + 600, as_of=T0)
    assert dataset.gaps == 10 and len(dataset.frame) == 10


def test_hourly_sql_buckets_by_utc_hour_whatever_the_kernels_time_zone(tmp_path):
    """Notebook 02's query in a process whose TZ is 12:45 ahead of UTC: the hours still start at :00 UTC."""
    group = open_tx_per_minute(tmp_path / "fs")
    group.put_records([minute(i) for i in range(150)], "b")
    group.close()
    script = ("import sys; from helpers.feature_store import open_tx_per_minute; "
              "g = open_tx_per_minute(sys.argv[1]); "
              "print(g.hourly(0)[['hour', 'minutes']].to_json(orient='values', date_unit='s'))")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "fs")], env={**os.environ,
                         "TZ": "Pacific/Chatham"}, capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    assert [(hour, n) for hour, n in rows] == [(T0 + 7200, 30), (T0 + 3600, 60), (T0, 60)]
