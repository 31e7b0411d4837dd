"""A local SageMaker endpoint: the container contract (/ping, /invocations) and InvokeEndpoint's REST path.

One process serves one endpoint (staging or prod) and one model version at a time. DeepAR JSON goes in and
out, as SageMaker's built-in DeepAR speaks it, so boto3's ``sagemaker-runtime`` client works against it with
``endpoint_url``. Loopback-only admin routes deploy a new version (loaded and health-checked before any
traffic moves to it, then swapped in with one reference assignment), roll back, and describe the endpoint
with SageMaker's field names. Each change is written to a state file, so a restarted endpoint serves the
same version.
"""
from __future__ import annotations

import bisect
import itertools
import json
import logging
import math
import re
import reprlib
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import pandas as pd
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from helpers.core.hyperparameters import MAX_GAP_SHARE, DeepARHyperparameters
from helpers.core.metrics import QUANTILE_NAMES
from helpers.core.times import utc_now
from helpers.endpoints.interface import variant_name
from helpers.local.clock import write_json_atomic
from helpers.training import deepar

log = logging.getLogger("helpers.endpoints.serving")

MAX_BODY_BYTES = 6 * 1024 * 1024  # SageMaker's InvokeEndpoint payload limit
MAX_INSTANCES = 100
MAX_TARGET_POINTS = 100_000
MAX_ABS_VALUE = 1e30  # float32 holds 3.4e38; DeepAR's mean scaling sums up to context_length values
MAX_NUM_SAMPLES = 1000
OUTPUT_TYPES = ("mean", "quantiles", "samples")
DEFAULT_NUM_SAMPLES = 100
DEFAULT_OUTPUT_TYPES = ("mean", "quantiles")
CONTENT_TYPES = ("application/json", "application/jsonlines")
# The model keeps no frequency of its own; every series of this project is on a 1-minute grid.
FREQ = DeepARHyperparameters.time_freq
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOOPBACK = ("127.0.0.1", "::1")
CLIENT_CLOSED = 499  # nginx's code for a client that went away before its request was read: not a server error
_TIME_LAYOUT = re.compile(r"\d{4}-\d{2}-\d{2}([ T]\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?)?([+-]\d{2}:\d{2}|Z)?")
# InvokeEndpoint's answer names the production variant that served it (boto3: InvokedProductionVariant)
VARIANT_HEADER = "x-amzn-invoked-production-variant"
_QUANTILE_LAYOUT = re.compile(r"0\.\d*[1-9]")  # "0.5", "0.05": one spelling per level, so response keys match


class RequestError(Exception):
    """An error answered as ``{"error": {"field", "message"}}``; ``error_type`` becomes boto3's error code."""

    def __init__(self, status: int, field: str | None, message: str, error_type: str | None = "ValidationError"):
        super().__init__(message)
        self.status, self.field, self.message, self.error_type = status, field, message, error_type


# Pydantic models document the API in /openapi.json; requests are validated by hand, so every problem
# is a 400 that names the field and the fix (not FastAPI's 422).
class InstanceSchema(BaseModel):
    start: str = Field(description="first time of the series, 'YYYY-MM-DD HH:MM:SS' (UTC)",
                       examples=["2026-01-01 00:00:00"])
    target: list[float | Literal["NaN"] | None] = Field(
        description=f"observed values on a {FREQ} grid; \"NaN\" or null for missing ones",
        min_length=1, max_length=MAX_TARGET_POINTS)


class ConfigurationSchema(BaseModel):
    num_samples: int = Field(DEFAULT_NUM_SAMPLES, ge=1, le=MAX_NUM_SAMPLES)
    output_types: list[Literal["mean", "quantiles", "samples"]] = list(DEFAULT_OUTPUT_TYPES)
    quantiles: list[str] = Field(list(QUANTILE_NAMES), description="strings of floats in (0, 1)")


class InvocationRequest(BaseModel):
    instances: list[InstanceSchema] = Field(min_length=1, max_length=MAX_INSTANCES)
    configuration: ConfigurationSchema | None = None


class PredictionSchema(BaseModel):
    mean: list[float] | None = None
    quantiles: dict[str, list[float]] | None = None
    samples: list[list[float]] | None = None


class InvocationResponse(BaseModel):
    predictions: list[PredictionSchema]


