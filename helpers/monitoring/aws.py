"""The monitor on AWS: each endpoint scored on its own captured forecasts, a CloudWatch alarm per stage, and the
retrain the alarms start (stack ``<prefix>-monitoring``, ``cloudformation/monitoring.yaml``).

Three Lambda functions, from the one Lambda zip:

- :func:`forecast_handler` (EventBridge Scheduler, every ``ForecastEveryMinutes``): the application. For each stage
  whose endpoint is InService it sends the newest features through ``sagemaker-runtime``, so SageMaker's data
  capture keeps the request and the forecast under ``data-capture/<endpoint>/<variant>/YYYY/MM/DD/HH/``.
- :func:`score_handler` (Scheduler, ``{"stage": ...}``, every few minutes): scores every period of
  ``ScoringPeriodMinutes`` that matured since the last one it scored (kept in ``monitoring/scored-<stage>.json``)
  on that stage's own capture only, with the local monitor's code (:mod:`helpers.monitoring.scoring`), and puts
  ``weighted_quantile_loss`` and the threshold in force (read from SSM now) to CloudWatch, stamped with the
  period's start. It also keeps the stage's alarm on the version the endpoint serves, and while the alarm is in
  ALARM asks for a retrain each period, as the local monitor does (a rejected retrain is tried again on more data).
- :func:`retrain_handler` (an EventBridge rule on ``<prefix>-wql-*`` going to ALARM, and the score function's
  repeats): :func:`helpers.core.policies.retrain_skip_reason`, then ``StartPipelineExecution`` on
  ``<prefix>-model-build`` with the retrain's build settings, or the skip; every request is a JSON record under
  ``monitoring/retrains/``. Its reserved concurrency is 1: one decision at a time, so two alarms firing together
  cannot start two executions.

:class:`AwsMonitor` is :class:`helpers.monitoring.interface.Monitor` for the notebooks. Time on AWS is the wall
clock: a period is scored once the offline store holds its final minutes (21 minutes after it ends), and the
waits poll.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import pandas as pd

from helpers.aws import scheduler
from helpers.aws.session import AwsContext, explained
from helpers.core.hyperparameters import DeepARHyperparameters
from helpers.core.policies import retrain_skip_reason
from helpers.core.times import minute_iso
from helpers.endpoints.interface import ENDPOINTS, served_version, variant_version
from helpers.monitoring import scoring
from helpers.monitoring.cloudwatch import ALARM, NAMESPACE, THRESHOLD_METRIC, WQL_METRIC, metric_dimensions, stage_alarm
from helpers.monitoring.interface import MonitorStatus
from helpers.monitoring.settings import MonitorSettings
from helpers.training.interface import WQL_THRESHOLD, ParameterNotFound

log = logging.getLogger("helpers.monitoring.aws")

SETTINGS = "/rtmlops/monitoring/settings"  # on AWS /<prefix>/monitoring/settings: MonitorSettings as JSON
SCORING_PERIOD = "/rtmlops/monitoring/scoring-period-minutes"  # the stack's ScoringPeriodMinutes, for callers
DEFAULT_PERIOD_S = 3600
RUNNING = {"Executing", "Stopping"}
PENDING = "PendingManualApproval"
RECORDS = "monitoring/retrains/"
LATEST_RETRAIN = "monitoring/retrain-latest.json"  # the execution the last retrain started: in flight until it ends
MAX_CATCH_UP_S = 86400  # a stage not scored for longer (the monitor stopped) resumes a day back
CAPTURE_SLACK_S = 3600  # capture hours read either side of a period: a forecast's origin precedes its capture
ACTUALS_GRACE_S = 3600  # a period with forecasts but no actuals yet waits this long past maturity for Athena
KEEP_PERIODS = 5000  # scored periods kept in monitoring/scored-<stage>.json (the timeline's points and versions)
METRIC_BATCH = 20
STACK_PARAMETERS = {"forecast_every_minutes": "ForecastEveryMinutes", "evaluation_periods": "EvaluationPeriods",
                    "datapoints_to_alarm": "DatapointsToAlarm"}  # settings the stack also holds
AWS_ONLY_SETTINGS = {"scoring_period_minutes": "ScoringPeriodMinutes"}  # a stack parameter only: the alarms' period
SCORING_PERIODS = (5, 10, 15, 20, 30, 60)  # the stack's ScoringPeriodMinutes.AllowedValues


def endpoint_name(prefix: str, stage: str) -> str:
    return f"{prefix}-{stage}"


def alarm_name(prefix: str, stage: str) -> str:
    return f"{prefix}-wql-{stage}"


def pipeline_name(prefix: str) -> str:
    return f"{prefix}-model-build"


def model_package_group(prefix: str) -> str:
    return f"{prefix}-avg-fee-deepar"


def scored_key(stage: str) -> str:
    return f"monitoring/scored-{stage}.json"


def _not_found(error) -> bool:
    code = error.response.get("Error", {}).get("Code", "")
    message = error.response.get("Error", {}).get("Message", "")
    return code in ("ResourceNotFound", "ResourceNotFoundException", "NoSuchKey", "404") or (
        code == "ValidationException" and ("not found" in message.lower() or "could not find" in message.lower()
                                           or "does not exist" in message.lower()))


# ---------------------------------------------------------------- settings, and the alarm a deploy moves


def load_settings(context: AwsContext) -> MonitorSettings:
    """The monitor's settings: SSM ``/<prefix>/monitoring/settings`` (JSON), the defaults for what it lacks."""
    from helpers.training.ssm import SsmParameters

    try:
        values = SsmParameters(context).get_json(SETTINGS)
    except ParameterNotFound:
        values = {}
    known = set(MonitorSettings.field_names())
    return MonitorSettings(**{k: v for k, v in values.items() if k in known})


