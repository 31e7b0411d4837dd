"""The ingestion service as a user runs it: a real background process, SIGTERM, SIGKILL, restart."""
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import wait_for
from helpers.core.aggregator import WindowConfig
from helpers.core.events import hash_hex
from helpers.core.times import minute_iso
from helpers.feature_store import open_tx_per_minute
from helpers.ingestion import ingest
from helpers.ingestion.eventlog import EventLog
from helpers.ingestion.sources.simulator import SimulatorConfig, TransactionModel
from helpers.local import services
from helpers.local.config import Paths

pytestmark = pytest.mark.slow
PINNED_NOW = 1_800_000_000 // 60 * 60  # 2027-01-15T08:00Z


def finite_stream(state_dir, hours_live=3.0, speed=3600.0):
    """A simulator stream: 2 h of backfill, then ``hours_live`` simulated hours of 15 s polls, then it ends.
    Simulated time is pinned, so every run streams the same transactions whatever the hour."""
    now = PINNED_NOW
    return ingest.start(state_dir, source="simulator", seed=7, speed=speed, now=now, start=now - 7200,
                        until=now + hours_live * 3600)


def finished(state_dir):
    current = ingest.status(state_dir)
    return current.get("source_done") and current.get("lag_records") == 0 and current


def test_service_outlives_its_starter_reports_health_and_stops_on_sigterm(state_dir):
    # Started from a short-lived child process, as a notebook kernel that then dies would.
    code = f"from helpers.ingestion import ingest; ingest.start({str(state_dir)!r}, backfill_days=0.1, speed=60)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    current = wait_for(lambda: ingest.status(state_dir)["running"] and ingest.status(state_dir), what="service")
    assert os.getsid(current["pid"]) != os.getsid(0)  # its own session: a closed terminal or kernel won't take it
    wait_for(lambda: ingest.status(state_dir).get("windows_emitted", 0) > 100, what="windows")
    current = ingest.status(state_dir)
    assert current["state"] == "running" and current["log_events"] > 0 and current["duplicates_dropped"] > 0
    assert current["last_window_closed"] is not None and current["event_time_lag_s"] < 600

    stopped = ingest.stop(state_dir)
    assert stopped["state"] == "stopped" and not stopped["running"]
    assert not Paths.at(state_dir).pid_file("ingest").exists()
    assert "stopped cleanly" in Paths.at(state_dir).ingest_log.read_text()

    resumed = ingest.start(state_dir)  # resumes the same stream, not a new one
    assert resumed["running"] and resumed["events_in"] >= stopped["events_in"]


def test_a_second_service_is_refused_and_reset_stops_the_stream_and_deletes_its_state(state_dir):
    finite_stream(state_dir, hours_live=24, speed=60)
    paths = Paths.at(state_dir)
    helpers_cli = [sys.executable, "-m", "helpers", "--state-dir", str(state_dir)]
    second = subprocess.run([*helpers_cli, "serve-ingest"], capture_output=True, text=True, timeout=120)
    assert second.returncode == 1 and "another ingestion service is running" in second.stderr
    assert ingest.status(state_dir)["running"]  # the first one is untouched

    subprocess.run([*helpers_cli, "reset"], check=True, timeout=120)
    assert services.running(state_dir) == []
    assert not any(p.exists() for p in (paths.event_log, paths.feature_store, paths.ingest_config, paths.clock))
    assert ingest.status(state_dir)["state"] == "never started"


