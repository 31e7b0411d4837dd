"""The AWS twin of ingestion, without an AWS account: moto where it covers the calls (Kinesis, S3, SQS, SageMaker's
feature group), botocore's Stubber where it does not (Feature Store runtime, Athena results, CloudFormation and Flink
states moto cannot reach), and the product's own code everywhere else."""
import base64
import json
import threading

import boto3
import numpy as np
import pandas as pd
import pytest
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber
from moto import mock_aws

from conftest import PINNED_NOW, fake_aws_credentials, make_events
from helpers.aws import stacks
from helpers.aws.session import AwsContext, AwsSetupError, explained
from helpers.core.aggregator import Aggregator
from helpers.core.feature_definition import TX_PER_MINUTE
from helpers.feature_store import open_tx_per_minute
from helpers.feature_store.aws import AwsFeatureGroup
from helpers.feature_store.writer import (
    from_feature_store_record,
    redrive,
    to_feature_store_record,
    write_batch,
)
from helpers.ingestion.aws import AwsStream, backfill_records
from helpers.ingestion.poller import KinesisWriter, PollerSettings, WriteFailed, poll
from helpers.ingestion.sources.simulator import SimulatorConfig, TransactionModel

REGION = "eu-west-1"
T0 = PINNED_NOW - 3600  # the poller's saved position: an hour before the pinned "now"


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch):
    fake_aws_credentials(monkeypatch, REGION)


@pytest.fixture
def aws():
    with mock_aws():
        yield AwsContext(prefix="ws-test", region=REGION)


def stream_records(kinesis, name: str) -> list[dict]:
    """Every record in the stream, all shards."""
    found = []
    for shard in kinesis.list_shards(StreamName=name)["Shards"]:
        iterator = kinesis.get_shard_iterator(StreamName=name, ShardId=shard["ShardId"],
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            found += [json.loads(r["Data"]) for r in page["Records"]]
            iterator = page["NextShardIterator"] if page["Records"] else None
    return found


class FlakyKinesis:
    """Kinesis that refuses some records of a PutRecords call, answering 200 as Kinesis does (moto never fails).
    ``refuse(attempt, transaction)`` picks them; the rest reach the real (moto) stream."""

    def __init__(self, kinesis, refuse):
        self.kinesis, self.refuse, self.attempt, self.refused = kinesis, refuse, 0, 0

    def put_records(self, StreamName, Records):
        refused = [bool(self.refuse(self.attempt, json.loads(r["Data"]))) for r in Records]
        accepted = [r for r, no in zip(Records, refused) if not no]
        answers = iter(self.kinesis.put_records(StreamName=StreamName, Records=accepted)["Records"] if accepted else [])
        self.attempt += 1
        self.refused += sum(refused)
        results = [{"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded"} if no
                   else next(answers) for no in refused]
        return {"FailedRecordCount": sum(refused), "Records": results}


def kinesis_stream(name="ws-test-transactions"):
    kinesis = boto3.client("kinesis", region_name=REGION)
    kinesis.create_stream(StreamName=name, StreamModeDetails={"StreamMode": "ON_DEMAND"})
    return kinesis


def distinct_events(n: int) -> np.ndarray:
    return make_events([(i, T0 + i % 600, 100 + i) for i in range(n)])


def test_partial_failures_are_retried_record_by_record_until_every_record_is_in_once(aws):
    kinesis = kinesis_stream()
    flaky = FlakyKinesis(kinesis, refuse=lambda attempt, tx: attempt < 3 and tx["fee"] % 3 == 0)  # a third, thrice
    writer = KinesisWriter(flaky, "ws-test-transactions", sleep=lambda s: None)
    events = distinct_events(1200)  # three PutRecords chunks of at most 500
    assert writer.put(events) == 1200
    stored = stream_records(kinesis, "ws-test-transactions")
    assert sorted(r["fee"] for r in stored) == sorted(events["fee"].tolist())  # all in, none twice
    assert writer.retried == flaky.refused > 0


def test_records_refused_every_time_raise_and_say_they_will_be_sent_again(aws):
    kinesis = kinesis_stream()
    writer = KinesisWriter(FlakyKinesis(kinesis, refuse=lambda attempt, tx: tx["fee"] == 107), "ws-test-transactions",
                           max_attempts=3, sleep=lambda s: None)
    with pytest.raises(WriteFailed, match="1 records still failed after 3 attempts.*sends them again"):
        writer.put(distinct_events(10))


def test_the_backoff_grows_and_is_jittered():
    waits = []
    writer = KinesisWriter(FlakyKinesis(None, refuse=lambda attempt, tx: True), "s", max_attempts=5,
                           sleep=waits.append)
    writer.kinesis.kinesis = type("K", (), {"put_records": lambda *a, **k: {"Records": []}})()
    with pytest.raises(WriteFailed):
        writer.put(distinct_events(2))
    ceilings = [min(writer.max_delay_s, writer.base_delay_s * 2 ** a) for a in range(5)]
    assert len(waits) == 5 and all(0 <= w <= c for w, c in zip(waits, ceilings)) and len(set(waits)) > 1


def poller_world(aws, flaky_refuse=None):
    kinesis = kinesis_stream()
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="ws-test-bucket", CreateBucketConfiguration={"LocationConstraint": REGION})
    settings = PollerSettings(stream_name="ws-test-transactions", source="simulator", state_bucket="ws-test-bucket")
    target = FlakyKinesis(kinesis, flaky_refuse) if flaky_refuse else kinesis
    return kinesis, s3, settings, target


