"""The local SageMaker endpoint, served for real on loopback: DeepAR JSON in and out, client errors,
deploys, swaps under load, rollbacks, restarts, and boto3's sagemaker-runtime client against it."""
from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import boto3
import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
import uvicorn
from botocore.exceptions import ClientError
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import wait_for
from helpers.core.hyperparameters import DeepARHyperparameters
from helpers.endpoints import serving
from helpers.training import deepar

pytestmark = pytest.mark.slow

ENDPOINT = "staging"
HORIZON = DeepARHyperparameters.prediction_length
SERIES = [round(100 + 20 * float(np.sin(i / 10)), 3) for i in range(120)]


def _train(seed: int, workdir: Path) -> Path:
    hp = DeepARHyperparameters(context_length=30, epochs=1, num_batches_per_epoch=3, num_cells=8,
                                      num_instances_per_pass=8)
    rng = np.random.default_rng(seed)
    minutes = np.arange(3 * 24 * 60)
    series = 100 + 20 * np.sin(2 * np.pi * minutes / 1440) + rng.normal(0, 2, minutes.size)
    result = deepar.train(hp, pd.Timestamp("2026-01-01", tz="UTC"), series[:-HORIZON], [series], seed=seed,
                          workdir=workdir)
    return deepar.save(result.predictor, workdir / "model")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[int, Path]:
    """Two tiny real DeepAR models, versions 1 and 2 (different seeds)."""
    root = tmp_path_factory.mktemp("models")
    return {version: _train(seed, root / f"v{version}") for version, seed in ((1, 11), (2, 22))}


@contextmanager
def running(state_file: Path) -> Iterator[httpx.Client]:
    """A real endpoint server on a free loopback port, in a background thread, and a client for it."""
    app = serving.create_app(ENDPOINT, state_file)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP: asyncio sets TCP_NODELAY
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout_s=30, what="the endpoint to start")
        base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with httpx.Client(base_url=base_url, trust_env=False, timeout=60) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def endpoint(models, tmp_path_factory) -> Iterator[httpx.Client]:
    """A shared endpoint serving version 1; tests that deploy start their own."""
    with running(tmp_path_factory.mktemp("endpoint") / "state.json") as client:
        assert deploy(client, 1, models[1]).status_code == 200
        yield client


def deploy(client: httpx.Client, version: int, path: Path) -> httpx.Response:
    return client.post("/admin/deploy", json={"model_version": version, "model_path": str(path)})


def describe(client: httpx.Client) -> dict:
    return client.get("/admin/describe").json()


def request(target: list | None = None, **configuration) -> dict:
    body = {"instances": [{"start": "2026-01-01 00:00:00", "target": target or SERIES}]}
    if configuration:
        body["configuration"] = configuration
    return body


# ---- lifecycle --------------------------------------------------------------------------------------------

def test_deploy_update_and_restart(models, tmp_path, monkeypatch):
    state_file = tmp_path / "state.json"
    with running(state_file) as client:
        assert client.get("/ping").status_code == 503
        assert describe(client)["EndpointStatus"] == "Creating"
        not_ready = client.post("/invocations", json=request())
        assert not_ready.status_code == 503 and "no model" in not_ready.json()["error"]["message"]

        created = deploy(client, 1, models[1]).json()
        assert created["EndpointStatus"] == "InService" and created["ModelVersion"] == 1
        assert created["InServiceSince"].endswith("+00:00") and created["FailureReason"] is None
        assert client.get("/ping").status_code == 200

        # Hold the new version's loading: the endpoint is Updating and version 1 still serves.
        release, real_load = threading.Event(), deepar.load

        def slow_load(path):
            release.wait(30)
            return real_load(path)

        monkeypatch.setattr(deepar, "load", slow_load)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(deploy, client, 2, models[2])
            wait_for(lambda: describe(client)["EndpointStatus"] == "Updating", timeout_s=30, what="Updating")
            during = client.post("/invocations", json=request(num_samples=10))
            assert during.status_code == 200 and during.headers[serving.VARIANT_HEADER] == "model-v1"
            assert deploy(client, 3, models[2]).status_code == 409  # one update at a time
            release.set()
            updated = pending.result().json()
        assert updated["EndpointStatus"] == "InService"
        assert (updated["ModelVersion"], updated["PreviousModelVersion"]) == (2, 1)
        saved = json.loads(state_file.read_text())
        assert (saved["ModelVersion"], saved["ModelPath"], saved["PreviousModelVersion"]) == (2, str(models[2]), 1)

    with running(state_file) as client:  # a restarted endpoint serves the same version, and can roll back
        assert client.get("/ping").status_code == 200
        restarted = describe(client)
        assert (restarted["EndpointStatus"], restarted["ModelVersion"], restarted["PreviousModelVersion"]) == (
            "InService", 2, 1)
        assert client.post("/invocations", json=request()).headers[serving.VARIANT_HEADER] == "model-v2"
        assert client.post("/admin/rollback").json()["ModelVersion"] == 1
        assert client.post("/invocations", json=request()).headers[serving.VARIANT_HEADER] == "model-v1"