def save_settings(context: AwsContext, settings: MonitorSettings, by: str = "monitor.start") -> None:
    from helpers.training.ssm import SsmParameters

    SsmParameters(context).put(SETTINGS, json.dumps(asdict(settings), sort_keys=True), by=by,
                               reason="the monitor's settings")


def scoring_period_s(context: AwsContext) -> int:
    """The alarms' and the scoring's period: ``SCORING_PERIOD_MINUTES`` in the stack's Lambdas, else the stack's
    SSM parameter ``/<prefix>/monitoring/scoring-period-minutes``, else an hour."""
    from helpers.training.ssm import SsmParameters

    if os.environ.get("SCORING_PERIOD_MINUTES"):
        return 60 * int(os.environ["SCORING_PERIOD_MINUTES"])
    try:
        return 60 * int(SsmParameters(context).get(SCORING_PERIOD))
    except ParameterNotFound:
        return DEFAULT_PERIOD_S


def describe_endpoint(context: AwsContext, stage: str) -> dict | None:
    """DescribeEndpoint of ``<prefix>-<stage>``; None if there is none."""
    from botocore.exceptions import ClientError

    try:
        with explained(f"describing the endpoint {endpoint_name(context.prefix, stage)}"):
            return context.client("sagemaker").describe_endpoint(EndpointName=endpoint_name(context.prefix, stage))
    except ClientError as error:
        if _not_found(error):
            return None
        raise


def put_stage_alarm(context: AwsContext, stage: str, model_version: int | None,
                    settings: MonitorSettings | None = None, period_s: int | None = None) -> dict:
    """Create or move the stage's alarm ``<prefix>-wql-<stage>`` onto ``model_version``: PutMetricAlarm from
    :meth:`~helpers.monitoring.cloudwatch.AlarmSettings.metric_alarm_request` (metric math wQL - threshold on that
    ``ModelVersion``, M of N, missing data not breaching). Call it after each deploy with the version the stage now
    serves (None: the stage's metrics without a version). ``settings`` (M of N) default to the saved monitor
    settings, ``period_s`` to the stack's scoring period. An existing alarm keeps its state. Returns the request.

    Permissions: ``cloudwatch:DescribeAlarms`` and ``cloudwatch:PutMetricAlarm`` on the alarm, ``ssm:GetParameter``
    on ``/<prefix>/monitoring/*`` unless both settings and period are given, and ``cloudwatch:TagResource`` only
    when the alarm does not exist yet (it is created with the workshop's tags; ``ws.monitor.start()`` creates both).
    """
    settings = settings or load_settings(context)
    period_s = period_s or scoring_period_s(context)
    alarm = stage_alarm(alarm_name(context.prefix, stage), stage, model_version, settings.evaluation_periods,
                        settings.datapoints_to_alarm, period=period_s)
    served = f"version {model_version}" if model_version is not None else "any version"
    request = {**alarm.metric_alarm_request(),
               "AlarmDescription": (f"{stage}: wQL of {served} minus the threshold published beside it, "
                                    f"{alarm.datapoints_to_alarm} of {alarm.evaluation_periods} periods of "
                                    f"{period_s // 60} minutes, missing data not breaching. Going to ALARM starts a "
                                    f"retrain ({context.prefix}-retrain).")}
    cloudwatch = context.client("cloudwatch")
    with explained(f"putting the alarm {alarm.name}"):
        if not cloudwatch.describe_alarms(AlarmNames=[alarm.name])["MetricAlarms"]:
            request["Tags"] = context.tags  # CloudWatch applies tags when it creates an alarm, never after
        cloudwatch.put_metric_alarm(**request)
    return request


def _alarm_key(alarm: dict) -> tuple:
    """What decides an alarm: the version it watches, its period and M of N."""
    metrics = {m["Id"]: m for m in alarm.get("Metrics", [])}
    stat = metrics.get("score", {}).get("MetricStat", {})
    dimensions = {d["Name"]: d["Value"] for d in stat.get("Metric", {}).get("Dimensions", [])}
    return dimensions.get("ModelVersion"), stat.get("Period"), alarm.get("EvaluationPeriods"), \
        alarm.get("DatapointsToAlarm")


def sync_stage_alarm(context: AwsContext, stage: str, settings: MonitorSettings, period_s: int) -> dict | None:
    """Put the stage's alarm unless it already watches the version the endpoint serves, with these settings, as the
    local monitor does on every run; returns the request when it put one."""
    version = served_version(describe_endpoint(context, stage))
    with explained("describing the monitoring alarms"):
        found = context.client("cloudwatch").describe_alarms(
            AlarmNames=[alarm_name(context.prefix, stage)])["MetricAlarms"]
    wanted = (None if version is None else str(version), period_s, settings.evaluation_periods,
              settings.datapoints_to_alarm)
    if found and _alarm_key(found[0]) == wanted:
        return None
    return put_stage_alarm(context, stage, version, settings, period_s)


# ---------------------------------------------------------------- S3 documents


def _get_json(s3, bucket: str, key: str):
    from botocore.exceptions import ClientError

    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as error:
        if _not_found(error):
            return None
        raise


def _put_json(s3, bucket: str, key: str, document) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(document, default=str).encode(),
                  ContentType="application/json")