def save_position(s3, position: int):
    s3.put_object(Bucket="ws-test-bucket", Key="poller/state.json",
                  Body=json.dumps({"source": "simulator", "start": position, "source_pos": str(position)}))


def position(s3) -> dict:
    return json.loads(s3.get_object(Bucket="ws-test-bucket", Key="poller/state.json")["Body"].read())


def test_the_poller_runs_the_simulator_from_its_position_and_marks_seen_only_what_is_written(aws):
    kinesis, s3, settings, _ = poller_world(aws)
    save_position(s3, T0)
    result = poll(settings, kinesis, s3, now=T0 + 120, seconds_left=60)
    expected = TransactionModel(SimulatorConfig(seed=42)).deliveries(T0, T0 + 120)
    expected = expected[expected["time"] >= T0]
    stored = stream_records(kinesis, "ws-test-transactions")
    assert result["written"] == len(stored) == len(expected) > 0 and result["batches"] >= 1
    assert {r["hash"] for r in stored} == {bytes(h).hex() for h in expected["hash"]}
    assert position(s3)["source_pos"] == str(float(T0 + 120))

    broken = FlakyKinesis(kinesis, refuse=lambda attempt, tx: True)  # the stream refuses everything
    with pytest.raises(WriteFailed):
        poll(settings, broken, s3, now=T0 + 180, seconds_left=60, sleep=lambda s: None)
    assert position(s3)["source_pos"] == str(float(T0 + 120))  # not marked seen: the next run sends it again
    again = poll(settings, kinesis, s3, now=T0 + 180, seconds_left=60)
    after = TransactionModel(SimulatorConfig(seed=42)).deliveries(T0 + 120, T0 + 180)
    assert again["written"] == np.sum(after["time"] >= T0) and position(s3)["source_pos"] == str(float(T0 + 180))


def test_the_poller_reads_the_drift_file_from_s3(aws):
    kinesis, s3, settings, _ = poller_world(aws)
    save_position(s3, T0)
    s3.put_object(Bucket="ws-test-bucket", Key="simulator/drifts.json",
                  Body=json.dumps({"drifts": [{"start": T0, "fee_factor": 3.0, "rate_factor": 1.0}]}))
    poll(settings, kinesis, s3, now=T0 + 60, seconds_left=60)
    fees = np.mean([r["fee"] for r in stream_records(kinesis, "ws-test-transactions")])
    calm = TransactionModel(SimulatorConfig(seed=42)).deliveries(T0, T0 + 60)
    assert fees > 2 * calm["fee"].mean()


# ------------------------------------------------------------ the feature writer Lambda


