"""Approval, staging and production endpoints: the deploy half of the loop (notebook 04).

- Approving a registered version (with who and why) updates the quality gate's
  threshold by the original rule, then deploys the version to **staging**
  automatically, as the approval triggered the deploy pipeline in the original.
- Staging is smoke-tested for real: an invocation with the latest features,
  checked for shapes, quantile order and a sane loss against what happened.
- **Production** takes a version only through :func:`promote`, a second manual
  decision, and only if it is Approved, was InService on staging and passed the
  staging smoke test (the promotion guard).

Each endpoint is its own process (``helpers.serving``) on a port from
``endpoints/config.json``; a deploy swaps the model blue/green inside it: the new
version is loaded and health-checked before any request reaches it.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from helpers import daemon
from helpers.clock import write_json_atomic
from helpers.config import Paths
from helpers.feature_store import open_tx_per_minute
from helpers.metrics import QUANTILE_NAMES, mean_weighted_quantile_loss
from helpers.params import CURRENT_MODEL_WQL, WQL_THRESHOLD, ParameterStore
from helpers.pipeline import ExecutionStore
from helpers.registry import MODEL_GROUP, ModelRegistry, ModelVersion
from helpers.sqlite import SQLiteFile

log = logging.getLogger("helpers.deploy")

ENDPOINTS = ("staging", "prod")
DEFAULT_PORTS = {"staging": 8081, "prod": 8082}
THRESHOLD_UPDATE_RATE = 0.5  # the original rule's rate
SMOKE_HISTORY_MINUTES = 1440  # history sent with the smoke test's request
SMOKE_WQL_FACTOR, SMOKE_WQL_FLOOR = 3.0, 0.5  # "sane": wQL <= max(floor, factor x the version's test wQL)


class PromotionError(RuntimeError):
    """Production refused a version; the message says which condition failed and what to do."""


# ---------------------------------------------------------------- endpoint processes


def ports(paths: Paths) -> dict[str, int]:
    """Each endpoint's port: endpoints/config.json, created from MLOPS_STAGING_PORT / MLOPS_PROD_PORT or defaults."""
    config = paths.endpoints / "config.json"
    if not config.exists():
        paths.endpoints.mkdir(parents=True, exist_ok=True)
        write_json_atomic(config, {name: int(os.environ.get(f"MLOPS_{name.upper()}_PORT", DEFAULT_PORTS[name]))
                                   for name in ENDPOINTS})
    return json.loads(config.read_text())


def url(paths: Paths, name: str) -> str:
    _check_name(name)
    return f"http://127.0.0.1:{ports(paths)[name]}"


def state_file(paths: Paths, name: str) -> Path:
    return paths.endpoints / f"{name}.json"


def capture_dir(paths: Paths, name: str) -> Path:
    """Where the endpoint captures the requests it serves and its forecasts (SageMaker's data capture)."""
    return paths.endpoints / "capture" / name


def start_endpoint(state_dir=None, name: str = "staging", wait_s: float = 60) -> dict:
    """Start the endpoint's process if it is not running; returns its description."""
    paths = Paths.at(state_dir)
    _check_name(name)
    if not daemon.running(paths.pid_file(f"endpoint-{name}")):
        port = ports(paths)[name]
        if _port_in_use(port):
            raise RuntimeError(f"port {port} for endpoint {name!r} is in use by another program: set "
                               f"MLOPS_{name.upper()}_PORT before the first start, or edit "
                               f"{paths.endpoints / 'config.json'}")
        daemon.start(paths.root, ["serve-endpoint", name], paths.root / "logs" / f"endpoint-{name}.out",
                     lambda _: _answers(paths, name), wait_s, f"endpoint {name!r}")
    return describe(paths.root, name)


def stop_endpoint(state_dir=None, name: str = "staging") -> dict:
    paths = Paths.at(state_dir)
    daemon.terminate(paths.pid_file(f"endpoint-{name}"))
    return describe(paths.root, name)


