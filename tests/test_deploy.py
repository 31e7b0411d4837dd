"""Approval, the threshold rule, staging and production endpoints, the promotion guard, rollback."""
import shutil
from dataclasses import replace

import pytest
from test_model_build import SMALL, set_gate

from conftest import PINNED_NOW, private_copy
from helpers.core.deepar_json import deepar_request
from helpers.endpoints import approval, deploy
from helpers.ingestion import ingest
from helpers.local.config import Paths
from helpers.registry import MODEL_GROUP, ModelRegistry
from helpers.training import model_build
from helpers.training.interface import CURRENT_MODEL_WQL, WQL_THRESHOLD
from helpers.training.params import ParameterStore

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def trained_state(tmp_path_factory):
    """Two days of features and two registered versions, pending approval."""
    state = tmp_path_factory.mktemp("deploy") / "state"
    ingest.backfill(state, days=2.0, now=PINNED_NOW, progress=False)
    set_gate(state, 1.0)
    for seed in (1, 2):
        assert model_build.run(state, replace(SMALL, seed=seed)).succeeded
    return state


@pytest.fixture
def state(trained_state, tmp_path, monkeypatch):
    copy = private_copy(trained_state, tmp_path, monkeypatch)
    yield copy
    deploy.stop_endpoints(copy)


@pytest.mark.parametrize(("threshold", "current", "new", "rate", "expected_threshold", "expected_current"), [
    (0.24, None, 0.10, 0.5, 0.17, 0.10),  # better: the threshold moves halfway down to the new model
    (0.24, 0.12, 0.20, 0.5, 0.22, 0.20),
    (0.24, 0.12, 0.30, 0.5, 0.24, 0.12),  # worse than the threshold: nothing moves
    (0.24, None, 0.24, 0.5, 0.24, None),  # equal: not below, nothing moves
    (0.24, None, 0.10, 0.0, 0.10, 0.10),  # rate 0: the threshold becomes the new model's wQL
    (0.24, None, 0.10, 1.0, 0.24, 0.10),  # rate 1: new + the whole gap = the old threshold
])
def test_threshold_update_rule(tmp_path, threshold, current, new, rate, expected_threshold, expected_current):
    params = ParameterStore(tmp_path / "params.db")
    params.put(WQL_THRESHOLD, threshold)
    if current is not None:
        params.put(CURRENT_MODEL_WQL, current)
    change = approval.update_threshold_on_approval(params, new, rate, by="tester", version=3)
    assert change.old_threshold == threshold and change.new_threshold == pytest.approx(expected_threshold)
    assert params.get_float(WQL_THRESHOLD) == pytest.approx(expected_threshold)
    assert change.new_current_wql == (pytest.approx(expected_current) if expected_current is not None else None)
    if expected_threshold != threshold:  # old and new values are kept, with who and why
        last = params.history(WQL_THRESHOLD)[-1]
        assert last["modified_by"] == "tester" and "version 3" in last["reason"]


@pytest.mark.parametrize(("new", "floor", "expected"), [
    (0.10, 0.12, 0.17),  # the model's worst test hour is below the moved threshold: the original rule
    (0.10, 0.20, 0.20),  # its worst hour is above: the threshold stays there, so the model does not breach it
    (0.10, 0.30, 0.30),  # ... even above the old threshold: the alarm judges hours, and its hours reach 0.30
    (0.30, 0.50, 0.24),  # not better than the threshold: nothing moves, as in the original
])
def test_a_new_threshold_is_never_below_the_models_own_worst_hour(tmp_path, new, floor, expected):
    params = ParameterStore(tmp_path / "params.db")
    params.put(WQL_THRESHOLD, 0.24)
    change = approval.update_threshold_on_approval(params, new, 0.5, by="tester", version=2, floor=floor)
    assert change.new_threshold == pytest.approx(expected) and params.get_float(WQL_THRESHOLD) == pytest.approx(
        expected)


