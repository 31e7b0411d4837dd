"""The poller in AWS: a Lambda that EventBridge Scheduler runs every minute, writing transactions to Kinesis.

It runs the local backend's own sources (the simulator, the blockchain.com poller, a replay from S3) and never
loses a transaction where the original did:

- ``PutRecords`` answers 200 even when some records failed: :class:`KinesisWriter` reads ``FailedRecordCount``
  and sends again only the failed records, with exponential backoff and jitter, until all are in or it gives up;
- the source's position (what has been "seen") is saved to S3 only after its batch is in the stream. A crash or
  a throttled write resends the batch on the next run; the Flink job drops the duplicates by their whole hash.

Why Lambda and not Fargate: a poll is a few seconds of work a minute, which costs cents a month on Lambda and
fits its free tier, with nothing to patch or keep running; reserved concurrency 1 keeps runs from overlapping.
"""
from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass

import numpy as np

from helpers.core.events import hash_hex

log = logging.getLogger(__name__)
MAX_RECORDS_PER_PUT = 500  # PutRecords' limit
SAFETY_MARGIN_S = 10  # stop polling this long before Lambda's timeout, to save the position


class WriteFailed(RuntimeError):
    """Records still refused after every retry; the position was not advanced, so the next run resends them."""


def transaction_records(events: np.ndarray) -> list[dict]:
    """PutRecords entries: one JSON transaction per record, partitioned by its hash."""
    hashes = hash_hex(events)
    return [{"Data": json.dumps({"hash": h, "time": int(t), "fee": int(f), "size": int(s), "weight": int(w)}).encode(),
             "PartitionKey": h}
            for h, t, f, s, w in zip(hashes, events["time"], events["fee"], events["size"], events["weight"])]


@dataclass
class KinesisWriter:
    kinesis: object  # a boto3 Kinesis client
    stream_name: str
    max_attempts: int = 8
    base_delay_s: float = 0.2
    max_delay_s: float = 5.0
    sleep: object = time.sleep
    rng: random.Random = random.Random()
    retried: int = 0  # records sent again after a partial failure

    def put(self, events: np.ndarray) -> int:
        """Write every event or raise WriteFailed; returns how many were written."""
        records = transaction_records(events)
        for start in range(0, len(records), MAX_RECORDS_PER_PUT):
            self._put_all(records[start:start + MAX_RECORDS_PER_PUT])
        return len(records)

    def _put_all(self, pending: list[dict]) -> None:
        for attempt in range(self.max_attempts):
            response = self.kinesis.put_records(StreamName=self.stream_name, Records=pending)
            if response.get("FailedRecordCount", 0) == 0:
                return
            failed = [(record, result) for record, result in zip(pending, response["Records"]) if "ErrorCode" in result]
            pending = [record for record, _ in failed]
            self.retried += len(pending)
            log.warning("PutRecords: %d of the records failed (%s), attempt %d", len(pending),
                        sorted({result["ErrorCode"] for _, result in failed}), attempt + 1)
            delay = min(self.max_delay_s, self.base_delay_s * 2 ** attempt)
            self.sleep(self.rng.uniform(0, delay))  # full jitter: retries from many shards do not line up
        raise WriteFailed(f"{len(pending)} records still failed after {self.max_attempts} attempts: the position "
                          "was not advanced, the next run sends them again")


@dataclass(frozen=True)
class PollerSettings:
    stream_name: str
    source: str
    state_bucket: str
    state_key: str = "poller/state.json"
    drift_key: str = "simulator/drifts.json"
    replay_key: str = "replay/recording.jsonl"
    seed: int = 42

    @classmethod
    def from_env(cls) -> "PollerSettings":
        env = os.environ
        return cls(stream_name=env["STREAM_NAME"], source=env.get("SOURCE", "simulator"),
                   state_bucket=env["STATE_BUCKET"], state_key=env.get("STATE_KEY", cls.state_key),
                   drift_key=env.get("DRIFT_KEY", cls.drift_key), replay_key=env.get("REPLAY_KEY", cls.replay_key),
                   seed=int(env.get("SEED", cls.seed)))