def stop_endpoints(state_dir=None) -> None:
    for name in ENDPOINTS:
        stop_endpoint(state_dir, name)


def describe(state_dir=None, name: str = "staging") -> dict:
    """DescribeEndpoint: status (Creating, InService, Updating, Failed; OutOfService when its process is down),
    the model version, and since when."""
    paths = Paths.at(state_dir)
    if daemon.running(paths.pid_file(f"endpoint-{name}")):
        return httpx.get(f"{url(paths, name)}/admin/describe", timeout=10).json()
    saved = json.loads(state_file(paths, name).read_text()) if state_file(paths, name).exists() else {}
    return {**saved, "EndpointName": name, "EndpointStatus": "OutOfService"}


def _answers(paths: Paths, name: str) -> bool:
    try:
        httpx.get(f"{url(paths, name)}/admin/describe", timeout=1).raise_for_status()
        return True
    except httpx.HTTPError:
        return False


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _check_name(name: str) -> None:
    if name not in ENDPOINTS:
        raise ValueError(f"endpoint {name!r}: use one of {ENDPOINTS}")


# ---------------------------------------------------------------- deployment history


class DeploymentLog(SQLiteFile):
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS deployments (
        id INTEGER PRIMARY KEY AUTOINCREMENT, endpoint TEXT NOT NULL, model_version INTEGER, action TEXT NOT NULL,
        status TEXT NOT NULL, by TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL, at REAL NOT NULL);
    CREATE TABLE IF NOT EXISTS smoke_tests (
        id INTEGER PRIMARY KEY AUTOINCREMENT, endpoint TEXT NOT NULL, model_version INTEGER NOT NULL,
        passed INTEGER NOT NULL, detail TEXT NOT NULL, at REAL NOT NULL);
    """

    def __init__(self, paths: Paths):
        super().__init__(paths.endpoints / "deployments.db")

    def record(self, endpoint: str, version: int | None, action: str, status: str, by: str, reason: str,
               detail: dict) -> None:
        self._conn.execute("INSERT INTO deployments (endpoint, model_version, action, status, by, reason, detail, at)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (endpoint, version, action, status, by, reason, json.dumps(detail), time.time()))

    def record_smoke(self, endpoint: str, version: int, passed: bool, detail: dict) -> None:
        self._conn.execute("INSERT INTO smoke_tests (endpoint, model_version, passed, detail, at)"
                           " VALUES (?, ?, ?, ?, ?)",
                           (endpoint, version, int(passed), json.dumps(detail, default=float), time.time()))

    def was_in_service(self, endpoint: str, version: int) -> bool:
        return self._conn.execute("SELECT 1 FROM deployments WHERE endpoint = ? AND model_version = ?"
                                  " AND status = 'InService'", (endpoint, version)).fetchone() is not None

    def smoke_passed(self, endpoint: str, version: int) -> bool:
        row = self._conn.execute("SELECT passed FROM smoke_tests WHERE endpoint = ? AND model_version = ?"
                                 " ORDER BY id DESC LIMIT 1", (endpoint, version)).fetchone()
        return bool(row and row[0])

    def history(self) -> pd.DataFrame:
        frame = pd.read_sql("SELECT endpoint, model_version, action, status, by, reason, at FROM deployments"
                            " ORDER BY id", self._conn)
        frame["at"] = pd.to_datetime(frame["at"], unit="s", utc=True)
        return frame


# ---------------------------------------------------------------- deploy, rollback


def deploy(state_dir=None, name: str = "staging", version: int | None = None, by: str = "deploy pipeline",
           reason: str = "") -> dict:
    """Roll ``name`` to ``version`` blue/green. Production goes through the promotion guard."""
    paths = Paths.at(state_dir)
    registry = ModelRegistry(paths.registry)
    model = registry.get(MODEL_GROUP, version) if version is not None else registry.latest(status="Approved")
    if model is None or model.approval_status != "Approved":
        status = model.approval_status if model else "no approved version"
        raise PromotionError(f"only an Approved version is deployed ({status}): approve it first "
                             "(python -m helpers approve VERSION --by NAME --reason WHY)")
    if name == "prod":
        _promotion_guard(paths, model.version)
    start_endpoint(paths.root, name)
    response = httpx.post(f"{url(paths, name)}/admin/deploy", timeout=300, json={
        "model_version": model.version, "model_path": str(registry.model_path(MODEL_GROUP, model.version))})
    described = response.json()
    deployments = DeploymentLog(paths)
    if response.status_code != 200:
        deployments.record(name, model.version, "deploy", "Failed", by, reason, described)
        raise RuntimeError(f"deploying version {model.version} to {name} failed: {_error(described)}; "
                           f"{name} keeps serving version {describe(paths.root, name).get('ModelVersion')}")
    deployments.record(name, model.version, "deploy", described["EndpointStatus"], by, reason, described)
    registry.set_stage_alias(name, model.version)
    log.info("endpoint %s now serves version %s", name, model.version)
    return described


def rollback(state_dir=None, name: str = "staging", by: str = "user", reason: str = "rollback") -> dict:
    """Swap ``name`` back to the version it served before the last deploy."""
    paths = Paths.at(state_dir)
    response = httpx.post(f"{url(paths, name)}/admin/rollback", timeout=300)
    described = response.json()
    if response.status_code != 200:
        raise RuntimeError(f"rollback of {name} refused: {_error(described)}")
    DeploymentLog(paths).record(name, described["ModelVersion"], "rollback", described["EndpointStatus"], by, reason,
                                described)
    ModelRegistry(paths.registry).set_stage_alias(name, described["ModelVersion"])
    return described


def _error(body: dict) -> str:
    """The message of an endpoint's JSON error body."""
    return body.get("error", {}).get("message") or body.get("message") or str(body)