def test_approve_deploys_staging_smoke_tests_it_then_promote_deploys_prod(state):
    registry = ModelRegistry(Paths.at(state).registry)
    approval = deploy.approve(state, 1, by="ana", reason="beats the baselines")
    version = registry.get(MODEL_GROUP, 1)
    assert version.approval_status == "Approved" and version.tags["approval_by"] == "ana"
    assert approval.staging["EndpointStatus"] == "InService" and approval.staging["ModelVersion"] == 1
    assert "ModelPath" not in approval.staging  # a local path is the endpoint's own business, as on SageMaker
    assert approval.smoke_test.passed, approval.smoke_test
    assert approval.threshold.new_threshold < 1.0  # the rule ran on approval

    promoted = deploy.promote(state, by="ben", reason="staging is fine")
    assert promoted["EndpointStatus"] == "InService" and promoted["ModelVersion"] == 1
    assert deploy.describe(state, "prod")["InServiceSince"]
    history = deploy.DeploymentLog(Paths.at(state)).history()
    assert history[["endpoint", "model_version", "status", "by"]].values.tolist() == [
        ["staging", 1, "InService", "ana"], ["prod", 1, "InService", "ben"]]
    answer = deploy.invoke(state, "prod", deepar_request(deploy.latest_minutes(state, 300)))
    assert len(answer.predictions[0]["mean"]) == 30 and answer.variant == "model-v1"  # the variant names the version
    assert registry.stage_aliases() == {"staging": 1, "prod": 1}  # what the MLflow UI shows
    described = {int(v.version): v.description for v in registry.client.search_model_versions(f"name='{MODEL_GROUP}'")}
    assert described[1] == "Approved: beats the baselines (by ana)"
    assert described[2].startswith("PendingManualApproval: awaiting a decision")


def test_the_promotion_guard_refuses_what_staging_has_not_proven(state):
    with pytest.raises(deploy.PromotionError, match="staging serves no model"):
        deploy.promote(state, by="ben", reason="hurry")
    with pytest.raises(deploy.PromotionError, match="only an Approved version.*PendingManualApproval"):
        deploy.deploy(state, "prod", 2)
    deploy.approve(state, 1, by="ana", reason="ok")
    ModelRegistry(Paths.at(state).registry).set_approval(MODEL_GROUP, 2, "Approved", by="ana", reason="skip staging")
    with pytest.raises(deploy.PromotionError, match="version 2 was never InService on staging"):
        deploy.promote(state, 2, by="ben", reason="hurry")
    deploy.deploy(state, "staging", 2, by="ana", reason="no smoke test yet")
    with pytest.raises(deploy.PromotionError, match="version 2 has not passed the staging smoke test"):
        deploy.promote(state, 2, by="ben", reason="hurry")
    assert deploy.describe(state, "prod")["EndpointStatus"] == "OutOfService"


def test_rejected_versions_are_never_deployed_and_decisions_need_a_who_and_why(state):
    deploy.reject(state, 2, by="ana", reason="worse than naive")
    assert ModelRegistry(Paths.at(state).registry).get(MODEL_GROUP, 2).approval_status == "Rejected"
    with pytest.raises(deploy.PromotionError, match="Rejected"):
        deploy.deploy(state, "staging", 2)
    with pytest.raises(ValueError, match="say who decides and why"):
        deploy.approve(state, 1, by="", reason="")


def test_rollback_returns_an_endpoint_to_its_previous_version(state):
    deploy.approve(state, 1, by="ana", reason="first")
    deploy.approve(state, 2, by="ana", reason="second")
    assert deploy.describe(state, "staging")["ModelVersion"] == 2
    assert ModelRegistry(Paths.at(state).registry).stage_aliases() == {"staging": 2}
    rolled = deploy.rollback(state, "staging", by="ana", reason="2 misbehaves")
    assert rolled["ModelVersion"] == 1 and rolled["EndpointStatus"] == "InService"
    assert ModelRegistry(Paths.at(state).registry).stage_aliases() == {"staging": 1}  # the alias moved back too