def test_sigkill_mid_stream_then_restart_loses_nothing_and_counts_nothing_twice(state_dir):
    finite_stream(state_dir)
    paths = Paths.at(state_dir)
    for kill_after in (random.uniform(0.3, 1.0), random.uniform(0.3, 1.0)):
        time.sleep(kill_after)
        pid = ingest.status(state_dir)["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: ingest.status(state_dir)["state"] == "crashed", what="crash detected")
        ingest.start(state_dir)
    final = wait_for(lambda: finished(state_dir), timeout_s=300, what="stream to finish")
    assert final["state"] == "running" and final["windows_emitted"] > 250
    service_log = paths.ingest_log.read_text()
    assert service_log.count("ingestion service started") == 3 and "stopped cleanly" not in service_log

    config = json.loads(paths.ingest_config.read_text())
    window = WindowConfig()
    # Every minute that had time to close, and whose stragglers were all delivered before the stream ended.
    last_complete = min(final["watermark_unix"] - window.allowed_lateness_s - 2 * window.window_s,
                        config["until"] - SimulatorConfig().max_delivery_lag_s - window.window_s)
    truth_from_simulator = minute_totals(TransactionModel(SimulatorConfig(seed=7)).transactions(
        config["start"], config["until"]))
    truth_from_log = minute_totals(unique_events_in_log(paths))
    stored = stored_totals(paths)
    in_range = lambda frame: frame[(frame.index >= config["start"]) & (frame.index < last_complete)]  # noqa: E731
    pd.testing.assert_frame_equal(in_range(stored), in_range(truth_from_log), check_dtype=False)
    pd.testing.assert_frame_equal(in_range(stored), in_range(truth_from_simulator), check_dtype=False)
    assert len(in_range(stored)) > 250

    letters = ingest.dead_letters(state_dir, limit=100_000)  # what a learner sees of them
    assert len(letters) == final["dead_lettered"] > 0
    assert (letters["late_by_s"] > window.allowed_lateness_s).all() and letters["event_time"].dt.tz is not None
    shown = subprocess.run([sys.executable, "-m", "helpers", "--state-dir", str(state_dir), "dead-letters",
                            "--limit", "3"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and letters["hash"].iloc[0] in shown.stdout
    assert "beyond allowed lateness" in shown.stdout


def minute_totals(events: np.ndarray) -> pd.DataFrame:
    """Ground truth, computed independently of the aggregator: pandas over unique transactions."""
    frame = pd.DataFrame({"hash": hash_hex(events), "time": events["time"], "fee": events["fee"]})
    frame = frame.drop_duplicates("hash")
    frame["minute"] = frame["time"] // 60 * 60
    return frame.groupby("minute").agg(tx_count=("hash", "size"), total_fee=("fee", "sum")).sort_index()


def unique_events_in_log(paths: Paths) -> np.ndarray:
    log = EventLog(paths.event_log)
    events = np.concatenate([r.events for r in log.scan()])
    log.close()
    return events


def stored_totals(paths: Paths) -> pd.DataFrame:
    """What the pipeline stored: the latest revision of each minute plus that minute's dead letters."""
    store = open_tx_per_minute(paths.feature_store)
    offline = store.latest()
    online = {minute: store.get_record(minute) for minute in offline["tx_minute"]}
    store.close()
    for minute, row in offline.set_index("tx_minute").iterrows():
        assert online[minute]["revision"] == row["revision"] and online[minute]["tx_count"] == row["tx_count"]
    totals = offline.assign(minute=offline["window_start"].astype("int64")).groupby("minute")[
        ["tx_count", "total_fee"]].sum()
    with sqlite3.connect(paths.checkpoint) as conn:
        dead = pd.read_sql("SELECT time / 60 * 60 AS minute, COUNT(*) AS tx_count, SUM(fee) AS total_fee"
                           " FROM dead_letters GROUP BY minute", conn).set_index("minute")
    return totals.add(dead, fill_value=0).astype("int64").sort_index()


def test_status_of_a_directory_never_started(state_dir):
    current = ingest.status(state_dir)
    assert current["state"] == "never started" and not current["running"]


def test_cli_status_exit_code_and_bad_arguments(state_dir):
    run = lambda *args: subprocess.run([sys.executable, "-m", "helpers", "--state-dir", str(state_dir), *args],  # noqa: E731
                                       capture_output=True, text=True, timeout=60)
    assert run("status").returncode == 3  # not running
    bad = run("start", "--source", "replay")
    assert bad.returncode == 2 and "replay_file" in bad.stderr and "Traceback" not in bad.stderr


def test_minute_iso_is_utc_whatever_the_local_zone():
    assert time.localtime().tm_gmtoff == 14 * 3600  # the session runs far from UTC
    assert minute_iso(0) == "1970-01-01T00:00:00Z"