def test_failed_deploys_keep_the_served_version(models, tmp_path, monkeypatch):
    with running(tmp_path / "state.json") as client:
        first = deploy(client, 7, tmp_path / "missing")
        assert first.status_code == 409 and first.json()["error"]["field"] == "model_path"
        failed = describe(client)
        assert (failed["EndpointStatus"], failed["ModelVersion"]) == ("Failed", 7)
        assert "version 7" in failed["FailureReason"] and client.get("/ping").status_code == 503

        assert deploy(client, 1, models[1]).json()["FailureReason"] is None
        broken = shutil.copytree(models[2], tmp_path / "broken")
        (broken / "prediction-net-state.pt").write_bytes(b"not a torch file")
        refused = deploy(client, 2, broken)
        assert refused.status_code == 409 and "still serves version 1" in refused.json()["error"]["message"]
        kept = describe(client)
        assert (kept["EndpointStatus"], kept["ModelVersion"]) == ("InService", 1)
        assert "version 2" in kept["FailureReason"]

        monkeypatch.setattr(deepar, "load", lambda path: object())  # loads, but cannot forecast
        assert deploy(client, 3, models[2]).status_code == 409
        assert client.get("/ping").status_code == 200
        assert client.post("/invocations", json=request()).headers[serving.VARIANT_HEADER] == "model-v1"
        assert client.post("/admin/rollback").status_code == 409  # nothing to roll back to


def test_swap_under_load_drops_no_request(models, tmp_path):
    with running(tmp_path / "state.json") as client:
        deploy(client, 1, models[1])
        stop, results = threading.Event(), []

        def send() -> None:
            with httpx.Client(base_url=client.base_url, trust_env=False, timeout=60) as own:
                while not stop.is_set():
                    response = own.post("/invocations", json=request(SERIES[:60], num_samples=20))
                    results.append((response.status_code, response.headers.get(serving.VARIANT_HEADER)))

        def served_after(count: int, version: str) -> bool:
            return any(served == version for _, served in results[count:])

        with ThreadPoolExecutor(8) as pool:
            senders = [pool.submit(send) for _ in range(8)]
            wait_for(lambda: served_after(0, "model-v1"), timeout_s=60, what="responses from version 1")
            assert deploy(client, 2, models[2]).status_code == 200
            count = len(results)
            wait_for(lambda: served_after(count, "model-v2"), timeout_s=60, what="responses from version 2")
            assert client.post("/admin/rollback").json()["ModelVersion"] == 1
            count = len(results)
            wait_for(lambda: served_after(count, "model-v1"), timeout_s=60, what="responses from version 1 again")
            stop.set()
            for sender in senders:
                sender.result()  # a connection error in a sender fails the test here
        assert Counter(status for status, _ in results) == {200: len(results)}
        assert {served for _, served in results} == {"model-v1", "model-v2"}


# ---- DeepAR JSON in and out ------------------------------------------------------------------------------

