"""What approving and testing a version does the same way on both backends: the threshold rule applied to a
parameter store, InvokeEndpoint through a sagemaker-runtime client, and the staging smoke test.

No local machinery: the local endpoints (:mod:`helpers.endpoints.deploy`) and the AWS deploy Lambda
(:mod:`helpers.endpoints.aws`) call these with their own parameter store, client and features.
"""
from __future__ import annotations

import json
import logging
import time

import pandas as pd

from helpers.core.deepar_json import deepar_request
from helpers.core.policies import (
    THRESHOLD_UPDATE_RATE,
    SmokeTest,
    ThresholdChange,
    smoke_checks,
    threshold_after_approval,
)
from helpers.endpoints.interface import Invocation
from helpers.training.interface import CURRENT_MODEL_WQL, WQL_THRESHOLD

log = logging.getLogger("helpers.endpoints.approval")

SMOKE_HISTORY_MINUTES = 1440  # history sent with the smoke test's request


def update_threshold_on_approval(params, new_wql: float, update_rate: float = THRESHOLD_UPDATE_RATE,
                                 by: str = "approval", version: int | None = None,
                                 floor: float | None = None) -> ThresholdChange:
    """Apply the threshold rule (:func:`helpers.core.policies.threshold_after_approval`) to a parameter store
    (:class:`helpers.training.interface.Parameters`: SQLite here, SSM on AWS)."""
    change = threshold_after_approval(params.get_float(WQL_THRESHOLD), current_wql(params), new_wql, update_rate,
                                      floor)
    if change.moved:
        why = f"approval of model version {version}: mean wQL {new_wql:.4f}"
        params.put(WQL_THRESHOLD, change.new_threshold, by=by, reason=why)
        params.put(CURRENT_MODEL_WQL, new_wql, by=by, reason=why)
    log.info("threshold %.4f -> %.4f, current model wQL %s -> %s", change.old_threshold, change.new_threshold,
             change.old_current_wql, change.new_current_wql)
    return change


def current_wql(params) -> float | None:
    """The mean wQL of the model approved last; None before the first approval."""
    try:
        return params.get_float(CURRENT_MODEL_WQL)
    except KeyError:  # ParameterNotFound
        return None


def invoke(client, endpoint_name: str, stage: str, request: dict) -> Invocation:
    """InvokeEndpoint with a DeepAR JSON request; a refused request raises ValueError with the endpoint's message."""
    from botocore.exceptions import ClientError

    try:
        answer = client.invoke_endpoint(EndpointName=endpoint_name, ContentType="application/json",
                                        Body=json.dumps(request))
    except ClientError as error:
        status = error.response["ResponseMetadata"].get("HTTPStatusCode")
        raise ValueError(f"{stage} answered {status}: {error.response['Error'].get('Message')}") from None
    return Invocation(stage, answer["ContentType"], answer.get("InvokedProductionVariant", ""),
                      json.loads(answer["Body"].read())["predictions"])


def smoke_test(stage: str, version: int, model_wql: float, horizon: int, series: pd.Series,
               invoke_stage) -> SmokeTest:
    """A real invocation with the latest features, the last ``horizon`` minutes held out: the answer must have the
    right shape, ordered quantiles, and a sane loss against what really happened. ``series``: the newest
    SMOKE_HISTORY_MINUTES + horizon minutes; ``invoke_stage(request)``: an :class:`Invocation`."""
    started = time.perf_counter()
    prediction = invoke_stage(deepar_request(series.iloc[:-horizon])).predictions[0]
    latency = time.perf_counter() - started
    checks, wql, bound = smoke_checks(prediction, series.iloc[-horizon:].to_numpy(float), model_wql)
    result = SmokeTest(stage, version, all(checks.values()), checks, wql, bound, latency, str(series.index[-horizon]))
    log.info("smoke test of %s (version %s): %s", stage, version, "passed" if result.passed else f"FAILED {checks}")
    return result
