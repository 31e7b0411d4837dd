"""The loop's decision rules, pure: what approval does to the threshold, what a smoke test checks, when production
takes a version, and when a retrain starts.

No SQLite, no HTTP, no boto3: the local twin, the AWS Lambdas and the tests call the same functions with the
numbers their backend read. (The quality gate's rule is :mod:`helpers.core.gate`; the alarm's is CloudWatch's,
:mod:`helpers.monitoring.alarms`.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from helpers.core.deepar_json import quantile_arrays
from helpers.core.metrics import QUANTILE_NAMES, mean_weighted_quantile_loss

THRESHOLD_UPDATE_RATE = 0.5  # the original rule's rate
SMOKE_WQL_FACTOR, SMOKE_WQL_FLOOR = 3.0, 0.5  # "sane": wQL <= max(floor, factor x the version's test wQL)


# ---------------------------------------------------------------- the threshold rule, on approval


@dataclass(frozen=True)
class ThresholdChange:
    old_threshold: float
    new_threshold: float
    old_current_wql: float | None  # the mean wQL of the model approved before (None: the first approval)
    new_current_wql: float | None
    update_rate: float
    floor: float | None  # the approved model's worst test hour: the new threshold is never below it

    @property
    def moved(self) -> bool:
        return self.new_current_wql != self.old_current_wql


def threshold_after_approval(old_threshold: float, old_current: float | None, new_wql: float,
                             update_rate: float = THRESHOLD_UPDATE_RATE, floor: float | None = None) -> ThresholdChange:
    """The original rule: if new < threshold, threshold = new + |new - threshold| x rate, and current = new.

    With a fix: the new threshold is never below ``floor``, the model's worst hour on its own test windows
    (so it may rise). The alarm judges single hours against this threshold, and a good model's hourly wQL
    varies with the hour's fee spikes around its mean: a threshold the model itself missed hour by hour in
    testing would make a freshly retrained model breach it at once, the original's problem.
    """
    if new_wql >= old_threshold:
        return ThresholdChange(old_threshold, old_threshold, old_current, old_current, update_rate, floor)
    moved = new_wql + abs(new_wql - old_threshold) * update_rate
    return ThresholdChange(old_threshold, moved if floor is None else max(moved, floor), old_current, new_wql,
                           update_rate, floor)


# ---------------------------------------------------------------- the smoke test


@dataclass(frozen=True)
class SmokeTest:
    endpoint: str
    model_version: int
    passed: bool  # every check passed
    checks: dict[str, bool]  # shape, finite, quantiles_ordered, loss_sane
    mean_wQuantileLoss: float  # against what really happened in the held-out minutes
    sane_bound: float
    latency_s: float
    window_start: str  # the first held-out minute, UTC


def smoke_checks(prediction: dict, actuals: np.ndarray, model_wql: float) -> tuple[dict[str, bool], float, float]:
    """A staging answer's checks: the right shape, finite, ordered quantiles, and a loss against ``actuals`` (the
    held-out minutes) within a sane bound of the version's own test wQL. Returns (checks, wQL, bound)."""
    horizon = len(actuals)
    quantiles, mean = quantile_arrays(prediction), np.asarray(prediction.get("mean", []), dtype=float)
    shaped = quantiles is not None and len(mean) == horizon and all(q.shape == (horizon,) for q in quantiles.values())
    stacked = np.stack(list(quantiles.values())) if shaped else np.full((len(QUANTILE_NAMES), 0), np.nan)
    checks = {"shape": shaped, "finite": bool(shaped and np.isfinite(stacked).all()),
              "quantiles_ordered": bool((np.diff(stacked, axis=0) >= -1e-9).all())}
    bound = max(SMOKE_WQL_FLOOR, SMOKE_WQL_FACTOR * model_wql)
    wql = mean_weighted_quantile_loss(actuals, {"mean": mean, **quantiles}) if checks["finite"] else float("inf")
    checks["loss_sane"] = wql <= bound
    return checks, wql, bound


# ---------------------------------------------------------------- the promotion guard


def deploy_refusal(endpoint: str, version: int, approval_status: str, was_in_service_on_staging: bool,
                   passed_staging_smoke_test: bool) -> str | None:
    """Why ``endpoint`` refuses ``version``, and what to do; None when it may deploy it. Any endpoint takes only an
    Approved version; production only one that was InService on staging and passed the staging smoke test."""
    if approval_status != "Approved":
        return (f"only an Approved version is deployed (version {version} is {approval_status}): approve it first "
                "(python -m helpers approve VERSION --by NAME --reason WHY)")
    if endpoint != "prod":
        return None
    if not was_in_service_on_staging:
        return (f"version {version} was never InService on staging: approve it (which deploys it to staging) before "
                "promoting it")
    if not passed_staging_smoke_test:
        return (f"version {version} has not passed the staging smoke test: run it again while staging serves it "
                "(python -m helpers smoke-test)")
    return None


# ---------------------------------------------------------------- the retrain rule


def retrain_skip_reason(retrain_in_flight: bool, pending_version: int | None) -> str | None:
    """Why an alarm's retrain request is skipped; None when a retrain starts. One at a time per project, and none
    while a version waits for a human: retraining again would only pile up versions nobody decided on."""
    if retrain_in_flight:
        return "a retrain is already in flight"
    if pending_version is not None:
        return (f"version {pending_version} awaits approval: approve or reject it first "
                "(python -m helpers approve|reject)")
    return None
