"""The whole notebook suite in CI mode (01 to 05, local), as CI runs it, several times in a row: does the loop close
(drift, alarm, retrain, production, recovery) every time, and how many simulated hours from the first alarm until
a retrained model serves production?"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import pandas as pd

from bench.common import Record
from helpers.core.times import PINNED_NOW_ENV
from helpers.local import services
from helpers.local.daemon import free_port
from helpers.monitoring import monitor
from helpers.notebooks import PINNED_NOW, ci_runs, run_notebook

RUNS = 3


def run() -> list[Record]:
    runs = [one_loop() for _ in range(RUNS)]
    closed = [r for r in runs if r["closed"]]
    details = {"runs": runs}
    records = [Record("suite.loops_closed", len(closed), "loops", f">= {RUNS}", details)]
    if closed:
        records += [
            Record("suite.wall_time", statistics.median(r["seconds"] for r in closed), "s", "<= 300", details),
            Record("suite.alarm_to_prod_hours", max(r["alarm_to_prod_hours"] for r in closed), "simulated h",
                   "<= 6", details),
        ]
    return records


def one_loop() -> dict:
    """Notebooks 01 to 05 on fresh state and free ports; what the monitor's records say about the loop."""
    for name in ("STAGING", "PROD"):  # never collide with endpoints a learner has running
        os.environ[f"MLOPS_{name}_PORT"] = str(free_port())
    os.environ[PINNED_NOW_ENV] = PINNED_NOW  # as CI runs it
    with tempfile.TemporaryDirectory() as tmp:
        state, seconds, error = Path(tmp) / "state", {}, None
        try:
            for notebook, parameters in ci_runs(cleanup=False):  # the loop: 01 to 05
                started = time.perf_counter()
                run_notebook(notebook, Path(tmp) / "out", {"backend": "local", "state_dir": str(state), **parameters})
                seconds[notebook.name] = round(time.perf_counter() - started, 1)
        except Exception as failure:  # a loop that did not close is a result, and the next run still runs
            error = "".join(traceback.format_exception_only(failure)).strip()[-2000:]
        finally:
            services.stop_all(state)
        requests, fired = monitor.retrains(state), monitor.alarm_history(state).query("new_state == 'ALARM'")
    started = requests[requests["status"] != "Skipped"]
    deployed = started[started["status"] == "Deployed"]
    closed = error is None and not deployed.empty
    hours = ((pd.Timestamp(deployed["ended_sim"].iloc[0]) - fired["at"].min()) / pd.Timedelta(hours=1)) \
        if closed else None
    return {"closed": closed, "error": error, "seconds": sum(seconds.values()), "seconds_per_notebook": seconds,
            "alarm_to_prod_hours": hours, "retrain_outcomes": started["status"].tolist()}
