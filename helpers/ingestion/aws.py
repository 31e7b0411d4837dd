"""The AWS twin of the stream: the poller Lambda, Kinesis, the Managed Flink job and the feature writer Lambda.

:meth:`AwsStream.start` does what notebook 01 needs, each step skipped when already done:

1. deploys the storage stack, uploads the code (:mod:`helpers.aws.package`), deploys the ingestion stack;
2. creates the feature group from the local store's definition;
3. backfills history so the first model needs no wait: days of simulated minutes, aggregated by the same rules
   as the stream, written through ``PutRecord`` with their historical event times;
4. hands over to the poller at the backfill's end (its saved position), enables its schedule, and starts the
   Flink application.

On AWS time runs at the wall clock's speed: the simulator's clock cannot be sped up there.
"""
from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from helpers.aws import package, scheduler, stacks
from helpers.aws.session import AwsContext, AwsSetupError, explained
from helpers.core.aggregator import Aggregator
from helpers.core.times import minute_iso
from helpers.ingestion.interface import ClockSpeed, DriftApplied, StreamStatus
from helpers.ingestion.poller import PollerSettings, PollerState

log = logging.getLogger(__name__)
FLINK_STATES = {"RUNNING": "running", "READY": "stopped", "STARTING": "starting", "STOPPING": "stopping",
                "UPDATING": "updating", "AUTOSCALING": "running"}
BACKFILL_WORKERS = 8  # PutRecord calls in flight


def backfill_records(seed: int, start: float, end: float, chunk_s: int = 3600):
    """Feature records of the simulated minutes in [start, end), exactly as the stream would emit them."""
    from helpers.ingestion.sources.simulator import SimulatorConfig, TransactionModel

    model, aggregator = TransactionModel(SimulatorConfig(seed=seed)), Aggregator()
    for t0 in range(int(start), int(end), chunk_s):
        copies = model.deliveries(t0, min(t0 + chunk_s, end))
        yield from aggregator.process(copies[copies["time"] >= start])[0]