class ErrorDetail(BaseModel):
    field: str | None
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
    message: str = Field(description="the same, where botocore reads it for ClientError")


class DeployRequest(BaseModel):
    model_version: int
    model_path: str


@dataclass(frozen=True)
class Configuration:
    num_samples: int = DEFAULT_NUM_SAMPLES
    output_types: tuple[str, ...] = DEFAULT_OUTPUT_TYPES
    quantiles: tuple[str, ...] = QUANTILE_NAMES


@dataclass(frozen=True)
class LoadedModel:
    version: int
    path: str
    predictor: Any  # gluonts PyTorchPredictor

    @property
    def context_length(self) -> int:
        return deepar.context_length(self.predictor)


# ---- request parsing --------------------------------------------------------------------------------------

def parse_request(body: bytes, content_type: str) -> tuple[list[dict], Configuration]:
    """GluonTS entries and the configuration of a DeepAR JSON or JSON Lines request; RequestError if bad."""
    if content_type == "application/jsonlines":
        lines = [line for line in body.split(b"\n") if line.strip()]
        objects = [_json(line, f"line {i + 1}") for i, line in enumerate(lines)]
        return _instances(objects), Configuration()
    payload = _json(body, "body")
    if not isinstance(payload, dict):
        raise RequestError(400, "body", 'send a JSON object: {"instances": [{"start": ..., "target": [...]}]}')
    _no_unknown_keys(payload, ("instances", "configuration"), None)
    if "instances" not in payload:
        raise RequestError(400, "instances", 'missing: send {"instances": [{"start": ..., "target": [...]}]}')
    return _instances(payload["instances"]), _configuration(payload.get("configuration"))


