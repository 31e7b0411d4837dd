"""The service with the live poller (against a fake blockchain.com on loopback), recording, then replaying."""
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from conftest import wait_for
from helpers.core.events import hash_hex
from helpers.feature_store import open_tx_per_minute
from helpers.ingestion import ingest
from helpers.ingestion.sources.simulator import SimulatorConfig, TransactionModel
from helpers.local.config import Paths

pytestmark = pytest.mark.slow
SPEED = 60  # the fake API's mempool moves an hour per wall minute


class FakeBlockchainAPI(ThreadingHTTPServer):
    """Serves /unconfirmed-transactions like blockchain.com: the 100 newest transactions, overlapping
    from one poll to the next, with a 503 every 5th request and a garbage body every 7th."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), FakeHandler)
        self.model = TransactionModel(SimulatorConfig(seed=3))
        self.wall0, self.sim0 = time.time(), 1_790_000_000 // 60 * 60  # pinned data: 2026-09-21T13:33Z on
        self.requests = 0
        self.lock = threading.Lock()

    def body(self) -> bytes:
        sim_now = self.sim0 + (time.time() - self.wall0) * SPEED
        events = self.model.transactions(sim_now - 120, sim_now)[-100:]
        txs = [{"hash": h, "time": int(t), "fee": int(f), "size": int(s), "weight": int(w), "ver": 2,
                "vin_sz": 1, "vout_sz": 2, "relayed_by": "0.0.0.0", "lock_time": 0, "tx_index": 0,
                "double_spend": False, "block_index": None, "block_height": None, "inputs": [], "out": []}
               for h, t, f, s, w in zip(hash_hex(events), events["time"], events["fee"], events["size"],
                                        events["weight"])]
        return json.dumps({"txs": txs}).encode()


class FakeHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        with self.server.lock:
            self.server.requests += 1
            n = self.server.requests
        status, body = (503, b"busy") if n % 5 == 0 else (200, b"<html>oops" if n % 7 == 0 else self.server.body())
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_api():
    server = FakeBlockchainAPI()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/unconfirmed-transactions?format=json"
    server.shutdown()
    server.server_close()


def test_live_poller_service_records_and_a_replay_rebuilds_the_same_features(fake_api, tmp_path):
    live, replay, recording = tmp_path / "live", tmp_path / "replay", tmp_path / "api.jsonl"
    ingest.start(live, source="blockchain", url=fake_api, interval_s=0.2, record_to=str(recording))
    try:
        current = wait_for(lambda: ingest.status(live).get("windows_emitted", 0) >= 3 and ingest.status(live),
                           timeout_s=120, what="three minutes from the live poller")
    finally:
        stopped = ingest.stop(live)
    errors = current["source_stats"]["errors"]
    assert errors.get("http_503", 0) >= 1 and errors.get("bad_json", 0) >= 1  # faults survived
    assert stopped["malformed"].get("response: not JSON", 0) >= 1
    assert stopped["duplicates_dropped"] > 0  # overlapping polls, deduplicated

    ingest.start(replay, source="replay", replay_file=str(recording))
    try:
        wait_for(lambda: ingest.status(replay).get("source_done") and ingest.status(replay)["lag_records"] == 0,
                 timeout_s=120, what="the replay to finish")
    finally:
        ingest.stop(replay)
    columns = ["tx_minute", "revision", "tx_count", "total_fee", "avg_fee"]
    live_minutes = open_tx_per_minute(Paths.at(live).feature_store).latest()[columns]
    replayed = open_tx_per_minute(Paths.at(replay).feature_store).latest()[columns]
    assert len(live_minutes) >= 3
    pd.testing.assert_frame_equal(replayed.iloc[: len(live_minutes)].reset_index(drop=True),
                                  live_minutes.reset_index(drop=True))


def test_the_command_line_polls_a_proxy_or_mirror_at_the_interval_given(fake_api, tmp_path):
    state = tmp_path / "state"
    started = subprocess.run([sys.executable, "-m", "helpers", "--state-dir", str(state), "start", "--source",
                              "blockchain", "--url", fake_api, "--interval", "0.3"],
                             capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr
        config = json.loads(Paths.at(state).ingest_config.read_text())
        assert (config["url"], config["interval_s"]) == (fake_api, 0.3)
        wait_for(lambda: ingest.status(state).get("log_events", 0) > 0, timeout_s=60, what="events from the mirror")
    finally:
        ingest.stop(state)