def kinesis_event(records) -> dict:
    return {"Records": [{"kinesis": {"sequenceNumber": str(1000 + i), "data": base64.b64encode(
        record if isinstance(record, bytes) else json.dumps(record).encode()).decode()}}
        for i, record in enumerate(records)]}


def minute_records(n=3):
    _, emitted = None, []
    aggregator = Aggregator()
    for i in range(n + 2):
        emitted += aggregator.process(make_events([(i, PINNED_NOW + 60 * i + 5, 100 * (i + 1))]))[0]
    return emitted[:n]


def runtime_client():
    return boto3.client("sagemaker-featurestore-runtime", region_name=REGION)


def test_the_writer_puts_each_revision_with_its_own_event_time_and_retries_throttling():
    records = minute_records(2)
    runtime = runtime_client()
    with Stubber(runtime) as stub:
        stub.add_response("put_record", {}, {"FeatureGroupName": "fg", "Record": to_feature_store_record(records[0])})
        stub.add_client_error("put_record", "ThrottlingException", http_status_code=400)
        stub.add_response("put_record", {}, {"FeatureGroupName": "fg", "Record": to_feature_store_record(records[1])})
        assert write_batch(kinesis_event(records), runtime, "fg", sleep=lambda s: None) == {"batchItemFailures": []}
        stub.assert_no_pending_responses()
    written = {v["FeatureName"]: v["ValueAsString"] for v in to_feature_store_record(records[1])}
    assert written["event_time"] == repr(records[1]["event_time"]) and written["avg_fee"] == repr(records[1]["avg_fee"])
    assert from_feature_store_record(to_feature_store_record(records[1])) == records[1]


def test_a_failed_write_is_a_batch_item_failure_from_that_record_on():
    records = minute_records(3)
    runtime = runtime_client()
    with Stubber(runtime) as stub:
        stub.add_response("put_record", {}, None)
        stub.add_client_error("put_record", "AccessDeniedException", http_status_code=403)
        answer = write_batch(kinesis_event(records), runtime, "fg", sleep=lambda s: None)
    assert answer == {"batchItemFailures": [{"itemIdentifier": "1001"}]}  # Lambda retries from the second


@pytest.mark.parametrize("bad", [b"{not json", json.dumps({"tx_minute": "x"}).encode(),
                                 json.dumps({**minute_records(1)[0], "avg_fee": "high"}).encode()],
                         ids=["not JSON", "no event time", "a string for a Fractional"])
def test_a_record_that_can_never_be_written_fails_at_once_without_calling_put_record(bad):
    runtime = runtime_client()
    with Stubber(runtime):  # no response queued: a call would raise
        answer = write_batch(kinesis_event([bad]), runtime, "fg")
    assert answer == {"batchItemFailures": [{"itemIdentifier": "1000"}]}


def test_the_on_failure_queue_is_redriven_from_the_stream(aws):
    kinesis = kinesis_stream("ws-test-features")
    sqs = boto3.client("sqs", region_name=REGION)
    queue = sqs.create_queue(QueueName="ws-test-feature-writes-dlq")["QueueUrl"]
    records = minute_records(3)
    sequences = [kinesis.put_record(StreamName="ws-test-features", Data=json.dumps(r).encode(),
                                    PartitionKey=r["tx_minute"]) for r in records]
    assert len({s["ShardId"] for s in sequences}) >= 1
    by_shard = {}
    for sent in sequences:
        by_shard.setdefault(sent["ShardId"], []).append(sent["SequenceNumber"])
    arn = kinesis.describe_stream_summary(StreamName="ws-test-features")["StreamDescriptionSummary"]["StreamARN"]
    for shard, numbers in by_shard.items():  # what Lambda sends to an on-failure destination: the batch, not data
        sqs.send_message(QueueUrl=queue, MessageBody=json.dumps({"KinesisBatchInfo": {
            "shardId": shard, "startSequenceNumber": numbers[0], "endSequenceNumber": numbers[-1],
            "batchSize": len(numbers), "streamArn": arn}}))
    runtime = runtime_client()
    with Stubber(runtime) as stub:
        for _ in records:
            stub.add_response("put_record", {}, {"FeatureGroupName": "fg", "Record": ANY})
        assert redrive(sqs, kinesis, runtime, queue, "fg") == {"batches_redriven": len(by_shard),
                                                               "batches_failed_again": 0}
        stub.assert_no_pending_responses()
    assert sqs.receive_message(QueueUrl=queue).get("Messages") is None