# ---------------------------------------------------------------- approval and promotion


def approve(state_dir=None, version: int | None = None, by: str = "", reason: str = "",
            update_rate: float = THRESHOLD_UPDATE_RATE) -> dict:
    """Approve a version: update the threshold, deploy it to staging, smoke-test staging."""
    paths = Paths.at(state_dir)
    registry = ModelRegistry(paths.registry)
    version = version if version is not None else pending_version(paths.root).version
    model = registry.set_approval(MODEL_GROUP, version, "Approved", by, reason)
    threshold = update_threshold_on_approval(ParameterStore(paths.params), model.metrics["mean_wQuantileLoss"],
                                             update_rate, by=by, version=version,
                                             floor=model.metrics.get("worst_hour_wQuantileLoss"))
    staging = deploy(paths.root, "staging", version, by=by, reason=f"approved: {reason}")
    return {"model_version": version, "threshold": threshold, "staging": staging,
            "smoke_test": smoke_test(paths.root, "staging")}


def reject(state_dir=None, version: int | None = None, by: str = "", reason: str = "") -> dict:
    paths = Paths.at(state_dir)
    registry = ModelRegistry(paths.registry)
    version = version if version is not None else pending_version(paths.root).version
    model = registry.set_approval(MODEL_GROUP, version, "Rejected", by, reason)
    return {"model_version": model.version, "approval_status": model.approval_status}


def pending_version(state_dir=None) -> ModelVersion:
    """The newest version awaiting approval; if there is none, a ValueError that says why, from the last build."""
    paths = Paths.at(state_dir)
    pending = ModelRegistry(paths.registry).latest(status="PendingManualApproval")
    if pending is None:
        raise ValueError(f"no model version is pending approval: {why_nothing_is_pending(paths)}")
    return pending