def test_default_output_is_mean_and_nine_ordered_quantiles(endpoint):
    response = endpoint.post("/invocations", json=request())
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.headers[serving.VARIANT_HEADER] == "model-v1"
    [prediction] = response.json()["predictions"]
    assert set(prediction) == {"mean", "quantiles"}
    assert list(prediction["quantiles"]) == [f"0.{i}" for i in range(1, 10)]
    quantiles = np.array(list(prediction["quantiles"].values()))
    assert quantiles.shape == (9, HORIZON) and len(prediction["mean"]) == HORIZON
    assert (np.diff(quantiles, axis=0) >= 0).all()  # 0.1 <= 0.2 <= ... <= 0.9 at every step


def test_configuration_and_missing_values(endpoint):
    target = [1.0, "NaN", None, *SERIES[3:]]
    body = {"instances": [{"start": "2026-01-01 00:00:00", "target": target},
                          {"start": "2026-01-01T06:30:00", "target": SERIES[:40]}],
            "configuration": {"num_samples": 7, "output_types": ["samples", "quantiles"], "quantiles": ["0.5", "0.9"]}}
    response = endpoint.post(f"/endpoints/{ENDPOINT}/invocations", json=body)
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    for prediction in predictions:
        assert set(prediction) == {"samples", "quantiles"} and list(prediction["quantiles"]) == ["0.5", "0.9"]
        assert np.array(prediction["samples"]).shape == (7, HORIZON)
        assert all(low <= high for low, high in zip(prediction["quantiles"]["0.5"], prediction["quantiles"]["0.9"]))
    only_mean = endpoint.post("/invocations", json=request(output_types=["mean"])).json()["predictions"][0]
    assert list(only_mean) == ["mean"] and len(only_mean["mean"]) == HORIZON