class PollerState:
    """The source's position in S3: written only after the batch it covers is in the stream."""

    def __init__(self, s3, settings: PollerSettings):
        self.s3, self.settings = s3, settings

    def load(self) -> dict:
        try:
            body = self.s3.get_object(Bucket=self.settings.state_bucket, Key=self.settings.state_key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return {}
        return json.loads(body)

    def save(self, state: dict) -> None:
        self.s3.put_object(Bucket=self.settings.state_bucket, Key=self.settings.state_key,
                           Body=json.dumps(state).encode(), ContentType="application/json")


def _download(s3, bucket: str, key: str, path: str) -> str | None:
    try:
        s3.download_file(bucket, key, path)
    except Exception as error:  # botocore ClientError 404: no drift file yet, or no recording
        if "404" in str(error) or "Not Found" in str(error):
            return None
        raise
    return path


def make_source(settings: PollerSettings, state: dict, s3, now: float, tmp: str = "/tmp"):
    """The source this run polls, the local backend's own classes; ``now`` bounds the simulator's catch-up."""
    if settings.source == "simulator":
        from helpers.ingestion.sources.simulator import Simulator, SimulatorConfig
        from helpers.local.clock import SimClock

        start = float(state.get("source_pos") or now // 15 * 15)
        drift_file = _download(s3, settings.state_bucket, settings.drift_key, f"{tmp}/drifts.json")
        return Simulator(SimulatorConfig(seed=settings.seed), start=float(state.get("start", start)),
                         clock=SimClock.starting_now(now), until=now, drift_file=drift_file)
    if settings.source == "blockchain":
        from helpers.ingestion.sources.blockchain import BlockchainPoller

        return BlockchainPoller()
    if settings.source == "replay":
        from helpers.ingestion.sources.replay import ReplaySource

        path = _download(s3, settings.state_bucket, settings.replay_key, f"{tmp}/replay.jsonl")
        if path is None:
            raise FileNotFoundError(f"SOURCE=replay: no recording at s3://{settings.state_bucket}/"
                                    f"{settings.replay_key}; upload one made with record_to=...")
        return ReplaySource(path)
    raise ValueError(f"SOURCE={settings.source!r}: use simulator, blockchain or replay")


def poll(settings: PollerSettings, kinesis, s3, now: float, seconds_left: float, sleep=time.sleep) -> dict:
    """One run: batches from the saved position, each written then marked seen, until caught up or out of time."""
    positions = PollerState(s3, settings)
    state = positions.load()
    source = make_source(settings, state, s3, now)
    writer = KinesisWriter(kinesis, settings.stream_name, sleep=sleep)
    stop = threading.Event()
    timer = threading.Timer(max(0.0, seconds_left - SAFETY_MARGIN_S), stop.set)
    timer.start()
    written = batches = 0
    try:
        for batch in source.batches(stop, resume_from=state.get("source_pos")):
            written += writer.put(batch.events)
            batches += 1
            if batch.source_pos is not None:
                state = {**state, "source": settings.source, "source_pos": batch.source_pos}
                if hasattr(source, "start"):  # the simulator's first minute: copies from before it stay out
                    state["start"] = source.start
                positions.save(state)  # only now is the batch "seen"
            if stop.is_set():
                break
    finally:
        timer.cancel()
        timer.join()
    return {"batches": batches, "written": written, "retried": writer.retried, "source_pos": state.get("source_pos")}


def handler(event, context):
    """Lambda entry point (``helpers.ingestion.poller.handler``)."""
    import boto3

    logging.getLogger().setLevel(logging.INFO)
    settings = PollerSettings.from_env()
    seconds_left = context.get_remaining_time_in_millis() / 1000 if context is not None else 60
    result = poll(settings, boto3.client("kinesis"), boto3.client("s3"), now=time.time(), seconds_left=seconds_left)
    log.info("poll: %s", result)
    return result