def require_in_service(state_dir=None) -> dict[str, dict]:
    """Both endpoints' descriptions; if either is not InService, a ValueError that says what to run."""
    paths = Paths.at(state_dir)
    described = {name: describe(paths.root, name) for name in ENDPOINTS}
    down = [name for name, d in described.items() if d.get("EndpointStatus") != "InService"]
    if down:
        pending = ModelRegistry(paths.registry).latest(status="PendingManualApproval")
        hint = (f"version {pending.version} awaits approval: run notebook 04" if pending else
                why_nothing_is_pending(paths) + ", then notebook 04")
        raise ValueError(f"{' and '.join(down)} not InService: {hint}")
    return described


def why_nothing_is_pending(paths: Paths) -> str:
    """The newest model build's outcome, as a reason and what to run next."""
    builds = ExecutionStore(paths.pipelines).list("model-build", limit=1)
    rebuild = "run notebook 03 (or python -m helpers train)"
    if builds.empty:
        return f"no model has been built yet: {rebuild}"
    last = builds.iloc[0]
    if last["status"] == "FailedQualityGate":
        return (f"the last model build ({last['execution_id']}) was rejected by the quality gate: "
                f"{last['failure_reason'].removeprefix('QualityGate: ')}. Notebook 03 says what to do; then {rebuild}")
    if last["status"] != "Succeeded":
        return f"the last model build ({last['execution_id']}) {last['status']}: {last['failure_reason']}; {rebuild}"
    return f"the last build's version has been decided already: {rebuild} for a new one"



def update_threshold_on_approval(params: ParameterStore, new_wql: float, update_rate: float = THRESHOLD_UPDATE_RATE,
                                 by: str = "approval", version: int | None = None, floor: float | None = None) -> dict:
    """The original rule: if new < threshold, threshold = new + |new - threshold| x rate, and current = new.

    With a fix: the new threshold is never below ``floor``, the model's worst hour on its own test windows
    (so it may rise). The alarm judges single hours against this threshold, and a good model's hourly wQL
    varies with the hour's fee spikes around its mean: a threshold the model itself missed hour by hour in
    testing would make a freshly retrained model breach it at once, the original's problem.
    """
    old_threshold = params.get_float(WQL_THRESHOLD)
    old_current = _current(params)
    change = {"old_threshold": old_threshold, "new_threshold": old_threshold, "old_current_wql": old_current,
              "new_current_wql": old_current, "update_rate": update_rate, "floor": floor}
    if new_wql < old_threshold:
        moved = new_wql + abs(new_wql - old_threshold) * update_rate
        change["new_threshold"] = moved if floor is None else max(moved, floor)
        change["new_current_wql"] = new_wql
        why = f"approval of model version {version}: mean wQL {new_wql:.4f}"
        params.put(WQL_THRESHOLD, change["new_threshold"], by=by, reason=why)
        params.put(CURRENT_MODEL_WQL, new_wql, by=by, reason=why)
    log.info("threshold %.4f -> %.4f, current model wQL %s -> %.4f", old_threshold, change["new_threshold"],
             old_current, change["new_current_wql"] if change["new_current_wql"] is not None else float("nan"))
    return change


def _current(params: ParameterStore) -> float | None:
    try:
        return params.get_float(CURRENT_MODEL_WQL)
    except KeyError:
        return None


def promote(state_dir=None, version: int | None = None, by: str = "", reason: str = "") -> dict:
    """The second approval: deploy the version staging serves (or ``version``) to production, guard first."""
    paths = Paths.at(state_dir)
    if not by or not reason:
        raise ValueError("say who promotes and why: by='your name', reason='...'")
    version = version if version is not None else describe(paths.root, "staging").get("ModelVersion")
    if version is None:
        raise PromotionError("staging serves no model: approve a version first, which deploys it to staging")
    return deploy(paths.root, "prod", version, by=by, reason=f"promoted: {reason}")


def _promotion_guard(paths: Paths, version: int) -> None:
    deployments = DeploymentLog(paths)
    if not deployments.was_in_service("staging", version):
        raise PromotionError(f"version {version} was never InService on staging: approve it (which deploys it to "
                             "staging) before promoting it")
    if not deployments.smoke_passed("staging", version):
        raise PromotionError(f"version {version} has not passed the staging smoke test: run "
                             "deploy.smoke_test(state_dir, 'staging') while staging serves it")