def test_an_endpoint_restarted_serves_the_same_version(state):
    deploy.approve(state, 1, by="ana", reason="ok")
    deploy.stop_endpoint(state, "staging")
    assert deploy.describe(state, "staging")["EndpointStatus"] == "OutOfService"
    assert deploy.start_endpoint(state, "staging")["ModelVersion"] == 1
    assert deploy.smoke_test(state, "staging").passed


def test_a_deploy_that_fails_keeps_the_old_version_and_says_why(state):
    deploy.approve(state, 1, by="ana", reason="ok")
    registry = ModelRegistry(Paths.at(state).registry)
    registry.set_approval(MODEL_GROUP, 2, "Approved", by="ana", reason="try")
    broken = registry.model_path(MODEL_GROUP, 2)
    for artifact in broken.iterdir():  # corrupt the version's artifact
        if artifact.is_file():
            artifact.write_text("not a model")
    with pytest.raises(RuntimeError, match="deploying version 2 to staging failed: .*keeps serving version 1"):
        deploy.deploy(state, "staging", 2, by="ana", reason="broken")
    assert deploy.describe(state, "staging")["ModelVersion"] == 1
    assert deploy.DeploymentLog(Paths.at(state)).history()["status"].tolist()[-1] == "Failed"


def test_with_nothing_pending_the_message_says_what_the_last_build_did(trained_state, tmp_path):
    assert "no model has been built yet" in deploy.why_nothing_is_pending(Paths.at(tmp_path / "fresh"))
    state = tmp_path / "state"
    shutil.copytree(trained_state, state)
    set_gate(state, 1e-6)
    rejected = model_build.run(state, SMALL)
    registry = ModelRegistry(Paths.at(state).registry)
    for version in (1, 2):
        registry.set_approval(MODEL_GROUP, version, "Rejected", by="ana", reason="test")
    with pytest.raises(ValueError, match=f"the last model build \\({rejected.execution_id}\\) was rejected by the "
                                         "quality gate: quality gate failed: mean wQL .* > threshold 0.0000"):
        deploy.pending_version(state)
    with pytest.raises(ValueError, match="staging and prod not InService: the last model build .* was rejected"):
        deploy.require_in_service(state)


def test_each_endpoint_captures_the_forecasts_it_served(state):
    import json

    import httpx

    from helpers.endpoints.serving import read_capture

    paths = Paths.at(state)
    deploy.approve(state, 1, by="ana", reason="ok")  # its smoke test is the first request staging serves
    request = deepar_request(deploy.latest_minutes(state, 300))
    response = httpx.post(f"{deploy.url(paths, 'staging')}/endpoints/staging/invocations", json=request, timeout=60)
    events = read_capture(deploy.capture_dir(paths, "staging"))
    assert len(events) == 2
    last = events[-1]
    assert last["eventMetadata"]["eventId"] == response.headers["x-inference-id"]
    assert set(last["eventMetadata"]) == {"eventId", "inferenceTime"}  # SageMaker's metadata, nothing more
    files = [path.relative_to(deploy.capture_dir(paths, "staging")) for path in
             deploy.capture_dir(paths, "staging").rglob("*.jsonl")]
    assert [f.parts[0] for f in files] == ["model-v1"] and files[0].name == "staging.jsonl"  # by variant, by hour
    assert json.loads(last["captureData"]["endpointInput"]["data"]) == request
    assert json.loads(last["captureData"]["endpointOutput"]["data"]) == response.json()
    assert read_capture(deploy.capture_dir(paths, "prod")) == []  # each stage keeps only its own forecasts
    with open(next(deploy.capture_dir(paths, "staging").rglob("*.jsonl")), "ab") as capture:
        capture.write(b'{"captureData": {"endpointIn')  # a crash mid-line
    assert len(read_capture(deploy.capture_dir(paths, "staging"))) == 2