# ------------------------------------------------------------ the feature group


def stack_outputs(prefix="ws-test") -> dict:
    return {"FeatureGroupName": f"{prefix}-tx-per-minute", "OfflineStoreS3Uri": "s3://ws-test-bucket/offline-store",
            "FeatureStoreRoleArn": "arn:aws:iam::123456789012:role/ws-test-feature-store",
            "KmsKeyArn": "arn:aws:kms:eu-west-1:123456789012:key/1234", "AthenaWorkGroup": "ws-test",
            "Bucket": "ws-test-bucket"}


def test_the_feature_group_is_created_from_the_local_definition(aws):
    group = AwsFeatureGroup(aws, stack_outputs(), poll_s=0).ensure()
    found = aws.client("sagemaker").describe_feature_group(FeatureGroupName="ws-test-tx-per-minute")
    assert found["FeatureDefinitions"] == [{"FeatureName": f.name, "FeatureType": f.type}
                                           for f in TX_PER_MINUTE.features]
    assert (found["RecordIdentifierFeatureName"], found["EventTimeFeatureName"]) == ("tx_minute", "event_time")
    request = group.create_request()
    assert request["OfflineStoreConfig"]["TableFormat"] == "Iceberg"
    assert request["OfflineStoreConfig"]["S3StorageConfig"]["KmsKeyId"] == stack_outputs()["KmsKeyArn"]
    assert {"Key": "WorkshopPrefix", "Value": "ws-test"} in request["Tags"]
    assert group.ensure() is group  # a second start creates nothing


def test_a_feature_group_still_creating_says_to_wait():
    context = AwsContext(prefix="ws-test", region=REGION)
    group = AwsFeatureGroup(context, stack_outputs())
    with Stubber(context.client("sagemaker")) as stub:
        stub.add_response("describe_feature_group", {
            "FeatureGroupArn": "arn:aws:sagemaker:eu-west-1:123456789012:feature-group/ws-test-tx-per-minute",
            "FeatureGroupName": "ws-test-tx-per-minute", "RecordIdentifierFeatureName": "tx_minute",
            "EventTimeFeatureName": "event_time",
            "FeatureDefinitions": [{"FeatureName": "tx_minute", "FeatureType": "String"}],
            "CreationTime": "2026-11-30T12:00:00Z",
            "FeatureGroupStatus": "Creating", "NextToken": ""})
        with pytest.raises(AwsSetupError, match="still Creating.*wait a minute and run the cell again"):
            group.describe()


def athena_answer(frame: pd.DataFrame) -> dict:
    kinds = {"int64": "bigint", "float64": "double", "object": "varchar", "bool": "boolean"}
    header = {"Data": [{"VarCharValue": c} for c in frame.columns]}
    rows = [{"Data": [{} if pd.isna(v) else {"VarCharValue": str(v).lower() if isinstance(v, (bool, np.bool_))
                                             else repr(v) if isinstance(v, float) else str(v)} for v in row]}
            for row in frame.itertuples(index=False)]
    info = [{"Name": c, "Type": kinds[str(t)]} for c, t in frame.dtypes.items()]
    return {"ResultSet": {"Rows": [header, *rows], "ResultSetMetadata": {"ColumnInfo": info}}, "UpdateCount": 0}