# ---------------------------------------------------------------- invoking, smoke test


def deepar_request(history: pd.Series, num_samples: int = 100, quantiles=QUANTILE_NAMES,
                   output_types=("mean", "quantiles")) -> dict:
    """A SageMaker DeepAR request for one series; gaps are sent as "NaN"."""
    return {"instances": [{"start": history.index[0].strftime("%Y-%m-%d %H:%M:%S"),
                           "target": [float(v) if np.isfinite(v) else "NaN" for v in history.to_numpy(float)]}],
            "configuration": {"num_samples": num_samples, "output_types": list(output_types),
                              "quantiles": list(quantiles)}}


def invoke(state_dir=None, name: str = "staging", request: dict | None = None) -> dict:
    """POST a DeepAR request to the endpoint's InvokeEndpoint path; returns the parsed response."""
    paths = Paths.at(state_dir)
    response = httpx.post(f"{url(paths, name)}/endpoints/{name}/invocations", json=request, timeout=60)
    if response.status_code != 200:
        raise RuntimeError(f"{name} answered {response.status_code}: {response.text}")
    return response.json()


def latest_minutes(state_dir=None, minutes: int = SMOKE_HISTORY_MINUTES) -> pd.Series:
    """The newest ``minutes`` of avg_fee from the feature store, on the complete grid."""
    features = open_tx_per_minute(Paths.at(state_dir).feature_store)
    try:
        return features.recent("avg_fee", minutes)
    finally:
        features.close()


def smoke_test(state_dir=None, name: str = "staging") -> dict:
    """A real invocation with the latest features, the last prediction_length minutes held out: the answer must
    have the right shape, ordered quantiles, and a sane loss against what really happened."""
    paths = Paths.at(state_dir)
    served = describe(paths.root, name)
    version = served.get("ModelVersion")
    if served.get("EndpointStatus") != "InService" or version is None:
        raise RuntimeError(f"endpoint {name} is {served.get('EndpointStatus')}: deploy a version first")
    model = ModelRegistry(paths.registry).get(MODEL_GROUP, version)
    horizon = int(model.hyperparameters["prediction_length"])
    series = latest_minutes(paths.root, SMOKE_HISTORY_MINUTES + horizon)
    started = time.perf_counter()
    prediction = invoke(paths.root, name, deepar_request(series.iloc[:-horizon]))["predictions"][0]
    latency = time.perf_counter() - started
    quantiles = np.array([prediction["quantiles"][q] for q in QUANTILE_NAMES])
    bound = max(SMOKE_WQL_FLOOR, SMOKE_WQL_FACTOR * model.metrics["mean_wQuantileLoss"])
    checks = {
        "shape": quantiles.shape == (len(QUANTILE_NAMES), horizon) and len(prediction["mean"]) == horizon,
        "finite": bool(np.isfinite(quantiles).all()),
        "quantiles_ordered": bool((np.diff(quantiles, axis=0) >= -1e-9).all()),
    }
    actuals = series.iloc[-horizon:].to_numpy(float)
    forecasts = {"mean": np.array(prediction["mean"]), **dict(zip(QUANTILE_NAMES, quantiles))}
    wql = mean_weighted_quantile_loss(actuals, forecasts) if checks["shape"] and checks["finite"] else float("inf")
    checks["loss_sane"] = wql <= bound
    result = {"endpoint": name, "model_version": version, "passed": all(checks.values()), "checks": checks,
              "mean_wQuantileLoss": wql, "sane_bound": bound, "latency_s": latency,
              "window_start": str(series.index[-horizon])}
    DeploymentLog(paths).record_smoke(name, version, result["passed"], result)
    log.info("smoke test of %s (version %s): %s", name, version, "passed" if result["passed"] else f"FAILED {checks}")
    return result