def _json(text: bytes, field: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise RequestError(400, field, f"not valid JSON ({error}); send UTF-8 JSON, with \"NaN\" in quotes") from None


def _no_unknown_keys(obj: dict, allowed: tuple[str, ...], prefix: str | None) -> None:
    for key in obj:
        if key in allowed:
            continue
        field = f"{prefix}.{key}" if prefix else str(key)
        if key in ("cat", "dynamic_feat"):
            raise RequestError(400, field, "this model was trained without categories or dynamic features: "
                                           "remove the field")
        raise RequestError(400, field, f"unknown field: use only {', '.join(allowed)}")


def _instances(objects: Any) -> list[dict]:
    if not isinstance(objects, list) or not objects:
        raise RequestError(400, "instances", "send a non-empty list of {\"start\": ..., \"target\": [...]} objects")
    if len(objects) > MAX_INSTANCES:
        raise RequestError(400, "instances", f"{len(objects)} instances: send at most {MAX_INSTANCES} per request")
    return [_instance(obj, f"instances[{i}]") for i, obj in enumerate(objects)]


def _instance(obj: Any, field: str) -> dict:
    if not isinstance(obj, dict):
        raise RequestError(400, field, 'send an object {"start": "YYYY-MM-DD HH:MM:SS", "target": [...]}')
    _no_unknown_keys(obj, ("start", "target"), field)
    for key in ("start", "target"):
        if key not in obj:
            raise RequestError(400, f"{field}.{key}", "missing: every instance needs a start and a target")
    return {"start": _start(obj["start"], f"{field}.start"), "target": _target(obj["target"], f"{field}.target")}


def _start(text: Any, field: str) -> pd.Period:
    """A time without zone is UTC, as SageMaker reads it; one with a zone is converted to UTC."""
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is not None:
            moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    except (TypeError, ValueError, OverflowError) as error:
        if isinstance(text, str) and _TIME_LAYOUT.fullmatch(text) and not isinstance(error, OverflowError):
            raise RequestError(400, field, f"{reprlib.repr(text)} is an impossible date or time ({error}): "
                                           "check the day of the month (is it a leap year?) and the hour") from None
        raise RequestError(400, field, f'{reprlib.repr(text)} is not a time in years 1 to 9999: '
                                       'use "YYYY-MM-DD HH:MM:SS"') from None
    return pd.Period(moment, freq=FREQ)


def _target(values: Any, field: str) -> np.ndarray:
    if not isinstance(values, list) or not values:
        raise RequestError(400, field, 'send a non-empty list of numbers, with "NaN" or null for missing values')
    if len(values) > MAX_TARGET_POINTS:
        raise RequestError(400, field, f"{len(values)} points: send at most the last {MAX_TARGET_POINTS}")
    target = np.array([_point(value, f"{field}[{i}]") for i, value in enumerate(values)], dtype=np.float32)
    if np.isnan(target).all():
        raise RequestError(400, field, "every value is missing: send at least one observed value")
    return target


def _point(value: Any, field: str) -> float:
    if value is None or value == "NaN":
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(400, field, f'{reprlib.repr(value)} is not a number: use a number, or "NaN" or null '
                                       "for a missing value")
    if not abs(value) <= MAX_ABS_VALUE:
        raise RequestError(400, field, f"{value!r} is out of range: use values within ±{MAX_ABS_VALUE:g}")
    return value


def _configuration(obj: Any) -> Configuration:
    if obj is None:
        return Configuration()
    if not isinstance(obj, dict):
        raise RequestError(400, "configuration", "send an object with num_samples, output_types and/or quantiles")
    _no_unknown_keys(obj, ("num_samples", "output_types", "quantiles"), "configuration")
    return Configuration(
        num_samples=_num_samples(obj.get("num_samples", DEFAULT_NUM_SAMPLES)),
        output_types=_output_types(obj.get("output_types", list(DEFAULT_OUTPUT_TYPES))),
        quantiles=_quantiles(obj.get("quantiles", list(QUANTILE_NAMES))))


def _num_samples(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_NUM_SAMPLES:
        raise RequestError(400, "configuration.num_samples",
                           f"{reprlib.repr(value)}: use an integer from 1 to {MAX_NUM_SAMPLES}")
    return value


def _output_types(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise RequestError(400, "configuration.output_types", f"send a non-empty list drawn from {list(OUTPUT_TYPES)}")
    for i, kind in enumerate(value):
        if kind not in OUTPUT_TYPES:
            raise RequestError(400, f"configuration.output_types[{i}]",
                               f"{reprlib.repr(kind)}: use one of {list(OUTPUT_TYPES)}")
    return tuple(value)


def _quantiles(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise RequestError(400, "configuration.quantiles", 'send a non-empty list of strings such as ["0.1", "0.9"]')
    for i, text in enumerate(value):
        if not isinstance(text, str) or not _QUANTILE_LAYOUT.fullmatch(text):
            raise RequestError(400, f"configuration.quantiles[{i}]",
                               f'{reprlib.repr(text)}: use a string holding a number between 0 and 1 written as '
                               '"0.9" or "0.05" (a leading 0, no spaces, no trailing zeros)')
        if text in value[:i]:
            raise RequestError(400, f"configuration.quantiles[{i}]", f"{text!r} is asked for twice: ask once")
    return tuple(value)


# ---- prediction -------------------------------------------------------------------------------------------

def predict(predictor: Any, entries: list[dict], config: Configuration) -> list[dict]:
    """DeepAR JSON predictions, with only the requested output types (numpy arrays; orjson writes them)."""
    forecasts = predictor.predict(entries, num_samples=config.num_samples)
    return [_prediction(forecast, config) for forecast in forecasts]


def _prediction(forecast: Any, config: Configuration) -> dict:
    result = {}
    if "mean" in config.output_types:
        result["mean"] = forecast.mean
    if "quantiles" in config.output_types:
        result["quantiles"] = {q: forecast.quantile(float(q)) for q in config.quantiles}
    if "samples" in config.output_types:
        result["samples"] = forecast.samples
    return result


def _load_checked(version: int, path: str) -> LoadedModel:
    """Deserialize a model and check that it forecasts a synthetic series: before any traffic reaches it."""
    model = LoadedModel(version, path, deepar.load(Path(path)))
    minutes = np.arange(240)
    series = {"start": pd.Period("2026-01-01 00:00", freq=FREQ),
              "target": (100 + 10 * np.sin(2 * np.pi * minutes / 60)).astype(np.float32)}
    [result] = predict(model.predictor, [series], Configuration(num_samples=10, output_types=("mean",)))
    if result["mean"].shape != (model.predictor.prediction_length,) or not np.isfinite(result["mean"]).all():
        raise ValueError(f"health check: the forecast of a synthetic series is {result['mean']!r}")
    return model


# ---- endpoint state ---------------------------------------------------------------------------------------

class Endpoint:
    """The served model, the previous one (for rollback) and SageMaker's description of the endpoint.

    Requests read ``current`` once and use that model to the end, so a swap never disturbs one in flight.
    """

    def __init__(self, name: str, state_file: Path):
        self.name = name
        self.state_file = Path(state_file)
        self.current: LoadedModel | None = None
        self.previous: LoadedModel | None = None
        self.requested: tuple[int, str] | None = None  # what a Creating or Failed endpoint (serving none) was asked for
        self.status = "Creating"
        self.failure_reason: str | None = None
        self.in_service_since: datetime | None = None
        self.last_modified = utc_now()
        self._updating = threading.Lock()  # one deploy or rollback at a time
        self.capture: DataCapture | None = None

    def describe(self) -> dict:
        current = self.current
        version, path = (current.version, current.path) if current else self.requested or (None, None)
        return {
            "EndpointName": self.name, "EndpointStatus": self.status, "ModelVersion": version, "ModelPath": path,
            "PreviousModelVersion": self.previous.version if self.previous else None,
            "InServiceSince": _iso(self.in_service_since), "LastModifiedTime": _iso(self.last_modified),
            "FailureReason": self.failure_reason,
        }

    def deploy(self, version: int, path: str) -> dict:
        with self._exclusive():
            self.requested = None if self.current else (version, path)
            self._set_status("Updating" if self.current else "Creating")
            try:
                candidate = _load_checked(version, path)
            except Exception as error:  # any failure of a candidate must leave the served model alone
                self.failure_reason = f"model version {version} at {path} failed to load: {error}"
                self._set_status("InService" if self.current else "Failed")
                log.warning("endpoint %s: %s", self.name, self.failure_reason)
                raise RequestError(409, "model_path", f"{self.failure_reason}. The endpoint still serves "
                                   f"{self._serving()}; fix the model and deploy again.", "ModelError") from error
            self.previous, self.current = self.current, candidate
            self.requested, self.failure_reason = None, None
            self._now_in_service()
            return self.describe()

    def rollback(self) -> dict:
        with self._exclusive():
            if self.previous is None:
                raise RequestError(409, None, "there is no previous version to roll back to: deploy one instead")
            self.previous, self.current = self.current, self.previous
            self._now_in_service()
            return self.describe()

    def restore(self) -> None:
        """Reload what the state file records (the previous version first, so rollback still works)."""
        if not self.state_file.exists():
            return
        state = json.loads(self.state_file.read_text())
        for version, path in ((state.get("PreviousModelVersion"), state.get("PreviousModelPath")),
                              (state.get("ModelVersion"), state.get("ModelPath"))):
            if path is not None:
                try:
                    self.deploy(version, path)
                except RequestError as error:
                    log.error("endpoint %s: %s", self.name, error.message)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        if not self._updating.acquire(blocking=False):
            raise RequestError(409, None, f"endpoint {self.name} is {self.status}: wait for it to be InService")
        try:
            yield
        finally:
            self._updating.release()

    def _serving(self) -> str:
        return f"version {self.current.version}" if self.current else "no model"

    def _now_in_service(self) -> None:
        self.in_service_since = utc_now()
        self._set_status("InService")
        log.info("endpoint %s serves model version %s from %s", self.name, self.current.version, self.current.path)

    def _set_status(self, status: str) -> None:
        self.status, self.last_modified = status, utc_now()
        state = self.describe() | {"PreviousModelPath": self.previous.path if self.previous else None}
        write_json_atomic(self.state_file, state)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


# ---- metrics ----------------------------------------------------------------------------------------------

class Metrics:
    """Prometheus counters and a latency histogram, updated on the event loop's thread only (so no locks)."""

    def __init__(self, endpoint_name: str):
        self.labels = f'endpoint="{endpoint_name}"'
        self.requests: Counter[tuple[str, int]] = Counter()
        self.errors: Counter[tuple[str, str]] = Counter()
        self.latency_counts: dict[str, list[int]] = {}  # per path: count per bucket, the last one +Inf
        self.latency_sum: Counter[str] = Counter()

    def observe(self, path: str, status: int, error_type: str | None, seconds: float) -> None:
        self.requests[path, status] += 1
        if status >= 400:
            self.errors[path, error_type or f"HTTP{status}"] += 1
        counts = self.latency_counts.setdefault(path, [0] * (len(LATENCY_BUCKETS) + 1))
        counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum[path] += seconds

    def render(self, model_version: int | None) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        lines = ["# HELP endpoint_requests_total HTTP requests by route and status code.",
                 "# TYPE endpoint_requests_total counter"]
        lines += [f'endpoint_requests_total{{{self.labels},path="{path}",code="{code}"}} {n}'
                  for (path, code), n in sorted(self.requests.items())]
        lines += ["# HELP endpoint_errors_total Error responses by route and error type (x-amzn-ErrorType).",
                  "# TYPE endpoint_errors_total counter"]
        lines += [f'endpoint_errors_total{{{self.labels},path="{path}",error_type="{kind}"}} {n}'
                  for (path, kind), n in sorted(self.errors.items())]
        lines += ["# HELP endpoint_request_duration_seconds Time from request to response, by route.",
                  "# TYPE endpoint_request_duration_seconds histogram"]
        for path, counts in sorted(self.latency_counts.items()):
            labels = f'{self.labels},path="{path}"'
            bounds = [f"{bound:g}" for bound in LATENCY_BUCKETS] + ["+Inf"]
            lines += [f'endpoint_request_duration_seconds_bucket{{{labels},le="{bound}"}} {total}'
                      for bound, total in zip(bounds, itertools.accumulate(counts))]
            lines += [f"endpoint_request_duration_seconds_sum{{{labels}}} {self.latency_sum[path]:.6f}",
                      f"endpoint_request_duration_seconds_count{{{labels}}} {sum(counts)}"]
        lines += ["# HELP endpoint_model_version The model version served (NaN while none is).",
                  "# TYPE endpoint_model_version gauge",
                  f"endpoint_model_version{{{self.labels}}} {'NaN' if model_version is None else model_version}"]
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """Counts and times every response; plain ASGI, cheaper on the hot path than BaseHTTPMiddleware."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        response = {"status": 500, "error_type": None}  # what an exception that escapes everything becomes

        async def send_and_note(message: dict) -> None:
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                response["error_type"] = dict(message["headers"]).get(b"x-amzn-errortype", b"").decode() or None
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")  # the route template, so paths cannot explode the label set
            self.metrics.observe(route.path if route else "unmatched", response["status"], response["error_type"],
                                 time.perf_counter() - started)


# ---- data capture -----------------------------------------------------------------------------------------

class DataCapture:
    """Every served request and its response, one JSON line each, in SageMaker's data capture format.

    Files are ``<directory>/<variant>/YYYY/MM/DD/HH/<endpoint>.jsonl`` by production variant and UTC inference
    time, as SageMaker lays them out in S3; the variant names the model version (``variant_name``), so a monitor
    can score every forecast this endpoint served, by version, and only those. Each event has SageMaker's
    metadata: an id (also the ``x-inference-id`` response header) and its time.
    """

    def __init__(self, directory: Path, endpoint_name: str):
        self.directory = Path(directory)
        self.endpoint_name = endpoint_name
        self._lock = threading.Lock()  # requests run in parallel threads; lines must not interleave

    def record(self, variant: str, content_type: str, request: bytes, response: bytes) -> str:
        event_id, now = uuid.uuid4().hex, utc_now()
        line = orjson.dumps({
            "captureData": {
                "endpointInput": {"observedContentType": content_type, "mode": "INPUT",
                                  "data": request.decode("utf-8", "replace"), "encoding": "JSON"},
                "endpointOutput": {"observedContentType": content_type, "mode": "OUTPUT",
                                   "data": response.decode(), "encoding": "JSON"},
            },
            "eventMetadata": {"eventId": event_id, "inferenceTime": now.isoformat()},
            "eventVersion": "0",
        }, option=orjson.OPT_APPEND_NEWLINE)
        path = self.directory / variant / f"{now:%Y/%m/%d/%H}" / f"{self.endpoint_name}.jsonl"
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as capture:
                capture.write(line)
        return event_id


def read_capture(directory: Path) -> list[dict]:
    """The captured events under ``directory``, oldest first; a line cut short by a crash is skipped."""
    events = [event for path in sorted(Path(directory).rglob("*.jsonl")) for event in read_capture_file(path)[0]]
    return sorted(events, key=lambda event: event["eventMetadata"]["inferenceTime"])


def read_capture_file(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """The events of one capture file from byte ``offset`` on, and the offset after the last complete line (a
    line still being written is left for the next read; a corrupt one is skipped)."""
    with open(path, "rb") as capture:
        capture.seek(offset)
        data = capture.read()
    complete = data[:data.rfind(b"\n") + 1]
    events = []
    for line in complete.splitlines():
        try:
            events.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            log.warning("skipping a corrupt data capture line in %s", path)
    return events, offset + len(complete)


# ---- the app ----------------------------------------------------------------------------------------------

_INVOCATION_DOCS: dict[str, Any] = {
    "response_class": Response,
    "openapi_extra": {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InvocationRequest"}},
        "application/jsonlines": {"schema": {"$ref": "#/components/schemas/InstanceSchema"},
                                  "description": "one instance per line; the default configuration"}}}},
    "responses": {200: {"model": InvocationResponse, "description": "DeepAR predictions; header "
                                                                        f"{VARIANT_HEADER}: the variant that answered"},
                  **{status: {"model": ErrorResponse, "description": why} for status, why in (
                      (400, "bad JSON or a bad field"), (413, "body over 6 MB"), (415, "another content type"),
                      (503, "no model loaded yet"))}},
}


def create_app(endpoint_name: str, state_file: Path, capture_dir: Path | None = None) -> FastAPI:
    """The endpoint's app, serving the model version its state file records (if any); with ``capture_dir``,
    every request and response is captured there."""
    endpoint = Endpoint(endpoint_name, state_file)
    endpoint.capture = DataCapture(capture_dir, endpoint_name) if capture_dir else None
    endpoint.restore()
    metrics = Metrics(endpoint_name)
    app = FastAPI(title=f"Local SageMaker endpoint {endpoint_name}", version="1",
                  description="SageMaker's container contract and InvokeEndpoint path, DeepAR JSON in and out.")
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_exception_handler(RequestError, _on_request_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.include_router(_runtime_routes(endpoint, metrics))
    app.include_router(_admin_routes(endpoint))
    _document_invocation_request(app)
    return app


def _runtime_routes(endpoint: Endpoint, metrics: Metrics) -> APIRouter:
    router = APIRouter()

    @router.get("/ping", responses={503: {"model": ErrorResponse}})
    def ping() -> Response:
        if endpoint.current is None:
            raise _not_ready(endpoint)
        return Response()

    @router.post("/invocations", **_INVOCATION_DOCS)
    def invocations(request: Request, body: bytes = Depends(_read_body)) -> Response:
        return _invoke(endpoint, body, request.headers.get("content-type"))

    @router.post("/endpoints/{name}/invocations", **_INVOCATION_DOCS)
    def invoke_endpoint(name: str, request: Request, body: bytes = Depends(_read_body)) -> Response:
        if name != endpoint.name:
            raise RequestError(400, "EndpointName", f"Endpoint {name} not found. This server serves endpoint "
                                                    f"{endpoint.name}: call /endpoints/{endpoint.name}/invocations")
        return _invoke(endpoint, body, request.headers.get("content-type"))

    @router.get("/metrics", response_class=Response)
    async def prometheus() -> Response:  # async: on the event loop's thread, where the middleware counts
        model = endpoint.current
        return Response(metrics.render(model.version if model else None), media_type="text/plain; version=0.0.4")

    return router


def _admin_routes(endpoint: Endpoint) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin (loopback only)"], dependencies=[Depends(_loopback_only)])

    @router.post("/deploy", responses={409: {"model": ErrorResponse}})
    def deploy(request: DeployRequest) -> dict:
        return endpoint.deploy(request.model_version, request.model_path)

    @router.post("/rollback", responses={409: {"model": ErrorResponse}})
    def rollback() -> dict:
        return endpoint.rollback()

    @router.get("/describe")
    def describe() -> dict:
        return endpoint.describe()

    return router


async def _read_body(request: Request) -> bytes:
    """The raw body. Read to its end even when too large, so the client is answered rather than cut off."""
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size <= MAX_BODY_BYTES:
                chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError(CLIENT_CLOSED, "body", f"the client disconnected after {size} bytes, before the end of "
                                                  "its request; nothing was predicted", "ClientDisconnect") from None
    if size > MAX_BODY_BYTES:
        raise RequestError(413, "body", f"{size} bytes is over SageMaker's limit of {MAX_BODY_BYTES} bytes: "
                                        "send fewer instances, or shorter targets, per request")
    return b"".join(chunks)


def _invoke(endpoint: Endpoint, body: bytes, content_type_header: str | None) -> Response:
    content_type = _content_type(content_type_header)
    model = endpoint.current  # read once: a swap during this request does not touch it
    if model is None:
        raise _not_ready(endpoint)
    entries, config = parse_request(body, content_type)
    _check_context(entries, model.context_length)
    predictions = predict(model.predictor, entries, config)
    if content_type == "application/jsonlines":
        content = b"".join(orjson.dumps(p, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)
                           for p in predictions)
    else:
        content = orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)
    headers = {VARIANT_HEADER: variant_name(model.version)}
    if endpoint.capture is not None:
        headers["x-inference-id"] = endpoint.capture.record(headers[VARIANT_HEADER], content_type, body, content)
    return Response(content, media_type=content_type, headers=headers)


def _check_context(entries: list[dict], context_length: int) -> None:
    """The network reads the last ``context_length`` points: mostly gaps there and its forecast is noise (one
    observed value among 200 NaN gave a negative mean fee)."""
    needed = math.ceil(context_length * (1 - MAX_GAP_SHARE))
    for i, entry in enumerate(entries):
        observed = int(np.count_nonzero(~np.isnan(entry["target"][-context_length:])))
        if observed < needed:
            raise RequestError(400, f"instances[{i}].target", f"{observed} observed values in the last "
                                    f"{context_length} (the model's context window): send at least {needed}")


def _content_type(header: str | None) -> str:
    media_type = (header or "").split(";")[0].strip().lower()
    if media_type not in CONTENT_TYPES:
        raise RequestError(415, "Content-Type", f"{reprlib.repr(header)} is not supported: "
                                                f"use {' or '.join(CONTENT_TYPES)}")
    return media_type


def _not_ready(endpoint: Endpoint) -> RequestError:
    return RequestError(503, None, f"endpoint {endpoint.name} is {endpoint.status} and serves no model yet: "
                                   "deploy one, or wait for the deployment to finish", "ServiceUnavailable")


def _loopback_only(request: Request) -> None:
    if not request.client or request.client.host not in LOOPBACK:
        raise RequestError(403, None, "the admin routes answer on loopback only: call them from this machine", None)


def _document_invocation_request(app: FastAPI) -> None:
    """Add the DeepAR request schema to /openapi.json: the routes read raw bytes, so FastAPI cannot infer it."""
    request = InvocationRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = app.openapi().setdefault("components", {}).setdefault("schemas", {})
    schemas.update(request.pop("$defs"), InvocationRequest=request)


def _error_response(error: RequestError) -> Response:
    body = {"error": {"field": error.field, "message": error.message},
            "message": f"{error.field}: {error.message}" if error.field else error.message}
    headers = {"x-amzn-ErrorType": error.error_type} if error.error_type else None
    return Response(orjson.dumps(body), status_code=error.status, media_type="application/json", headers=headers)


async def _on_request_error(request: Request, error: RequestError) -> Response:
    return _error_response(error)


async def _on_validation_error(request: Request, error: RequestValidationError) -> Response:
    """FastAPI's 422 (an admin body that does not fit its model) as this server's 400."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
    return _error_response(RequestError(400, field, f"{first['msg']}: see /docs for the request's schema"))


async def _on_http_error(request: Request, error: HTTPException) -> Response:
    """Unknown routes and methods, in the same error format."""
    return _error_response(RequestError(error.status_code, None, f"{request.method} {request.url.path}: "
                                                                 f"{error.detail}; see /docs for the routes", None))


def serve(endpoint_name: str, port: int, state_file: Path, host: str = "127.0.0.1",
          capture_dir: Path | None = None) -> None:
    """Run the endpoint in the foreground until SIGTERM or SIGINT; in-flight requests finish first."""
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the handler it found. This one
    # makes that (or a SIGTERM while the model loads) a clean exit, so the caller's cleanup still runs.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    deepar.use_inference_threads()  # requests run in parallel threads, each forecast on one core
    app = create_app(endpoint_name, state_file, capture_dir)
    uvicorn.run(app, host=host, port=port, workers=1, access_log=False, log_level="info")


def _exit_cleanly(signum: int, frame: Any) -> None:
    raise SystemExit(0)