def _keys(s3, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


# ---------------------------------------------------------------- the application: forecasts to capture


def request_forecasts(context: AwsContext, features, settings: MonitorSettings) -> dict[str, str]:
    """Ask each InService endpoint for the next forecast with the newest ``history_minutes`` of features; returns
    stage -> the variant that answered, or why it was not asked (its status, or the error)."""
    from helpers.core.deepar_json import deepar_request

    answered, body = {}, None
    for stage in ENDPOINTS:
        described = describe_endpoint(context, stage)
        status = described["EndpointStatus"] if described else "missing"
        if status != "InService":
            answered[stage] = status
            continue
        try:
            if body is None:
                body = json.dumps(deepar_request(features.recent("avg_fee", settings.history_minutes)))
            answer = context.client("sagemaker-runtime").invoke_endpoint(
                EndpointName=endpoint_name(context.prefix, stage), ContentType="application/json",
                Accept="application/json", Body=body)
            answered[stage] = answer.get("InvokedProductionVariant", "")
        except Exception as error:  # one endpoint's failure must not cost the other its forecast
            log.exception("forecast request to %s failed", stage)
            answered[stage] = f"failed: {error}"
    return answered


# ---------------------------------------------------------------- scoring a stage's periods


def read_forecasts(s3, bucket: str, endpoint: str, start: float, end: float,
                   prefix: str = scoring.CAPTURE_PREFIX) -> list[scoring.Forecast]:
    """The forecasts ``endpoint`` captured in the UTC hours touching [start, end), every production variant, each
    forecast with the version its variant serves; a malformed line is skipped (and logged)."""
    variants = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/{endpoint}/",
                                                              Delimiter="/"):
        variants += [p["Prefix"].rstrip("/").rsplit("/", 1)[1] for p in page.get("CommonPrefixes", [])]
    found, seen, malformed = [], set(), 0
    for variant in sorted(variants):
        version = variant_version(variant)
        if version is None:
            log.warning("skipping the capture of %s/%s: not a model-vN variant", endpoint, variant)
            continue
        for hour in range(int(start) // 3600 * 3600, int(math.ceil(end)), 3600):
            for key in _keys(s3, bucket, scoring.capture_hour_prefix(endpoint, variant, hour, prefix)):
                if scoring.parse_capture_key(key, prefix) is None:
                    continue
                events, bad = scoring.capture_events(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                malformed += bad
                for event in events:
                    for forecast in scoring.forecasts_in_event(event, version):
                        if forecast.event_id not in seen:  # data capture delivers at least once
                            seen.add(forecast.event_id)
                            found.append(forecast)
    if malformed:
        log.warning("%s: skipped %d malformed capture line(s)", endpoint, malformed)
    return found


def score_stage(context: AwsContext, stage: str, bucket: str, period_s: int, actuals, threshold, now: float,
                capture_prefix: str = scoring.CAPTURE_PREFIX) -> list[dict]:
    """Score every period of ``stage`` that matured since the last one scored, and put its datapoints.

    ``actuals(start, end)``: avg_fee per UTC minute over [start, end) (the offline store, Athena); ``threshold()``:
    the threshold in force (SSM), read once, now. A period without any scored point gets no datapoint (missing data
    for the alarm). Returns one result per period, as the local monitor's ``run_now``."""
    s3, cloudwatch = context.client("s3"), context.client("cloudwatch")
    endpoint = endpoint_name(context.prefix, stage)
    state = _get_json(s3, bucket, scored_key(stage)) or {"stage": stage, "last_end": None, "periods": []}
    until = scoring.offline_mature_until(now)
    window_start = (until - MAX_CATCH_UP_S) // period_s * period_s
    forecasts = None
    if state["last_end"] is None:  # the first run: from the first period with a forecast, at most a day back
        forecasts = read_forecasts(s3, bucket, endpoint, window_start - CAPTURE_SLACK_S, until + CAPTURE_SLACK_S,
                                   capture_prefix)
        first = max(window_start, min(f.origin for f in forecasts) // period_s * period_s) if forecasts \
            else until // period_s * period_s
    else:
        first = max(window_start, math.ceil(state["last_end"] / period_s) * period_s)
    due = scoring.due_periods(first, until, period_s)
    if not due:
        if state["last_end"] is None:
            _put_json(s3, bucket, scored_key(stage), {**state, "last_end": first, "period_s": period_s})
        return []
    if forecasts is None:
        forecasts = read_forecasts(s3, bucket, endpoint, due[0] - CAPTURE_SLACK_S,
                                   due[-1] + period_s + CAPTURE_SLACK_S, capture_prefix)
    covering = {p: [f for f in forecasts if f.covers(p, p + period_s)] for p in due}
    with_forecasts = [p for p in due if covering[p]]
    series = actuals(min(with_forecasts), max(with_forecasts) + period_s) if with_forecasts \
        else pd.Series(dtype=float)
    bar = float(threshold())
    results, data, records = [], [], []
    for p in due:
        result = scoring.score_period(covering[p], series, p, p + period_s)
        if covering[p] and result["points"] == 0 and p + period_s > until - ACTUALS_GRACE_S:
            log.warning("%s %s: forecasts but no actuals in the offline store yet; trying again next run", stage,
                        minute_iso(p))
            break  # Athena has not caught up: neither this period nor a later one is final yet
        data += scoring.metric_data(stage, result, bar, datetime.fromtimestamp(p, timezone.utc))
        results.append({"stage": stage, "hour": minute_iso(p), **result, "threshold": bar})
        records.append({**results[-1], "start": p, "scored_at": now})
    for i in range(0, len(data), METRIC_BATCH):
        with explained(f"putting {stage}'s metrics"):
            cloudwatch.put_metric_data(Namespace=NAMESPACE, MetricData=data[i:i + METRIC_BATCH])
    if records:  # after the datapoints: a failed put is scored again (the same values) by the next run
        _put_json(s3, bucket, scored_key(stage), {"stage": stage, "period_s": period_s,
                                                  "last_end": records[-1]["start"] + period_s,
                                                  "periods": (state["periods"] + records)[-KEEP_PERIODS:]})
    for r in results:
        log.info("%s %s: wQL %s over %d points of %d forecasts (versions %s)", stage, r["hour"],
                 "n/a" if r["wql"] is None else f"{r['wql']:.4f}", r["points"], r["forecasts"], r["versions"])
    return results


def ask_again_while_in_alarm(context: AwsContext, stage: str, retrain_function: str | None) -> str:
    """While the stage's alarm is in ALARM, ask the retrain function again (asynchronously), as the local monitor
    does each period; returns the alarm's state."""
    name = alarm_name(context.prefix, stage)
    with explained(f"describing the alarm {name}"):
        found = context.client("cloudwatch").describe_alarms(AlarmNames=[name])["MetricAlarms"]
    state = found[0]["StateValue"] if found else "not created yet"
    if state == ALARM and retrain_function:
        event = {"source": "helpers.monitoring.score", "detail-type": "Alarm still in ALARM",
                 "detail": {"alarmName": name, "state": {"value": ALARM, "reason": found[0].get("StateReason", ""),
                                                         "timestamp": minute_iso(time.time())}}}
        context.client("lambda").invoke(FunctionName=retrain_function, InvocationType="Event",
                                        Payload=json.dumps(event).encode())
    return state


# ---------------------------------------------------------------- the retrain: one execution in flight


def execution_in_flight(context: AwsContext, bucket: str) -> str | None:
    """An execution of the model-build pipeline that is Executing or Stopping (whoever started it), or the one the
    last retrain started while it runs (it may not be listed yet); None when none is."""
    from botocore.exceptions import ClientError

    sagemaker = context.client("sagemaker")
    try:
        summaries = sagemaker.list_pipeline_executions(PipelineName=pipeline_name(context.prefix),
                                                       SortBy="CreationTime", SortOrder="Descending",
                                                       MaxResults=20)["PipelineExecutionSummaries"]
    except ClientError as error:
        if not _not_found(error):
            raise
        summaries = []
    running = [s["PipelineExecutionArn"] for s in summaries if s["PipelineExecutionStatus"] in RUNNING]
    if running:
        return running[0]
    latest = _get_json(context.client("s3"), bucket, LATEST_RETRAIN)
    if latest and latest.get("execution_arn") not in {s["PipelineExecutionArn"] for s in summaries}:
        try:
            status = sagemaker.describe_pipeline_execution(
                PipelineExecutionArn=latest["execution_arn"])["PipelineExecutionStatus"]
        except ClientError as error:
            if not _not_found(error):
                raise
            return None
        return latest["execution_arn"] if status in RUNNING else None
    return None


def pending_version(context: AwsContext) -> int | None:
    """The newest model version waiting for a human's approval, if any."""
    from botocore.exceptions import ClientError

    try:
        found = context.client("sagemaker").list_model_packages(
            ModelPackageGroupName=model_package_group(context.prefix), ModelApprovalStatus=PENDING,
            SortBy="CreationTime", SortOrder="Descending", MaxResults=1)["ModelPackageSummaryList"]
    except ClientError as error:
        if not _not_found(error):
            raise
        return None
    return int(found[0]["ModelPackageVersion"]) if found else None


def retrain_build_parameter(context: AwsContext, settings: MonitorSettings) -> str:
    """The ``BuildSettings`` pipeline parameter of a retrain: the monitor's retrain fields (training days, windows,
    epochs), as the local retrain builds, on the hyperparameters in SSM (DeepAR's defaults if unreadable). The same
    JSON as :func:`helpers.training.sagemaker_pipeline.settings_parameter`."""
    from helpers.training.ssm import HYPERPARAMETERS, SsmParameters

    try:
        hyperparameters = DeepARHyperparameters.from_dict(SsmParameters(context).get_json(HYPERPARAMETERS))
    except (ParameterNotFound, ValueError, TypeError):
        hyperparameters = None
    return json.dumps(settings.retrain_settings(hyperparameters).to_parameters(), default=str)


def request_retrain(context: AwsContext, bucket: str, requested_by: str, reason: str,
                    settings: MonitorSettings | None = None, now: float | None = None) -> dict:
    """The alarm action: start the model-build pipeline unless an execution is in flight or a version awaits
    approval; the request is recorded either way (``monitoring/retrains/``). Returns the record."""
    from botocore.exceptions import ClientError

    now = time.time() if now is None else now
    settings = settings or load_settings(context)
    running = execution_in_flight(context, bucket)
    pending = pending_version(context)
    why = retrain_skip_reason(running is not None, pending)
    record = {"requested_by": requested_by, "reason": reason, "requested_at": now, "why": why,
              "execution_arn": None, "in_flight": running, "pending_version": pending}
    if why:
        record["decision"] = "skipped"
        log.info("retrain not started (%s): %s", why, reason)
    else:
        parameter = retrain_build_parameter(context, settings)
        try:
            with explained(f"starting the pipeline {pipeline_name(context.prefix)}"):
                arn = context.client("sagemaker").start_pipeline_execution(
                    PipelineName=pipeline_name(context.prefix), PipelineExecutionDisplayName=f"retrain-{int(now)}",
                    PipelineExecutionDescription=reason[:3072],
                    PipelineParameters=[{"Name": "BuildSettings", "Value": parameter}])["PipelineExecutionArn"]
        except ClientError as error:
            if not _not_found(error):
                raise
            record.update(decision="failed", why=(
                f"the pipeline {pipeline_name(context.prefix)} is not defined: define it by running a build once "
                "(notebook 03, or python -m helpers aws build)"))
            log.error("retrain could not start: %s", record["why"])
        else:
            record.update(decision="started", execution_arn=arn, build_settings=json.loads(parameter))
            _put_json(context.client("s3"), bucket, LATEST_RETRAIN, {"execution_arn": arn, "started_at": now})
            log.warning("retrain started (%s): %s", arn, reason)
    stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    _put_json(context.client("s3"), bucket, f"{RECORDS}{stamp}-{uuid.uuid4().hex[:8]}.json", record)
    return record


# ---------------------------------------------------------------- the Lambda handlers


@dataclass(frozen=True)
class LambdaEnvironment:
    """What the monitoring stack gives its functions."""

    bucket: str
    feature_group: str
    athena_workgroup: str
    period_s: int
    retrain_function: str | None = None

    @classmethod
    def from_env(cls) -> "LambdaEnvironment":
        return cls(os.environ["BUCKET"], os.environ["FEATURE_GROUP_NAME"], os.environ["ATHENA_WORKGROUP"],
                   60 * int(os.environ.get("SCORING_PERIOD_MINUTES", "60")), os.environ.get("RETRAIN_FUNCTION"))

    def features(self, context: AwsContext):
        from helpers.feature_store.aws import AwsFeatureGroup

        return AwsFeatureGroup(context, {"FeatureGroupName": self.feature_group,
                                         "AthenaWorkGroup": self.athena_workgroup})


def _lambda_context() -> AwsContext:
    logging.getLogger().setLevel(logging.INFO)
    return AwsContext()  # the prefix: $MLOPS_AWS_PREFIX; the region: Lambda's


def forecast_handler(event: dict, _context=None) -> dict:
    """Scheduler, every ForecastEveryMinutes: a forecast from each InService endpoint, which its capture keeps."""
    context, env = _lambda_context(), LambdaEnvironment.from_env()
    return request_forecasts(context, env.features(context), load_settings(context))


def actuals_from(features):
    """``actuals(start, end)`` for :func:`score_stage`: avg_fee per minute from the offline store (Athena)."""
    from helpers.core.feature_definition import FeatureStoreError

    def actuals(start: float, end: float) -> pd.Series:
        try:
            return features.training_dataset(pd.Timestamp(start, unit="s", tz="UTC"),
                                             pd.Timestamp(end, unit="s", tz="UTC"), features=["avg_fee"]).frame[
                "avg_fee"]
        except FeatureStoreError as error:  # nothing stored then: those periods have no datapoint
            log.warning("no actuals for [%s, %s): %s", minute_iso(start), minute_iso(end), error)
            return pd.Series(dtype=float)
    return actuals


def score_handler(event: dict, _context=None) -> list[dict]:
    """Scheduler (``{"stage": "staging"|"prod"}``), and ``AwsMonitor.run_now``: the stage's matured periods."""
    from helpers.training.ssm import SsmParameters

    stage = event["stage"]
    if stage not in ENDPOINTS:
        raise ValueError(f"stage {stage!r}: use one of {ENDPOINTS}")
    context, env = _lambda_context(), LambdaEnvironment.from_env()
    settings = load_settings(context)
    sync_stage_alarm(context, stage, settings, env.period_s)
    results = score_stage(context, stage, env.bucket, env.period_s, actuals_from(env.features(context)),
                          lambda: SsmParameters(context).get_float(WQL_THRESHOLD), time.time())
    if results:
        state = ask_again_while_in_alarm(context, stage, env.retrain_function)
        results = [{**r, "alarm": state} for r in results]
    return results


def retrain_handler(event: dict, _context=None) -> dict:
    """EventBridge "CloudWatch Alarm State Change" to ALARM of ``<prefix>-wql-*``, or the score function's "Alarm
    still in ALARM": a retrain started, or the skip recorded. Other events are ignored."""
    context = _lambda_context()
    detail = event.get("detail", {})
    name, state = detail.get("alarmName", ""), detail.get("state", {})
    if not name.startswith(f"{context.prefix}-wql-") or state.get("value") != ALARM:
        return {"decision": "ignored", "alarm": name, "state": state.get("value")}
    reason = f"{name} in ALARM at {state.get('timestamp', minute_iso(time.time()))}: {state.get('reason', '')}"
    return request_retrain(context, os.environ["BUCKET"], name, reason)


# ---------------------------------------------------------------- the notebooks' monitor


RETRAIN_COLUMNS = ["id", "requested_by", "reason", "status", "execution_id", "model_version", "detail",
                   "requested_at", "ended_at", "requested_sim", "ended_sim"]
TIMELINE_COLUMNS = ["stage", "hour", "wql", "points", "forecasts", "versions", "threshold"]
HISTORY_COLUMNS = ["name", "at", "old_state", "new_state", "threshold", "reason"]
FINAL = {"Skipped", "Failed", "FailedQualityGate", "Stopped", "Rejected", "Deployed"}


class AwsMonitor:
    """:class:`helpers.monitoring.interface.Monitor` on AWS (see the module's docstring).

    ``run_now`` invokes the score function for each stage and waits for it, rather than scoring here: the same
    code, role, capture reads and state file as the schedule's runs, so a "run now" and a scheduled run never
    score a period twice with different code, and this machine needs no Athena, CloudWatch or S3 write access
    beyond invoking the function. "Hours" in the waits are scoring periods (``ScoringPeriodMinutes``)."""

    def __init__(self, context: AwsContext, clock=time.time, poll_s: float = 30.0):
        self.context = context
        self.clock, self.poll_s = clock, poll_s
        self._outcomes: dict[str, dict] = {}  # retrain record key -> its final outcome
        self._records: dict[str, dict] = {}

    # ------------------------------------------------------------ the stack

    @property
    def outputs(self) -> dict[str, str]:
        from helpers.aws import stacks

        return stacks.require(self.context, "monitoring").outputs

    @property
    def period_s(self) -> int:
        return int(self.outputs["ScoringPeriodSeconds"])

    def _schedules(self, outputs: dict) -> list[str]:
        return [outputs["ForecastScheduleName"], outputs["StagingScoreScheduleName"], outputs["ProdScoreScheduleName"]]

    def _stack_parameters(self) -> dict[str, str] | None:
        from helpers.aws import stacks

        found = stacks.describe(self.context, "monitoring")
        return None if found is None else found.parameters

    def deploy(self, **parameters) -> dict[str, str]:
        """Build and upload the Lambda zip from this checkout, then create or update the stack with ``parameters``
        (``ScoringPeriodMinutes``, ``ForecastEveryMinutes``...; the rest keep their values or defaults). Returns its
        outputs. :meth:`start` calls it when the stack is missing; call it to load new code into the functions."""
        from helpers.aws import package, stacks

        key = package.upload_lambda_zip(self.context, stacks.require(self.context, "storage").outputs["Bucket"])
        wanted = {"Prefix": self.context.prefix, **parameters, "LambdaCodeKey": key}
        return stacks.deploy(self.context, "monitoring", wanted).outputs

    # ------------------------------------------------------------ start, stop, status

    def start(self, **settings) -> MonitorStatus:
        """Enable the schedules (the monitor runs from now on) and save ``settings``: :class:`MonitorSettings`
        fields, and on AWS ``scoring_period_minutes`` (5, 10, 15, 20, 30 or 60: the alarms' period; 10 makes the
        drift -> alarm -> retrain story fit in about two hours). A setting the stack holds redeploys it."""
        from helpers.aws import stacks

        fields = set(MonitorSettings.field_names())
        unknown = sorted(set(settings) - fields - set(AWS_ONLY_SETTINGS))
        if unknown:
            raise TypeError(f"start() got {unknown}: use {sorted(fields | set(AWS_ONLY_SETTINGS))}")
        current = self._stack_parameters()
        merged = MonitorSettings(**{**asdict(load_settings(self.context) if current is not None
                                             else MonitorSettings()),
                                    **{k: v for k, v in settings.items() if k in fields}})
        wanted = {name: str(getattr(merged, field)) for field, name in STACK_PARAMETERS.items()}
        if "scoring_period_minutes" in settings:
            minutes = settings["scoring_period_minutes"]
            if minutes not in SCORING_PERIODS:
                raise ValueError(f"scoring_period_minutes={minutes!r}: use one of {SCORING_PERIODS} (60 divisible "
                                 "by it; the alarms' period)")
            wanted["ScoringPeriodMinutes"] = str(minutes)
        if current is None:
            outputs = self.deploy(**wanted)
        elif any(current.get(k) != v for k, v in wanted.items()):
            outputs = stacks.deploy(self.context, "monitoring", {"Prefix": self.context.prefix, **wanted}).outputs
        else:
            outputs = self.outputs
        save_settings(self.context, merged)
        for name in self._schedules(outputs):
            scheduler.set_state(self.context, name, "ENABLED")
        period_s = int(outputs["ScoringPeriodSeconds"])
        for stage in ENDPOINTS:
            sync_stage_alarm(self.context, stage, merged, period_s)
        return self.status()

    def stop(self) -> None:
        """Disable the schedules: no more forecasts or scoring; the alarms, metrics and records stay."""
        for name in self._schedules(self.outputs):
            scheduler.set_state(self.context, name, "DISABLED")


    def _alarm_states(self) -> dict[str, dict]:
        names = {alarm_name(self.context.prefix, stage): stage for stage in ENDPOINTS}
        with explained("describing the monitoring alarms"):
            found = self.context.client("cloudwatch").describe_alarms(AlarmNames=list(names))["MetricAlarms"]
        return {names[a["AlarmName"]]: a for a in found if a["AlarmName"] in names}

    def status(self) -> MonitorStatus:
        outputs = self.outputs
        schedules = self.context.client("scheduler")
        with explained("reading the monitoring schedules"):
            states = {name: schedules.get_schedule(Name=name)["State"] for name in self._schedules(outputs)}
        alarms = self._alarm_states()
        settings = {**asdict(load_settings(self.context)),
                    "scoring_period_minutes": int(outputs["ScoringPeriodSeconds"]) // 60,
                    "schedules": states, "dashboard": outputs.get("DashboardUrl")}
        return MonitorStatus(running=all(s == "ENABLED" for s in states.values()), settings=settings,
                             alarms={stage: alarms[stage]["StateValue"] if stage in alarms else "not created yet"
                                     for stage in ENDPOINTS})

    def run_now(self) -> list[dict]:
        """Invoke the score function for both stages and wait: every period that matured since its last run."""
        function, done = self.outputs["ScoreFunctionName"], []
        for stage in ENDPOINTS:
            with explained(f"invoking {function} for {stage}"):
                answer = self.context.client("lambda").invoke(FunctionName=function,
                                                              Payload=json.dumps({"stage": stage}).encode())
            payload = json.loads(answer["Payload"].read() or b"null")
            if answer.get("FunctionError"):
                raise RuntimeError(f"{function} failed for {stage}: {payload.get('errorMessage', payload)}; its log "
                                   f"is the log group /aws/lambda/{function}")
            done += payload or []
        return done

    # ------------------------------------------------------------ what happened

    def _scored_records(self, stage: str) -> list[dict]:
        bucket = self.outputs["Bucket"]
        return (_get_json(self.context.client("s3"), bucket, scored_key(stage)) or {}).get("periods", [])

    def timeline(self, days: float = 7.0) -> pd.DataFrame:
        """One row per (period, stage): wQL and threshold as CloudWatch holds them (GetMetricData), the points,
        forecasts and versions the score function recorded. ``hour`` is the period's start."""
        period_s, now = self.period_s, self.clock()
        records = {stage: self._scored_records(stage) for stage in ENDPOINTS}
        start = (now - days * 86400) // period_s * period_s  # aligned: GetMetricData's periods start at StartTime
        values = self._metric_values(period_s, start, (now // period_s + 1) * period_s)
        rows = {}
        for stage, found in records.items():
            for r in found:
                rows[(stage, float(r["start"]))] = {"stage": stage, "hour": float(r["start"]), "wql": r["wql"],
                                                    "points": r["points"], "forecasts": r["forecasts"],
                                                    "versions": json.dumps(r["versions"]), "threshold": r["threshold"]}
        for (stage, metric, at), value in values.items():
            row = rows.setdefault((stage, at), {"stage": stage, "hour": at, "wql": None, "points": None,
                                                "forecasts": None, "versions": "[]", "threshold": None})
            row["wql" if metric == WQL_METRIC else "threshold"] = value
        frame = pd.DataFrame(sorted(rows.values(), key=lambda r: (r["hour"], r["stage"])), columns=TIMELINE_COLUMNS)
        frame["hour"] = pd.to_datetime(frame["hour"], unit="s", utc=True)
        frame["wql"] = frame["wql"].astype(float)
        frame["threshold"] = frame["threshold"].astype(float)
        return frame

    def _metric_values(self, period_s: int, start: float, end: float) -> dict[tuple, float]:
        queries = [{"Id": f"{'wql' if metric == WQL_METRIC else 'bar'}_{stage}", "ReturnData": True,
                    "MetricStat": {"Metric": {"Namespace": NAMESPACE, "MetricName": metric, "Dimensions": [
                        {"Name": k, "Value": v} for k, v in metric_dimensions(stage).items()]},
                        "Period": period_s, "Stat": "Maximum"}}
                   for stage in ENDPOINTS for metric in (WQL_METRIC, THRESHOLD_METRIC)]
        found, token = {}, {}
        cloudwatch = self.context.client("cloudwatch")
        while True:
            with explained("reading the monitoring metrics (GetMetricData)"):
                page = cloudwatch.get_metric_data(MetricDataQueries=queries, StartTime=datetime.fromtimestamp(
                    start, timezone.utc), EndTime=datetime.fromtimestamp(end, timezone.utc), **token)
            for result in page["MetricDataResults"]:
                kind, stage = result["Id"].split("_", 1)
                metric = WQL_METRIC if kind == "wql" else THRESHOLD_METRIC
                for at, value in zip(result["Timestamps"], result["Values"]):
                    found[(stage, metric, at.timestamp())] = value
            if not page.get("NextToken"):
                return found
            token = {"NextToken": page["NextToken"]}

    def alarm_history(self) -> pd.DataFrame:
        """Each alarm's state changes (DescribeAlarmHistory), with the threshold published with its newest period."""
        cloudwatch, rows = self.context.client("cloudwatch"), []
        for stage in ENDPOINTS:
            name, token = alarm_name(self.context.prefix, stage), {}
            while True:
                with explained(f"reading the history of {name}"):
                    page = cloudwatch.describe_alarm_history(AlarmName=name, HistoryItemType="StateUpdate",
                                                             ScanBy="TimestampAscending", **token)
                for item in page["AlarmHistoryItems"]:
                    data = json.loads(item.get("HistoryData") or "{}")
                    rows.append({"name": name, "at": pd.Timestamp(item["Timestamp"]).tz_convert("UTC"),
                                 "old_state": data.get("oldState", {}).get("stateValue"),
                                 "new_state": data.get("newState", {}).get("stateValue"),
                                 "threshold": None, "reason": data.get("newState", {}).get("stateReason",
                                                                                           item["HistorySummary"])})
                if not page.get("NextToken"):
                    break
                token = {"NextToken": page["NextToken"]}
        frame = pd.DataFrame(sorted(rows, key=lambda r: r["at"]), columns=HISTORY_COLUMNS)
        if len(frame):
            timeline = self.timeline()
            for i, row in frame.iterrows():
                stage = row["name"].rsplit("-", 1)[1]
                before = timeline[(timeline["stage"] == stage) & (timeline["hour"] < row["at"])
                                  & timeline["threshold"].notna()]
                frame.at[i, "threshold"] = before["threshold"].iloc[-1] if len(before) else None
        frame["at"] = pd.to_datetime(frame["at"], utc=True)
        return frame

    def retrains(self) -> pd.DataFrame:
        """Every retrain an alarm asked for: started (with its execution's outcome now) or skipped, and why."""
        s3, bucket = self.context.client("s3"), self.outputs["Bucket"]
        rows = []
        for i, key in enumerate(_keys(s3, bucket, RECORDS), start=1):
            if key not in self._records:
                self._records[key] = _get_json(s3, bucket, key)
            record = self._records[key]
            outcome = self._outcomes.get(key) or self._outcome(record)
            if outcome["status"] in FINAL:
                self._outcomes[key] = outcome
            requested = pd.Timestamp(record["requested_at"], unit="s", tz="UTC")
            ended = outcome.get("ended_at")
            rows.append({"id": i, "requested_by": record["requested_by"], "reason": record["reason"],
                         "status": outcome["status"], "execution_id": (record.get("execution_arn") or "").rsplit(
                             "/", 1)[-1] or None, "model_version": outcome.get("model_version"),
                         "detail": json.dumps({"why": outcome["why"]} if outcome.get("why") else {}),
                         "requested_at": requested, "ended_at": ended, "requested_sim": requested,
                         "ended_sim": ended})
        frame = pd.DataFrame(rows, columns=RETRAIN_COLUMNS)
        for column in ("requested_at", "ended_at", "requested_sim", "ended_sim"):
            frame[column] = pd.to_datetime(frame[column], utc=True)
        frame["model_version"] = frame["model_version"].astype("Int64") if len(frame) else frame["model_version"]
        return frame

    def _outcome(self, record: dict) -> dict:
        """Where a retrain is now: its execution's status, then its model version's approval and deployment."""
        decision, skipped_at = record.get("decision"), pd.Timestamp(record["requested_at"], unit="s", tz="UTC")
        if decision == "skipped":
            return {"status": "Skipped", "why": record["why"], "ended_at": skipped_at}
        if decision != "started":
            return {"status": "Failed", "why": record.get("why"), "ended_at": skipped_at}
        sagemaker, arn = self.context.client("sagemaker"), record["execution_arn"]
        with explained(f"describing the retrain's execution {arn.rsplit('/', 1)[-1]}"):
            described = sagemaker.describe_pipeline_execution(PipelineExecutionArn=arn)
            status = described["PipelineExecutionStatus"]
            if status in RUNNING:
                return {"status": "Executing"}
            ended = pd.Timestamp(described.get("LastModifiedTime") or skipped_at).tz_convert("UTC")
            steps = {s["StepName"]: s for s in sagemaker.list_pipeline_execution_steps(
                PipelineExecutionArn=arn)["PipelineExecutionSteps"]}
        if status != "Succeeded":
            if "GateFailed" in steps:
                return {"status": "FailedQualityGate", "why": steps["GateFailed"].get("FailureReason"),
                        "ended_at": ended}
            why = described.get("FailureReason") or next((f"{n}: {s['FailureReason']}" for n, s in steps.items()
                                                          if s.get("FailureReason")), None)
            return {"status": "Stopped" if status == "Stopped" else "Failed", "why": why, "ended_at": ended}
        package = steps.get("Register", {}).get("Metadata", {}).get("RegisterModel", {}).get("Arn")
        if not package:
            return {"status": "Failed", "why": "the execution registered no model version", "ended_at": ended}
        version = int(package.rsplit("/", 1)[1])
        with explained(f"describing model version {version}"):
            approval = sagemaker.describe_model_package(ModelPackageName=package)["ModelApprovalStatus"]
        if approval != "Approved":
            return {"status": approval, "model_version": version, "ended_at": ended}
        prod = describe_endpoint(self.context, "prod")
        serving = served_version(prod)
        if serving is not None and serving >= version and prod.get("EndpointStatus") == "InService":
            return {"status": "Deployed", "model_version": version,
                    "ended_at": pd.Timestamp(prod.get("LastModifiedTime") or ended).tz_convert("UTC")}
        return {"status": "Approved", "model_version": version, "ended_at": ended}

    def retrain_report(self) -> str:
        return scoring.retrain_report(self.retrains())

    def loop_summary(self, first_version: int, drift_at: pd.Timestamp, stage: str = "prod") -> str:
        return scoring.loop_summary(self.timeline(), first_version, drift_at, stage, period_s=self.period_s)

    # ------------------------------------------------------------ waiting for the loop (wall clock)

    def wait_for_hours(self, hours: int = 1, stage: str = "prod", timeout_s: float = 300) -> pd.DataFrame:
        """Block until ``stage`` has ``hours`` scored periods; returns them."""
        return self._wait(lambda: scoring.scored(self.timeline(), stage, hours),
                          f"{hours} scored period(s) of {stage}", timeout_s)

    def wait_for_alarm(self, timeout_s: float = 300) -> pd.DataFrame:
        """Block until an alarm goes into ALARM; returns the alarm history."""
        seen = len(self.alarm_history())

        def fired():
            history = self.alarm_history().iloc[seen:]
            return history if (history["new_state"] == ALARM).any() else None
        self._wait(fired, "an alarm", timeout_s)
        return self.alarm_history()

    def wait_for_retrain(self, outcome: str = "Deployed", timeout_s: float = 600,
                         within_hours: float | None = None) -> pd.Series | None:
        """Block until a retrain ends with ``outcome``; with ``within_hours``, None once that much time passed since
        the first alarm with none that did, and none still running (every retrain rejected, say)."""
        def ended():
            frame = self.retrains()
            done = frame[frame["status"] == outcome]
            if len(done):
                return done.iloc[-1]
            fired = self.alarm_history().query("new_state == 'ALARM'")["at"]
            late = within_hours is not None and len(fired) and \
                self.clock() > fired.min().timestamp() + within_hours * 3600
            return _GAVE_UP if late and not frame["status"].isin(["Executing"]).any() else None
        result = self._wait(ended, f"a retrain {outcome}", timeout_s)
        return None if result is _GAVE_UP else result

    def wait_for_recovery(self, after_version: int = 1, stage: str = "prod", hours: int = 2,
                          timeout_s: float = 600) -> pd.DataFrame:
        """Block until a version newer than ``after_version`` served ``stage`` alone for its last ``hours`` scored
        periods, each below the threshold in force then."""
        return self._wait(lambda: scoring.recovered(self.timeline(), after_version, stage, hours),
                          f"{stage} to recover on a version after {after_version}", timeout_s)

    def _wait(self, predicate, what: str, timeout_s: float):
        from tqdm.auto import tqdm

        deadline = time.monotonic() + timeout_s
        with tqdm(desc=f"waiting for {what}", bar_format="{desc} {elapsed} {postfix}") as bar:
            while (result := predicate()) is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no {what} within {timeout_s:.0f} s (AWS runs on the wall clock: periods of "
                                       f"{self.period_s // 60} minutes); see the dashboard "
                                       f"{self.outputs.get('DashboardUrl')}")
                status = self.status()
                if not status.running:
                    raise RuntimeError("the monitor is not running (its schedules are disabled): ws.monitor.start()")
                bar.set_postfix_str(f"{minute_iso(self.clock())}, alarms {status.alarms}")
                time.sleep(self.poll_s)
        return result


_GAVE_UP = object()  # wait_for_retrain's predicate: time is up, and no retrain is still running

