"""The whole notebook suite in CI mode (01 to 05, local), as CI runs it: one drift-triggered retrain at least."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.common import Record
from helpers import monitor, services
from helpers.daemon import free_port
from helpers.notebooks import CI_PARAMETERS, NOTEBOOK_DIR, run_notebook


def run() -> list[Record]:
    for name in ("STAGING", "PROD"):  # never collide with endpoints a learner has running
        os.environ[f"MLOPS_{name}_PORT"] = str(free_port())
    with tempfile.TemporaryDirectory() as tmp:
        state, seconds = Path(tmp) / "state", {}
        try:
            for name, parameters in CI_PARAMETERS.items():
                started = time.perf_counter()
                run_notebook(NOTEBOOK_DIR / name, Path(tmp) / "out", {"backend": "local", "state_dir": str(state),
                                                                      **parameters})
                seconds[name] = round(time.perf_counter() - started, 1)
        finally:
            services.stop_all(state)
        requests = monitor.retrains(state)
    started = requests[requests["status"] != "Skipped"]
    deployed = int((started["status"] == "Deployed").sum())
    if not deployed:
        raise RuntimeError(f"the suite ran but no retrain was deployed: {started[['status', 'detail']].to_dict()}")
    details = {"seconds_per_notebook": seconds, "retrains_started": len(started), "retrains_deployed": deployed,
               "retrain_outcomes": started["status"].tolist()}
    return [Record("suite.wall_time", sum(seconds.values()), "s", "<= 300", details)]