def test_jsonlines_one_prediction_per_line(endpoint):
    lines = [{"start": "2026-01-01 00:00:00", "target": SERIES}, {"start": "2026-01-02 00:00:00",
                                                                  "target": [5, None, *SERIES[:20]]}]
    body = "\n".join(json.dumps(line) for line in lines) + "\n"
    response = endpoint.post("/invocations", content=body, headers={"content-type": "application/jsonlines"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/jsonlines"
    predictions = [json.loads(line) for line in response.text.splitlines()]
    assert len(predictions) == 2
    assert all(set(p) == {"mean", "quantiles"} and len(p["mean"]) == HORIZON for p in predictions)


# ---- client errors ----------------------------------------------------------------------------------------

JSON, LINES = "application/json", "application/jsonlines"


def _instance(**fields) -> dict:
    return {"instances": [{"start": "2026-01-01 00:00:00", "target": [1.0, 2.0, 3.0]} | fields]}


BAD_REQUESTS = {  # id: (path, content type, body, status, field named in the error)
    "not json": ("/invocations", JSON, b"{not json", 400, "body"),
    "not an object": ("/invocations", JSON, [1, 2], 400, "body"),
    "no instances": ("/invocations", JSON, {}, 400, "instances"),
    "empty instances": ("/invocations", JSON, {"instances": []}, 400, "instances"),
    "101 instances": ("/invocations", JSON, {"instances": _instance()["instances"] * 101}, 400, "instances"),
    "unknown top-level field": ("/invocations", JSON, _instance() | {"instance": []}, 400, "instance"),
    "instance not an object": ("/invocations", JSON, {"instances": [[1, 2]]}, 400, "instances[0]"),
    "no start": ("/invocations", JSON, {"instances": [{"target": [1.0]}]}, 400, "instances[0].start"),
    "bad start": ("/invocations", JSON, _instance(start="yesterday"), 400, "instances[0].start"),
    "impossible date": ("/invocations", JSON, _instance(start="2026-02-29 00:00:00"), 400, "instances[0].start"),
    "start before year 1 in UTC": ("/invocations", JSON, _instance(start="0001-01-01T00:00:00+05:00"), 400,
                                   "instances[0].start"),
    "numeric start": ("/invocations", JSON, _instance(start=20260101), 400, "instances[0].start"),
    "no target": ("/invocations", JSON, {"instances": [{"start": "2026-01-01 00:00:00"}]}, 400,
                  "instances[0].target"),
    "empty target": ("/invocations", JSON, _instance(target=[]), 400, "instances[0].target"),
    "target a string": ("/invocations", JSON, _instance(target="1,2,3"), 400, "instances[0].target"),
    "text in target": ("/invocations", JSON, _instance(target=[1, 2, 3, "x"]), 400, "instances[0].target[3]"),
    "boolean in target": ("/invocations", JSON, _instance(target=[1, True]), 400, "instances[0].target[1]"),
    "huge value": ("/invocations", JSON, _instance(target=[1, 1e31]), 400, "instances[0].target[1]"),
    "all missing": ("/invocations", JSON, _instance(target=["NaN", None]), 400, "instances[0].target"),
    "target too long": ("/invocations", JSON, _instance(target=[1.0] * 100_001), 400, "instances[0].target"),
    "cat": ("/invocations", JSON, _instance(cat=[0]), 400, "instances[0].cat"),
    "dynamic_feat": ("/invocations", JSON, _instance(dynamic_feat=[[1.0]]), 400, "instances[0].dynamic_feat"),
    "configuration a list": ("/invocations", JSON, _instance() | {"configuration": []}, 400, "configuration"),
    "unknown configuration": ("/invocations", JSON, _instance() | {"configuration": {"samples": 5}}, 400,
                              "configuration.samples"),
    **{f"num_samples {value!r}": ("/invocations", JSON, _instance() | {"configuration": {"num_samples": value}}, 400,
                                  "configuration.num_samples") for value in (0, 1001, 2.5, "100", True)},
    "output_types empty": ("/invocations", JSON, _instance() | {"configuration": {"output_types": []}}, 400,
                           "configuration.output_types"),
    "output_types median": ("/invocations", JSON, _instance() | {"configuration": {"output_types": ["median"]}},
                            400, "configuration.output_types[0]"),
    **{f"quantile {value!r}": ("/invocations", JSON, _instance() | {"configuration": {"quantiles": ["0.5", value]}},
                               400, "configuration.quantiles[1]")
       for value in (0.9, "1.0", "0", "high", None, ".5", " 0.5 ", "0.50", "0.5", "5e-1")},
    "one observed value in the context": ("/invocations", JSON, _instance(target=[7.0] + [None] * 200), 400,
                                          "instances[0].target"),
    "bad second line": ("/invocations", LINES, b'{"start": "2026-01-01 00:00:00", "target": [1]}\n{oops\n', 400,
                        "line 2"),
    "bad line instance": ("/invocations", LINES, b'{"start": "2026-01-01 00:00:00", "target": []}\n', 400,
                          "instances[0].target"),
    "unknown endpoint": ("/endpoints/prod/invocations", JSON, _instance(), 400, "EndpointName"),
    "csv": ("/invocations", "text/csv", b"1,2,3", 415, "Content-Type"),
    "no content type": ("/invocations", None, b"{}", 415, "Content-Type"),
    "over 6 MB": ("/invocations", JSON, b" " * (6 * 1024 * 1024 + 1), 413, "body"),
    "deploy without a path": ("/admin/deploy", JSON, {"model_version": 3}, 400, "model_path"),
}


@pytest.mark.parametrize("path, content_type, body, status, field", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_requests_are_answered_with_the_field_and_a_fix(endpoint, path, content_type, body, status, field):
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"content-type": content_type} if content_type else {}
    response = endpoint.post(path, content=content, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field and len(error["message"]) > 20
    assert response.headers["x-amzn-errortype"] == "ValidationError"


def _dumps(value) -> bytes:
    """JSON as any client might write it: integers past 64 bits, and Infinity (not JSON at all)."""
    return json.dumps(value).encode()


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20)
_wild_instances = st.fixed_dictionaries({"start": st.text(max_size=25) | _json_values,
                                         "target": st.lists(_json_values, max_size=10)},
                                        optional={"cat": _json_values})
_wild_bodies = st.one_of(
    st.binary(max_size=200), _json_values.map(_dumps),
    st.fixed_dictionaries({"instances": st.lists(_wild_instances, max_size=3)},
                          optional={"configuration": _json_values}).map(_dumps),
    st.lists(_wild_instances, max_size=3).map(lambda lines: b"\n".join(map(_dumps, lines))))
_content_types = st.one_of(
    st.just(JSON), st.just(LINES),
    st.sampled_from([None, "", "text/csv", "application/json; charset=utf-8", "APPLICATION/JSONLINES"]),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30))


@settings(max_examples=150, deadline=None, database=None)
@given(body=_wild_bodies, content_type=_content_types)
def test_fuzzed_bodies_and_content_types_never_get_a_server_error(endpoint, body, content_type):
    headers = {"content-type": content_type} if content_type is not None else {}
    response = endpoint.post(f"/endpoints/{ENDPOINT}/invocations", content=body, headers=headers)
    assert response.status_code in (200, 400, 415), response.text
    if response.status_code != 200:
        assert response.json()["error"]["message"]


# Requests that are valid, or nearly: any date (any zone), extreme values, gaps, any configuration. Dates keep a day
# from the ends of years 1..9999, where a zone's offset would move the UTC instant out of range (a 400 on "start").
_dates = {"min_value": datetime(1, 1, 2), "max_value": datetime(9999, 12, 30)}
_starts = st.datetimes(**_dates).map(str) | \
    st.datetimes(**_dates, timezones=st.timezones()).map(lambda moment: moment.isoformat())
_points = st.floats(-1e30, 1e30) | st.integers(-10**6, 10**6) | st.none() | st.just("NaN")
_configurations = st.fixed_dictionaries({}, optional={
    "num_samples": st.integers(1, 30),
    "output_types": st.lists(st.sampled_from(serving.OUTPUT_TYPES), min_size=1, max_size=3),
    "quantiles": st.lists(st.floats(0.001, 0.999).map(str), min_size=1, max_size=4, unique=True)})


@settings(max_examples=60, deadline=None, database=None)
@given(instances=st.lists(st.fixed_dictionaries({"start": _starts, "target": st.lists(_points, min_size=1,
                                                                                     max_size=60)}),
                          min_size=1, max_size=3),
       configuration=_configurations)
def test_fuzzed_deepar_requests_are_answered(endpoint, instances, configuration):
    response = endpoint.post("/invocations", json={"instances": instances, "configuration": configuration})
    if response.status_code == 400:  # only for a target with no observed value
        assert response.json()["error"]["field"].endswith(".target"), response.text
        return
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(instances)
    for kind in configuration.get("output_types", serving.DEFAULT_OUTPUT_TYPES):
        assert all(kind in prediction for prediction in predictions)


def test_errors_say_what_is_wrong_and_how_many_values_are_needed(endpoint):
    impossible = endpoint.post("/invocations", json=_instance(start="2026-02-29 00:00:00")).json()["error"]
    assert "impossible date" in impossible["message"] and "leap year" in impossible["message"]
    sparse = endpoint.post("/invocations", json=_instance(target=[7.0] + [None] * 200)).json()["error"]
    assert sparse["message"] == "0 observed values in the last 30 (the model's context window): send at least 15"
    spelled = endpoint.post("/invocations", json=request(quantiles=[".5"])).json()["error"]
    assert '"0.9"' in spelled["message"] and spelled["field"] == "configuration.quantiles[0]"
    enough = [None] * 15 + SERIES[:15]  # exactly half the context observed
    assert endpoint.post("/invocations", json=request(enough)).status_code == 200


def test_a_client_that_disconnects_mid_body_is_not_a_server_error(endpoint):
    labels = f'endpoint="{ENDPOINT}",path="/invocations"'
    before = _metrics(endpoint)
    host, port = endpoint.base_url.host, endpoint.base_url.port
    for _ in range(3):
        with socket.create_connection((host, port)) as sock:
            sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 10000\r\n\r\n" + b'{"instances": [')
    wait_for(lambda: _metrics(endpoint).get(f'endpoint_requests_total{{{labels},code="499"}}', 0)
             - before.get(f'endpoint_requests_total{{{labels},code="499"}}', 0) == 3, timeout_s=10,
             what="three client disconnects counted")
    after = _metrics(endpoint)
    assert after.get(f'endpoint_requests_total{{{labels},code="500"}}', 0) == \
        before.get(f'endpoint_requests_total{{{labels},code="500"}}', 0)
    assert endpoint.post("/invocations", json=request()).status_code == 200


# ---- clients and observability ----------------------------------------------------------------------------

def test_boto3_sagemaker_runtime_client(endpoint, monkeypatch, tmp_path):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_CONFIG_FILE": str(tmp_path / "none"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    runtime = boto3.client("sagemaker-runtime", region_name="eu-west-1", endpoint_url=str(endpoint.base_url))

    response = runtime.invoke_endpoint(EndpointName=ENDPOINT, Body=json.dumps(request()),
                                       ContentType="application/json")
    assert response["ContentType"] == "application/json"
    assert len(json.loads(response["Body"].read())["predictions"][0]["mean"]) == HORIZON

    for name, body, words in ((ENDPOINT, b'{"instances": []}', "instances"),
                              ("prod", json.dumps(request()).encode(), "Endpoint prod not found")):
        with pytest.raises(ClientError) as raised:
            runtime.invoke_endpoint(EndpointName=name, Body=body, ContentType="application/json")
        error = raised.value.response
        assert error["Error"]["Code"] == "ValidationError" and words in error["Error"]["Message"]
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 400


def _metrics(client: httpx.Client) -> dict[str, float]:
    samples = (line.rsplit(" ", 1) for line in client.get("/metrics").text.splitlines() if not line.startswith("#"))
    return {name: float(value) for name, value in samples}


def test_metrics_count_requests_errors_and_latency(endpoint):
    labels = f'endpoint="{ENDPOINT}",path="/invocations"'
    before = _metrics(endpoint)
    endpoint.post("/invocations", json=request(num_samples=5))
    endpoint.post("/invocations", json={"instances": []})
    after = _metrics(endpoint)

    def delta(name: str) -> float:
        return after[name] - before.get(name, 0)

    assert delta(f'endpoint_requests_total{{{labels},code="200"}}') == 1
    assert delta(f'endpoint_requests_total{{{labels},code="400"}}') == 1
    assert delta(f'endpoint_errors_total{{{labels},error_type="ValidationError"}}') == 1
    assert delta(f"endpoint_request_duration_seconds_count{{{labels}}}") == 2
    assert delta(f'endpoint_request_duration_seconds_bucket{{{labels},le="+Inf"}}') == 2
    assert after[f'endpoint_model_version{{endpoint="{ENDPOINT}"}}'] == 1


def test_openapi_documents_both_invocation_paths(endpoint):
    schema = endpoint.get("/openapi.json").json()
    for path in ("/invocations", "/endpoints/{name}/invocations"):
        content = schema["paths"][path]["post"]["requestBody"]["content"]
        assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/InvocationRequest"}
    components = schema["components"]["schemas"]
    assert {"instances", "configuration"} <= set(components["InvocationRequest"]["properties"])
    assert {"InstanceSchema", "ConfigurationSchema", "InvocationResponse", "ErrorResponse"} <= set(components)


def test_admin_routes_answer_on_loopback_only(tmp_path):
    app = serving.create_app(ENDPOINT, tmp_path / "state.json")

    async def from_elsewhere() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://endpoint") as client:
            return [await client.get("/admin/describe"), await client.post("/admin/rollback"),
                    await client.get("/ping")]

    describe_, rollback, ping = asyncio.run(from_elsewhere())
    assert describe_.status_code == rollback.status_code == 403
    assert ping.status_code == 503  # the container contract answers anyone


def test_serve_stops_cleanly_on_sigterm(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = (f"from helpers.endpoints import serving; "
            f"serving.serve({ENDPOINT!r}, {port}, {str(tmp_path / 'state.json')!r})")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def answers() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/ping", trust_env=False).status_code == 503
            except httpx.TransportError:
                return False

        wait_for(answers, timeout_s=60, what="the endpoint process to answer")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
