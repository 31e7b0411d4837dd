"""Training benchmarks: DeepAR's wall time on 7 days of minutes, and its accuracy against the baselines and the
simulator's own Monte Carlo oracle, on the same test windows."""
from __future__ import annotations

import tempfile

from bench.common import Record
from helpers import ingest, model_build
from helpers.config import Paths
from helpers.metrics import evaluate
from helpers.oracle import oracle_forecasts
from helpers.params import WQL_THRESHOLD, ParameterStore
from helpers.sources.simulator import SimulatorConfig

WEEK_START = 1_767_571_200  # 2026-01-05T00:00Z: a fixed week, so every run trains on the same data
SEED = 42
TEST_WINDOWS = 16  # 8 hours of 30-minute windows


def run() -> list[Record]:
    with tempfile.TemporaryDirectory() as tmp:
        ingest.backfill(tmp, days=7.0 + 0.05, seed=SEED, start=WEEK_START, progress=False)
        ParameterStore(Paths.at(tmp).params).put(WQL_THRESHOLD, 10.0, by="bench")  # measure, never gate
        execution = model_build.run(tmp, model_build.BuildSettings(n_test_windows=TEST_WINDOWS, seed=SEED))
        if not execution.succeeded:
            raise RuntimeError(f"the model build failed: {execution.failure_reason}")
    outputs, context = execution.outputs, execution.context
    start = int(context["series_start"].timestamp())
    origins = [start + 60 * o for o in context["test_origins"]]
    oracle = evaluate(context["actuals"], oracle_forecasts(SimulatorConfig(seed=SEED), origins, 30))
    scores = {name: e["mean_wQuantileLoss"] for name, e in context["evaluation"].items()}
    scores["oracle"] = oracle["mean_wQuantileLoss"]
    details = {"mean_wQuantileLoss": scores, "test_windows": TEST_WINDOWS, "epochs_run": outputs["epochs_run"],
               "stopped_early": outputs["stopped_early"], "device": outputs["device"],
               "train_minutes": outputs["train_minutes"], "execution_id": execution.execution_id}
    return [
        Record("train.wall_time_7d", outputs["train_seconds"], "s", "<= 60", details),
        Record("train.wql_vs_seasonal_naive", scores["deepar"] / scores["seasonal_naive"], "ratio", "<= 0.8", details),
        Record("train.wql_vs_oracle", scores["deepar"] / scores["oracle"], "ratio", "<= 1.15", details),
    ]