class AwsStream:
    def __init__(self, context: AwsContext, clock=time.time, poll_s: float = 10.0):
        self.context = context
        self.clock = clock
        self.poll_s = poll_s

    # ------------------------------------------------------------ where things are

    @property
    def outputs(self) -> dict[str, str]:
        return stacks.require(self.context, "ingestion").outputs

    def features(self):
        from helpers.feature_store.aws import AwsFeatureGroup

        return AwsFeatureGroup(self.context, self.outputs, clock=self.clock)

    def _settings(self, outputs: dict) -> PollerSettings:
        return PollerSettings(stream_name=outputs["InputStreamName"], source="", state_bucket=outputs["Bucket"])

    # ------------------------------------------------------------ start

    START_SETTINGS = {"backfill_days": 7.0, "speed": 1.0, "seed": 42, "now": None, "replay_file": None,
                      "record_to": None, "jar": None}

    def start(self, source: str = "simulator", **settings) -> StreamStatus:
        """Deploy, backfill and start (see the module's docstring). ``settings``: :attr:`START_SETTINGS`;
        ``jar`` is a Kinesis connector jar downloaded by hand, where this machine cannot download it."""
        unknown = sorted(set(settings) - set(self.START_SETTINGS))
        if unknown:
            raise TypeError(f"start() got {unknown}: the AWS stream takes {sorted(self.START_SETTINGS)}")
        settings = {**self.START_SETTINGS, **settings}
        if settings["now"] is not None:
            raise AwsSetupError(f"now={settings['now']!r}: on AWS the stream runs on the wall clock; pass now=None")
        if settings["record_to"] is not None:
            raise AwsSetupError("record_to: on AWS the poller does not record responses; record locally "
                                "(backend='local', source='blockchain') and upload the file as replay_file")
        if settings["speed"] != 1:
            log.warning("speed=%s: on AWS time runs at the wall clock's speed (1)", settings["speed"])
        seed, replay_file, jar = settings["seed"], settings["replay_file"], settings["jar"]
        storage = stacks.deploy(self.context, "storage", {"Prefix": self.context.prefix})
        if replay_file is not None:
            with explained("uploading the replay file"):
                self.context.client("s3").upload_file(str(replay_file), storage.outputs["Bucket"],
                                                      "replay/recording.jsonl")
        code = package.package_and_upload(self.context, storage.outputs["Bucket"], jar=jar)
        ingestion = stacks.deploy(self.context, "ingestion", {
            "Prefix": self.context.prefix, "Source": source, "Seed": str(seed), "PollerState": "DISABLED",
            "LambdaCodeKey": code.lambda_key, "FlinkCodeKey": code.flink_key})
        features = self.features().ensure()
        if source == "simulator":
            self.backfill(features, ingestion.outputs, seed, settings["backfill_days"])
        scheduler.set_state(self.context, ingestion.outputs["PollerScheduleName"], "ENABLED")
        self._start_flink(ingestion.outputs)
        return self.status()

    def backfill(self, features, outputs: dict, seed: int, days: float) -> int:
        """Write ``days`` of simulated minutes ending now, once; the poller then carries on from their end."""
        from tqdm.auto import tqdm

        state = PollerState(self.context.client("s3"), self._settings(outputs))
        if state.load():
            return 0  # done before: the poller has a position
        end = self.clock() // 60 * 60
        start = end - days * 86400
        records = list(tqdm(backfill_records(seed, start, end), desc="simulating", unit=" minutes", leave=False))
        with ThreadPoolExecutor(BACKFILL_WORKERS) as pool:
            list(tqdm(pool.map(features.put_record, records), total=len(records), desc="PutRecord",
                      unit=" minutes"))
        state.save({"source": "simulator", "start": end, "source_pos": str(end),  # after every write succeeded
                    "backfilled_minutes": len(records)})
        return len(records)


    def _application(self, outputs: dict) -> dict:
        with explained("describing the Flink application"):
            return self.context.client("kinesisanalyticsv2").describe_application(
                ApplicationName=outputs["FlinkApplicationName"])["ApplicationDetail"]

    def _start_flink(self, outputs: dict, timeout_s: float = 900) -> None:
        """Start the application unless it runs; wait until RUNNING; if it falls back, say where its log is."""
        name = outputs["FlinkApplicationName"]
        if self._application(outputs)["ApplicationStatus"] == "READY":
            with explained(f"starting the Flink application {name}"):
                self.context.client("kinesisanalyticsv2").start_application(
                    ApplicationName=name,
                    RunConfiguration={"FlinkRunConfiguration": {"AllowNonRestoredState": True}})
        deadline = self.clock() + timeout_s
        status = self._application(outputs)["ApplicationStatus"]
        while status != "RUNNING":
            if status == "READY" or self.clock() > deadline:
                raise AwsSetupError(self._flink_failed(outputs, status))
            time.sleep(self.poll_s)
            status = self._application(outputs)["ApplicationStatus"]

    def _flink_failed(self, outputs: dict, status: str) -> str:
        group = outputs["FlinkLogGroup"]
        region = self.context.session.region_name
        return (f"the Flink application {outputs['FlinkApplicationName']} did not start (it is {status}). Its log "
                f"is the CloudWatch log group {group} (https://console.aws.amazon.com/cloudwatch/home?region="
                f"{region}#logsV2:log-groups); search it for 'Exception' or use Logs Insights: fields @message | "
                "filter @message like /rror/ | sort @timestamp desc. Python errors appear as "
                "'org.apache.flink.client.program.ProgramAbortException' with the traceback above it.")

    def ensure_running(self) -> StreamStatus:
        outputs = self.outputs
        scheduler.set_state(self.context, outputs["PollerScheduleName"], "ENABLED")
        self._start_flink(outputs)
        return self.status()

    def wait_until_caught_up(self, timeout_s: float = 1800) -> StreamStatus:
        """Until the online store holds a minute closed in the last 3 minutes (the stream keeps up), and the offline
        store holds the backfill: Feature Store replicates to S3 within about 15 minutes, Athena reads it then."""
        deadline = self.clock() + timeout_s
        features = self.features()
        while not self._online_is_fresh(features):
            self._wait_or_fail(deadline, "no minute reached the online store")
        backfilled = self._poller_state(self.outputs).get("backfilled_minutes", 0)
        while features.offline_stats()["records"] < 0.99 * backfilled:
            self._wait_or_fail(deadline, f"the offline store does not hold the {backfilled:,} backfilled minutes yet")
        return self.status()

    def _online_is_fresh(self, features) -> bool:
        newest = features.latest_online(1, lookback_minutes=10)
        return bool(newest) and newest[0]["window_start"] >= self.clock() // 60 * 60 - 180

    def _wait_or_fail(self, deadline: float, what: str) -> None:
        if self.clock() > deadline:
            raise AwsSetupError(f"{what}: check ws.stream.describe() (the poller, Flink and the writer's queue), "
                                "then run the cell again")
        time.sleep(self.poll_s)

    # ------------------------------------------------------------ health

    def status(self) -> StreamStatus:
        outputs = self.outputs
        application = self._application(outputs)
        newest = self.features().latest_online(1)
        state = FLINK_STATES.get(application["ApplicationStatus"], application["ApplicationStatus"].lower())
        return StreamStatus(
            state=state, running=state == "running",
            where=f"Managed Flink application {outputs['FlinkApplicationName']}, logs in {outputs['FlinkLogGroup']}",
            source=self._poller_state(outputs).get("source"),
            watermark=minute_iso(newest[0]["event_time"]) if newest else None,
            detail=self._figures(outputs, application))

    def _poller_state(self, outputs: dict) -> dict:
        return PollerState(self.context.client("s3"), self._settings(outputs)).load()

    def _figures(self, outputs: dict, application: dict) -> dict:
        sqs = self.context.client("sqs")
        with explained("reading the writer's on-failure queue"):
            queued = sqs.get_queue_attributes(QueueUrl=outputs["WriterDeadLetterQueueUrl"],
                                              AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
        return {"flink_status": application["ApplicationStatus"],
                "poller_position": self._poller_state(outputs).get("source_pos"),
                "failed_feature_writes": int(queued.get("ApproximateNumberOfMessages", 0)),
                "dead_letter_files": len(self._dead_letter_keys(outputs))}

    def describe(self) -> pd.DataFrame:
        meaning = {"flink_status": "the Managed Flink application's status (RUNNING when healthy)",
                   "poller_position": "where the poller Lambda resumes (unix s for the simulator)",
                   "failed_feature_writes": "batches in the writer's SQS on-failure queue (redrive them)",
                   "dead_letter_files": "files of events later than the allowed lateness, in S3"}
        figures = self.status().detail
        return pd.DataFrame({"figure": list(figures), "value": [figures[k] for k in figures],
                             "meaning": [meaning[k] for k in figures]})

    def _dead_letter_keys(self, outputs: dict) -> list[str]:
        s3 = self.context.client("s3")
        with explained("listing the dead letters"):
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=outputs["Bucket"], Prefix="dead-letters/")
            objects = [o for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        return [o["Key"] for o in sorted(objects, key=lambda o: o["LastModified"], reverse=True)]

    def dead_letters(self, limit: int = 10) -> pd.DataFrame:
        outputs, s3, rows = self.outputs, self.context.client("s3"), []
        for key in self._dead_letter_keys(outputs):
            body = s3.get_object(Bucket=outputs["Bucket"], Key=key)["Body"].read().decode()
            rows += [json.loads(line) for line in body.splitlines() if line.strip()]
            if len(rows) >= limit:
                break
        frame = pd.DataFrame(rows[:limit], columns=["hash", "time", "fee", "size", "weight", "watermark", "reason"])
        for column in ("time", "watermark"):
            frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
        return frame

    # ------------------------------------------------------------ the simulator's knobs

    def set_speed(self, speed: float) -> ClockSpeed:
        """On AWS the simulator runs on the wall clock: the speed stays 1, whatever is asked."""
        if speed != 1:
            log.warning("speed=%s: on AWS the simulator runs on the wall clock (speed 1)", speed)
        return ClockSpeed(sim_now=minute_iso(self.clock()), speed=1.0)

    def inject_drift(self, fee_factor: float = 3.0, rate_factor: float = 1.0) -> DriftApplied:
        """Append a drift to the simulator's drift file in S3, from the next minute; the poller reads it."""
        from dataclasses import asdict

        from helpers.ingestion.sources.simulator import Drift

        outputs, s3 = self.outputs, self.context.client("s3")
        drift = Drift(start=self.clock() // 60 * 60 + 60, fee_factor=fee_factor, rate_factor=rate_factor)
        key = PollerSettings.drift_key
        try:
            drifts = json.loads(s3.get_object(Bucket=outputs["Bucket"], Key=key)["Body"].read())["drifts"]
        except s3.exceptions.NoSuchKey:
            drifts = []
        with explained("writing the drift file"):
            s3.put_object(Bucket=outputs["Bucket"], Key=key, Body=json.dumps({"drifts": [*drifts, asdict(drift)]}))
        return DriftApplied(drift_from=minute_iso(drift.start), fee_factor=fee_factor, rate_factor=rate_factor)

    def stop(self) -> StreamStatus:
        outputs = self.outputs
        scheduler.set_state(self.context, outputs["PollerScheduleName"], "DISABLED")
        if self._application(outputs)["ApplicationStatus"] == "RUNNING":
            with explained("stopping the Flink application"):
                self.context.client("kinesisanalyticsv2").stop_application(
                    ApplicationName=outputs["FlinkApplicationName"])
        return self.status()
