"""Approval, staging and production endpoints: the deploy half of the loop (notebook 04).

- Approving a registered version (with who and why) updates the quality gate's
  threshold by the original rule, then deploys the version to **staging**
  automatically, as the approval triggered the deploy pipeline in the original.
- Staging is smoke-tested for real: an invocation with the latest features,
  checked for shapes, quantile order and a sane loss against what happened.
- **Production** takes a version only through :func:`promote`, a second manual
  decision, and only if it is Approved, was InService on staging and passed the
  staging smoke test (the promotion guard).

Each endpoint is its own process (``helpers.endpoints.serving``) on a port from
``endpoints/config.json``; a deploy swaps the model blue/green inside it: the new
version is loaded and health-checked before any request reaches it.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pandas as pd

from helpers.core.policies import THRESHOLD_UPDATE_RATE, SmokeTest, deploy_refusal
from helpers.endpoints import approval
from helpers.endpoints.approval import SMOKE_HISTORY_MINUTES, update_threshold_on_approval
from helpers.endpoints.interface import ENDPOINTS, Approval, EndpointDescription, Invocation, PromotionError
from helpers.feature_store import open_tx_per_minute
from helpers.local import daemon
from helpers.local.clock import write_json_atomic
from helpers.local.config import Paths
from helpers.local.sqlite import SQLiteFile
from helpers.registry import MODEL_GROUP, ModelRegistry, ModelVersion
from helpers.registry.local import LocalRegistry, why_nothing_is_pending
from helpers.training.params import ParameterStore

log = logging.getLogger("helpers.endpoints.deploy")

DEFAULT_PORTS = {"staging": 8081, "prod": 8082}


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


def describe(state_dir=None, name: str = "staging") -> EndpointDescription:
    """DescribeEndpoint: status (Creating, InService, Updating, Failed; OutOfService when its process is down),
    the model version, and since when."""
    paths = Paths.at(state_dir)
    _check_name(name)
    if daemon.running(paths.pid_file(f"endpoint-{name}")):
        return _description(httpx.get(f"{url(paths, name)}/admin/describe", timeout=10).json())
    saved = json.loads(state_file(paths, name).read_text()) if state_file(paths, name).exists() else {}
    return _description({**saved, "EndpointName": name, "EndpointStatus": "OutOfService"})


def _description(endpoint_state: dict) -> EndpointDescription:
    """The endpoint's own record, as DescribeEndpoint shows it (the local model path stays inside the endpoint)."""
    return EndpointDescription(**{key: endpoint_state.get(key) for key in EndpointDescription.__annotations__})


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
           reason: str = "") -> EndpointDescription:
    """Roll ``name`` to a registered ``version`` blue/green. Production goes through the promotion guard."""
    paths = Paths.at(state_dir)
    _check_name(name)
    registry = ModelRegistry(paths.registry)
    model = registry.get(MODEL_GROUP, version) if version is not None else registry.latest(status="Approved")
    if model is None:
        raise PromotionError("no version is Approved: approve one first "
                             "(python -m helpers approve VERSION --by NAME --reason WHY)")
    deployments = DeploymentLog(paths)
    refusal = deploy_refusal(name, model.version, model.approval_status,
                             deployments.was_in_service("staging", model.version),
                             deployments.smoke_passed("staging", model.version))
    if refusal:
        raise PromotionError(refusal)
    start_endpoint(paths.root, name)
    # The endpoint loads the registered version's artifact, as CreateModel does from the model package's S3 URI.
    response = httpx.post(f"{url(paths, name)}/admin/deploy", timeout=300, json={
        "model_version": model.version, "model_path": str(registry.model_path(MODEL_GROUP, model.version))})
    described = response.json()
    if response.status_code != 200:
        deployments.record(name, model.version, "deploy", "Failed", by, reason, described)
        raise RuntimeError(f"deploying version {model.version} to {name} failed: {_error(described)}; "
                           f"{name} keeps serving version {describe(paths.root, name).get('ModelVersion')}")
    deployments.record(name, model.version, "deploy", described["EndpointStatus"], by, reason, described)
    registry.set_stage_alias(name, model.version)
    log.info("endpoint %s now serves version %s", name, model.version)
    return _description(described)


def rollback(state_dir=None, name: str = "staging", by: str = "user", reason: str = "rollback") -> EndpointDescription:
    """Swap ``name`` back to the version it served before the last deploy."""
    paths = Paths.at(state_dir)
    response = httpx.post(f"{url(paths, name)}/admin/rollback", timeout=300)
    described = response.json()
    if response.status_code != 200:
        raise RuntimeError(f"rollback of {name} refused: {_error(described)}")
    DeploymentLog(paths).record(name, described["ModelVersion"], "rollback", described["EndpointStatus"], by, reason,
                                described)
    ModelRegistry(paths.registry).set_stage_alias(name, described["ModelVersion"])
    return _description(described)


def _error(body: dict) -> str:
    """The message of an endpoint's JSON error body."""
    return body.get("error", {}).get("message") or body.get("message") or str(body)


