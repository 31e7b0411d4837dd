"""Flink into SageMaker Feature Store: a Lambda on the Flink job's output stream, calling ``PutRecord``.

Flink has no Feature Store sink. Each Kinesis record is one revision of one minute (a feature record of
:mod:`helpers.core.aggregator`); it is checked against the same definition as the local store and written with
its own ``event_time``, the watermark when it was emitted. A later revision has a later event time, so the
online store keeps the latest by SageMaker's own rule, and the offline store keeps every revision.

Failures lose nothing: a throttled or failed ``PutRecord`` is retried (botocore's adaptive retries, then ours);
what still fails is reported as a batch item failure (``ReportBatchItemFailures``), so Lambda retries from that
record on; after the event source mapping's retries the batch goes to the SQS on-failure destination, where a
learner can inspect it and redrive it (``redrive`` below, or ``python -m helpers aws redrive``). A record that can
never be written (it fails the definition) is not retried forever: it is reported failed at once, and ends in SQS.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import random
import time

from helpers.core.feature_definition import TX_PER_MINUTE, FeatureStoreError

log = logging.getLogger(__name__)
RETRYABLE = {"ThrottlingException", "ServiceUnavailable", "InternalFailure", "ThrottledException"}


def to_feature_store_record(record: dict) -> list[dict]:
    """PutRecord's Record: every non-null feature as a string, as SageMaker takes them."""
    checked = TX_PER_MINUTE.validate_record(record)
    return [{"FeatureName": name, "ValueAsString": repr(value) if isinstance(value, float) else str(value)}
            for name, value in checked.items() if value is not None]


def from_feature_store_record(values: list[dict]) -> dict:
    """GetRecord's Record back to typed values, by the definition's types."""
    types = TX_PER_MINUTE.types
    parse = {"Integral": int, "Fractional": float, "String": str}
    return {v["FeatureName"]: parse[types[v["FeatureName"]]](v["ValueAsString"]) for v in values
            if v["FeatureName"] in types}


def put_with_retries(runtime, feature_group: str, record: list[dict], attempts: int = 4, sleep=time.sleep) -> None:
    from botocore.exceptions import ClientError

    for attempt in range(attempts):
        try:
            runtime.put_record(FeatureGroupName=feature_group, Record=record)
            return
        except ClientError as error:
            if error.response["Error"]["Code"] not in RETRYABLE or attempt == attempts - 1:
                raise
            sleep(random.uniform(0, 0.1 * 2 ** attempt))


def write_batch(event: dict, runtime, feature_group: str, sleep=time.sleep) -> dict:
    """Write a Kinesis batch; returns the batch item failures (the first failed record's sequence number:
    Lambda retries from there, so records after it are written again, which PutRecord makes harmless)."""
    for item in event.get("Records", []):
        sequence = item["kinesis"]["sequenceNumber"]
        try:
            record = json.loads(base64.b64decode(item["kinesis"]["data"]))
            put_with_retries(runtime, feature_group, to_feature_store_record(record), sleep=sleep)
        except (ValueError, FeatureStoreError) as error:  # bad JSON or a record the definition refuses
            log.error("record %s cannot be written, to the on-failure queue: %s", sequence, error)
            return {"batchItemFailures": [{"itemIdentifier": sequence}]}
        except Exception as error:  # noqa: BLE001 - a failed write of any kind is retried by Lambda, not lost
            log.warning("PutRecord failed for %s, Lambda retries from it: %s", sequence, error)
            return {"batchItemFailures": [{"itemIdentifier": sequence}]}
    return {"batchItemFailures": []}


def handler(event, context):
    """Lambda entry point (``helpers.feature_store.writer.handler``)."""
    import boto3

    logging.getLogger().setLevel(logging.INFO)
    return write_batch(event, boto3.client("sagemaker-featurestore-runtime"), os.environ["FEATURE_GROUP_NAME"])


def redrive(sqs, kinesis, runtime, queue_url: str, feature_group: str) -> dict:
    """Write again the batches the on-failure queue holds, then delete their messages.

    A Kinesis on-failure message names the batch (shard and sequence numbers), not its records: they are read
    back from the stream, which keeps them 24 h. A message whose batch fails again stays in the queue.
    """
    redriven = failed = 0
    while messages := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                          WaitTimeSeconds=1).get("Messages", []):
        for message in messages:
            info = json.loads(message["Body"])["KinesisBatchInfo"]
            records = _read_batch(kinesis, info)
            if write_batch({"Records": records}, runtime, feature_group)["batchItemFailures"]:
                failed += 1
                continue
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            redriven += 1
        if failed:
            break
    return {"batches_redriven": redriven, "batches_failed_again": failed}


def _read_batch(kinesis, info: dict) -> list[dict]:
    """The batch's records, in the shape a Lambda event has them."""
    stream = info["streamArn"].split("/")[-1]
    iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId=info["shardId"],
                                          ShardIteratorType="AT_SEQUENCE_NUMBER",
                                          StartingSequenceNumber=info["startSequenceNumber"])["ShardIterator"]
    last, records = int(info["endSequenceNumber"]), []
    while iterator:
        response = kinesis.get_records(ShardIterator=iterator, Limit=1000)
        for record in response["Records"]:
            if int(record["SequenceNumber"]) > last:
                return records
            records.append({"kinesis": {"sequenceNumber": record["SequenceNumber"],
                                        "data": base64.b64encode(record["Data"]).decode()}})
        if not response["Records"] or response.get("MillisBehindLatest", 0) == 0:
            break
        iterator = response.get("NextShardIterator")
    return records