def test_the_training_dataset_comes_from_athena_with_the_same_sql_and_rule_as_locally(tmp_path):
    """The query Athena receives is the local store's, and the rows it answers (here: that query run by DuckDB
    on a local store holding revisions) become one row per minute, the latest revision, gaps as NaN."""
    local = open_tx_per_minute(tmp_path / "fs")
    records = minute_records(5)
    del records[2]  # a gap
    revised = {**records[0], "revision": 1, "tx_count": 9, "event_time": records[0]["event_time"] + 30}
    for record in [*records, revised]:
        local.put_record(record)
    start, end = PINNED_NOW, PINNED_NOW + 5 * 60
    query, values = local.latest_sql('"window_start" >= ? AND "window_start" < ?', [start, end])
    answer = local.sql(query, values)

    context = AwsContext(prefix="ws-test", region=REGION)
    group = AwsFeatureGroup(context, stack_outputs(), poll_s=0)
    group.__dict__.update(table_name=local.table_name, database="sagemaker_featurestore")
    athena = context.client("athena")
    with Stubber(athena) as stub:
        stub.add_response("start_query_execution", {"QueryExecutionId": "q1"}, {
            "QueryString": query, "WorkGroup": "ws-test",
            "QueryExecutionContext": {"Database": "sagemaker_featurestore"},
            "ExecutionParameters": [str(start), str(end)]})
        stub.add_response("get_query_execution", {"QueryExecution": {"Status": {"State": "RUNNING"}}})
        stub.add_response("get_query_execution", {"QueryExecution": {"Status": {"State": "SUCCEEDED"}}})
        stub.add_response("get_query_results", athena_answer(answer), {"QueryExecutionId": "q1"})
        dataset = group.training_dataset(pd.Timestamp(start, unit="s", tz="UTC"), pd.Timestamp(end, unit="s", tz="UTC"))
    expected = local.training_dataset(pd.Timestamp(start, unit="s", tz="UTC"), pd.Timestamp(end, unit="s", tz="UTC"))
    assert len(dataset.frame) == 5 and dataset.gaps == expected.gaps == 1
    assert dataset.frame["tx_count"].iloc[0] == 9  # the revision won
    pd.testing.assert_frame_equal(dataset.frame.astype(float), expected.frame.astype(float))
    local.close()


def test_a_failed_athena_query_names_the_table():
    context = AwsContext(prefix="ws-test", region=REGION)
    group = AwsFeatureGroup(context, stack_outputs(), poll_s=0)
    group.__dict__.update(table_name="t_1", database="sagemaker_featurestore")
    with Stubber(context.client("athena")) as stub:
        stub.add_response("start_query_execution", {"QueryExecutionId": "q1"})
        stub.add_response("get_query_execution", {"QueryExecution": {"Status": {
            "State": "FAILED", "StateChangeReason": "COLUMN_NOT_FOUND: line 1:8: Column 'fee' cannot be resolved"}}})
        with pytest.raises(Exception, match="Athena query FAILED: COLUMN_NOT_FOUND.*'t_1'"):
            group.sql("SELECT fee FROM t_1")


def test_online_reads_use_get_record_and_batch_get_record():
    context = AwsContext(prefix="ws-test", region=REGION)
    records = minute_records(3)
    newest = int(records[-1]["window_start"])
    group = AwsFeatureGroup(context, stack_outputs(), clock=lambda: newest + 90)
    runtime = context.client("sagemaker-featurestore-runtime")
    with Stubber(runtime) as stub:
        stub.add_response("get_record", {"Record": to_feature_store_record(records[0])},
                          {"FeatureGroupName": "ws-test-tx-per-minute",
                           "RecordIdentifierValueAsString": records[0]["tx_minute"]})
        stub.add_response("get_record", {}, None)
        stub.add_response("batch_get_record", {"Records": [
            {"FeatureGroupName": "ws-test-tx-per-minute", "RecordIdentifierValueAsString": r["tx_minute"],
             "Record": to_feature_store_record(r)} for r in records], "Errors": [], "UnprocessedIdentifiers": []}, None)
        assert group.get_record(records[0]["tx_minute"]) == records[0]
        assert group.get_record("2020-01-01T00:00:00Z") is None
        assert [r["tx_minute"] for r in group.latest_online(2)] == [records[2]["tx_minute"], records[1]["tx_minute"]]


# ------------------------------------------------------------ the stream stage: backfill, Flink, stacks, errors