# ---------------------------------------------------------------- approval and promotion


def approve(state_dir=None, version: int | None = None, by: str = "", reason: str = "",
            update_rate: float = THRESHOLD_UPDATE_RATE) -> Approval:
    """Approve a version: update the threshold, deploy it to staging, smoke-test staging."""
    paths = Paths.at(state_dir)
    registry = ModelRegistry(paths.registry)
    version = version if version is not None else pending_version(paths.root).version
    model = registry.set_approval(MODEL_GROUP, version, "Approved", by, reason)
    threshold = update_threshold_on_approval(ParameterStore(paths.params), model.metrics["mean_wQuantileLoss"],
                                             update_rate, by=by, version=version,
                                             floor=model.metrics.get("worst_hour_wQuantileLoss"))
    staging = deploy(paths.root, "staging", version, by=by, reason=f"approved: {reason}")
    return Approval(version, threshold, staging, smoke_test(paths.root, "staging"))


def reject(state_dir=None, version: int | None = None, by: str = "", reason: str = "") -> str:
    """Reject a version (the latest pending one by default); returns its approval status."""
    paths = Paths.at(state_dir)
    registry = ModelRegistry(paths.registry)
    version = version if version is not None else pending_version(paths.root).version
    return registry.set_approval(MODEL_GROUP, version, "Rejected", by, reason).approval_status


def pending_version(state_dir=None) -> ModelVersion:
    """The newest version awaiting approval; if there is none, a ValueError that says why, from the last build."""
    return LocalRegistry(Paths.at(state_dir)).pending()


def require_in_service(state_dir=None) -> dict[str, EndpointDescription]:
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


def promote(state_dir=None, version: int | None = None, by: str = "", reason: str = "") -> EndpointDescription:
    """The second approval: deploy the version staging serves (or ``version``) to production, guard first."""
    paths = Paths.at(state_dir)
    if not by or not reason:
        raise ValueError("say who promotes and why: by='your name', reason='...'")
    version = version if version is not None else describe(paths.root, "staging").get("ModelVersion")
    if version is None:
        raise PromotionError("staging serves no model: approve a version first, which deploys it to staging")
    return deploy(paths.root, "prod", version, by=by, reason=f"promoted: {reason}")


# ---------------------------------------------------------------- invoking, smoke test


def runtime_client(state_dir=None):
    """A boto3 ``sagemaker-runtime`` client for the local endpoints: InvokeEndpoint reaches the process serving
    the endpoint it names. No AWS account: the credentials are placeholders, and nothing leaves loopback."""
    import boto3
    from botocore.config import Config

    paths = Paths.at(state_dir)
    client = boto3.client("sagemaker-runtime", endpoint_url=url(paths, ENDPOINTS[0]), region_name="us-east-1",
                          aws_access_key_id="local", aws_secret_access_key="local",
                          config=Config(retries={"max_attempts": 1}, read_timeout=120))

    def to_the_named_endpoint(request, **_):  # each local endpoint is its own process, on its own port
        parts = urlsplit(request.url)
        request.url = urlunsplit(parts._replace(netloc=urlsplit(url(paths, parts.path.split("/")[2])).netloc))

    client.meta.events.register("before-send.sagemaker-runtime.InvokeEndpoint", to_the_named_endpoint)
    return client


def invoke(state_dir=None, name: str = "staging", request: dict | None = None, client=None) -> Invocation:
    """InvokeEndpoint with a DeepAR JSON request, through a sagemaker-runtime client (``client``, or a new one)."""
    _check_name(name)
    return approval.invoke(client or runtime_client(state_dir), name, name, request)


def latest_minutes(state_dir=None, minutes: int = SMOKE_HISTORY_MINUTES) -> pd.Series:
    """The newest ``minutes`` of avg_fee from the feature store, on the complete grid."""
    features = open_tx_per_minute(Paths.at(state_dir).feature_store)
    try:
        return features.recent("avg_fee", minutes)
    finally:
        features.close()


def smoke_test(state_dir=None, name: str = "staging") -> SmokeTest:
    """A real invocation with the latest features, the last prediction_length minutes held out: the answer must
    have the right shape, ordered quantiles, and a sane loss against what really happened."""
    paths = Paths.at(state_dir)
    served = describe(paths.root, name)
    version = served.get("ModelVersion")
    if served.get("EndpointStatus") != "InService" or version is None:
        raise RuntimeError(f"endpoint {name} is {served.get('EndpointStatus')}: deploy a version first")
    model = ModelRegistry(paths.registry).get(MODEL_GROUP, version)
    horizon = int(model.hyperparameters["prediction_length"])
    result = approval.smoke_test(name, version, model.metrics["mean_wQuantileLoss"], horizon,
                                 latest_minutes(paths.root, SMOKE_HISTORY_MINUTES + horizon),
                                 lambda request: invoke(paths.root, name, request))
    DeploymentLog(paths).record_smoke(name, version, result.passed, asdict(result))
    return result