def test_the_backfill_writes_the_stream_s_own_minutes_with_their_historical_event_times_then_hands_over(aws):
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="ws-test-bucket", CreateBucketConfiguration={"LocationConstraint": REGION})
    written = []

    class Recorder(AwsFeatureGroup):  # every call but PutRecord is the real class; PutRecord is recorded
        def put_record(self, record):
            written.append(record)

    stream = AwsStream(aws, clock=lambda: PINNED_NOW + 30)
    outputs = {**stack_outputs(), "InputStreamName": "ws-test-transactions"}
    assert stream.backfill(Recorder(aws, outputs), outputs, seed=42, days=1 / 24) == len(written) > 50
    expected = list(backfill_records(42, PINNED_NOW - 3600, PINNED_NOW))
    assert written == expected and all(r["event_time"] < PINNED_NOW for r in written)  # history, not the wall clock
    assert position(s3) == {"source": "simulator", "start": PINNED_NOW, "source_pos": str(PINNED_NOW),
                            "backfilled_minutes": len(written)}
    assert stream.backfill(Recorder(aws, outputs), outputs, seed=42, days=1 / 24) == 0  # once


def flink_outputs() -> dict:
    return {"FlinkApplicationName": "ws-test-aggregator", "FlinkLogGroup": "/aws/kinesis-analytics/ws-test-aggregator"}


def application(status: str) -> dict:
    return {"ApplicationDetail": {"ApplicationARN": "arn:aws:kinesisanalytics:eu-west-1:123456789012:application/a",
                                  "ApplicationName": "ws-test-aggregator", "RuntimeEnvironment": "FLINK-1_20",
                                  "ApplicationStatus": status, "ApplicationVersionId": 1}}


def test_a_flink_application_that_falls_back_to_ready_says_where_its_log_is():
    context = AwsContext(prefix="ws-test", region=REGION)
    stream = AwsStream(context, poll_s=0)
    with Stubber(context.client("kinesisanalyticsv2")) as stub:
        stub.add_response("describe_application", application("READY"))
        stub.add_response("start_application", {}, {"ApplicationName": "ws-test-aggregator", "RunConfiguration": {
            "FlinkRunConfiguration": {"AllowNonRestoredState": True}}})
        stub.add_response("describe_application", application("STARTING"))
        stub.add_response("describe_application", application("READY"))
        with pytest.raises(AwsSetupError, match="did not start.*log group /aws/kinesis-analytics/ws-test-aggregator"):
            stream._start_flink(flink_outputs())


def test_a_running_flink_application_is_left_alone():
    context = AwsContext(prefix="ws-test", region=REGION)
    with Stubber(context.client("kinesisanalyticsv2")) as stub:
        stub.add_response("describe_application", application("RUNNING"))
        stub.add_response("describe_application", application("RUNNING"))
        AwsStream(context, poll_s=0)._start_flink(flink_outputs())
        stub.assert_no_pending_responses()


def described_stack(status: str) -> dict:
    return {"Stacks": [{"StackName": "ws-test-ingestion", "StackStatus": status,
                        "CreationTime": "2026-11-30T12:00:00Z"}]}


def test_a_stack_in_rollback_complete_says_to_read_its_events_and_delete_it():
    context = AwsContext(prefix="ws-test", region=REGION)
    with Stubber(context.client("cloudformation")) as stub:
        stub.add_response("describe_stacks", described_stack("ROLLBACK_COMPLETE"), {"StackName": "ws-test-ingestion"})
        with pytest.raises(AwsSetupError, match="ROLLBACK_COMPLETE.*describe-stack-events.*delete-stack --stack-name "
                                                "ws-test-ingestion"):
            stacks.deploy(context, "ingestion", {"Prefix": "ws-test"})


def test_a_missing_quota_says_where_to_ask_for_more():
    context = AwsContext(prefix="ws-test", region=REGION)
    cfn = context.client("cloudformation")
    with Stubber(cfn) as stub:
        stub.add_client_error("describe_stacks", "ValidationError", "Stack with id ws-test-storage does not exist")
        stub.add_client_error("create_stack", "LimitExceededException", "Limit for stacks exceeded")
        with pytest.raises(AwsSetupError, match="a quota stopped deploying the stack ws-test-storage.*Service Quotas"):
            stacks.deploy(context, "storage", {"Prefix": "ws-test"})


def test_an_unchanged_stack_is_not_updated():
    context = AwsContext(prefix="ws-test", region=REGION)
    with Stubber(context.client("cloudformation")) as stub:
        stub.add_response("describe_stacks", described_stack("CREATE_COMPLETE"))
        stub.add_client_error("update_stack", "ValidationError", "No updates are to be performed.")
        assert stacks.deploy(context, "ingestion", {"Prefix": "ws-test"}).status == "CREATE_COMPLETE"


def test_an_update_keeps_the_deployed_value_of_a_parameter_it_does_not_name():
    """A stack deployed by hand with EndpointInstanceType=ml.c5.large keeps it when a notebook updates the stack;
    a parameter the template no longer declares is dropped, not sent back."""
    context = AwsContext(prefix="ws-test", region=REGION)
    deployed = described_stack("UPDATE_COMPLETE")
    deployed["Stacks"][0].update(StackName="ws-test-deployment", Parameters=[
        {"ParameterKey": "Prefix", "ParameterValue": "ws-test"},
        {"ParameterKey": "LambdaCodeKey", "ParameterValue": "code/lambda-old.zip"},
        {"ParameterKey": "EndpointInstanceType", "ParameterValue": "ml.c5.large"},
        {"ParameterKey": "Retired", "ParameterValue": "x"}])
    with Stubber(context.client("cloudformation")) as stub:
        stub.add_response("describe_stacks", deployed)
        stub.add_client_error("update_stack", "ValidationError", "No updates are to be performed.", expected_params={
            "StackName": "ws-test-deployment", "TemplateBody": ANY, "Capabilities": ANY, "Tags": ANY,
            "Parameters": [{"ParameterKey": "Prefix", "ParameterValue": "ws-test"},
                           {"ParameterKey": "LambdaCodeKey", "ParameterValue": "code/lambda-new.zip"},
                           {"ParameterKey": "EndpointInstanceType", "UsePreviousValue": True}]})
        found = stacks.deploy(context, "deployment", {"Prefix": "ws-test", "LambdaCodeKey": "code/lambda-new.zip"})
        stub.assert_no_pending_responses()
    assert found.parameters["EndpointInstanceType"] == "ml.c5.large"


def test_missing_credentials_and_region_say_what_to_do(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(AwsSetupError, match="no AWS region: pass region="):
        AwsContext(prefix="ws-test").client("sts")
    with pytest.raises(AwsSetupError, match="no AWS credentials.*aws configure"):
        AwsContext(prefix="ws-test", region=REGION).account_id
    with pytest.raises(AwsSetupError, match="prefix='Bad_Prefix'"):
        AwsContext(prefix="Bad_Prefix")


def test_an_error_nobody_can_fix_from_here_is_not_disguised():
    error = ClientError({"Error": {"Code": "InternalFailure", "Message": "boom"}}, "PutRecord")
    with pytest.raises(ClientError):
        with explained("writing"):
            raise error


def test_an_injected_drift_reaches_the_poller_s_drift_file(aws, monkeypatch):
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="ws-test-bucket", CreateBucketConfiguration={"LocationConstraint": REGION})
    stream = AwsStream(aws, clock=lambda: PINNED_NOW + 10)
    monkeypatch.setattr(AwsStream, "outputs", property(lambda self: stack_outputs()))
    applied = stream.inject_drift(fee_factor=3.0)
    stored = json.loads(s3.get_object(Bucket="ws-test-bucket", Key="simulator/drifts.json")["Body"].read())
    assert stored == {"drifts": [{"start": PINNED_NOW + 60, "fee_factor": 3.0, "rate_factor": 1.0}]}
    assert applied.drift_from == "2027-01-15T08:01:00Z"
    assert stream.set_speed(60).speed == 1.0  # wall speed on AWS, said so


def test_the_simulator_thread_timer_never_outlives_a_poll(aws):
    kinesis, s3, settings, _ = poller_world(aws)
    save_position(s3, T0)
    before = threading.active_count()
    poll(settings, kinesis, s3, now=T0 + 15, seconds_left=60)
    assert threading.active_count() == before
