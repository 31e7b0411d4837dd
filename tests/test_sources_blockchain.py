"""BlockchainPoller against a scripted local HTTP server, ReplaySource, and transaction validation.

Waits are recorded by a ``stop`` Event whose ``wait`` returns at once, so the
backoff schedule is asserted exactly without the tests sleeping through it.
"""
from __future__ import annotations

import hashlib
import json
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers.core.events import MAX_CLOCK_SKEW_S, validate_transactions
from helpers.ingestion.sources.blockchain import BlockchainPoller, append_record, parse_response, retry_after_seconds
from helpers.ingestion.sources.replay import CORRUPT_LINE, ReplaySource

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()


def make_tx(n: int, **overrides) -> dict:
    """A transaction as blockchain.com's unconfirmed-transactions endpoint returns it."""
    tx = {
        "hash": hashlib.sha256(f"tx{n}".encode()).hexdigest(),
        "ver": 2,
        "vin_sz": 1,
        "vout_sz": 2,
        "size": 222,
        "weight": 561,
        "fee": 1000 + n,
        "relayed_by": "0.0.0.0",
        "lock_time": 0,
        "tx_index": 8_000_000_000 + n,
        "double_spend": False,
        "time": int(NOW) - 60 + n,
        "block_index": None,
        "block_height": None,
        "inputs": [],
        "out": [],
        "rbf": False,
    }
    tx.update(overrides)
    return tx


def without(tx: dict, key: str) -> dict:
    return {name: value for name, value in tx.items() if name != key}


@dataclass
class Reply:
    status: int = 200
    body: str = ""
    headers: dict = field(default_factory=dict)
    delay_s: float = 0.0


def ok(*txs: dict) -> Reply:
    return Reply(200, json.dumps({"txs": list(txs)}))


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def do_GET(self) -> None:
        reply = self.server.next_reply()
        time.sleep(reply.delay_s)
        body = reply.body.encode()
        try:
            self.send_response(reply.status)
            for name, value in {"Content-Type": "application/json", **reply.headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and hung up: that is the point of a slow reply

    def log_message(self, *args) -> None:
        pass


class ScriptedServer(ThreadingHTTPServer):
    """Serves ``script`` in order, then empty 200s; counts requests in ``served``."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list[Reply] = []
        self.served = 0
        self._lock = threading.Lock()

    def next_reply(self) -> Reply:
        with self._lock:
            self.served += 1
            return self.script.pop(0) if self.script else ok()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/unconfirmed-transactions?format=json"


@pytest.fixture
def server():
    httpd = ScriptedServer()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


class RecordingStop(threading.Event):
    """A stop whose ``wait`` records the seconds and returns at once; it sets itself after ``after_waits``."""

    def __init__(self, after_waits: int | None = None) -> None:
        super().__init__()
        self.waits: list[float] = []
        self.after_waits = after_waits

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        if self.after_waits is not None and len(self.waits) >= self.after_waits:
            self.set()
        return self.is_set()


class TopOfRange(random.Random):
    """Jitter that always picks the ceiling, so backoff delays are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


def poll_script(
    server: ScriptedServer, replies: list[Reply], **poller_args
) -> tuple[BlockchainPoller, list, RecordingStop]:
    """Run a poller through ``replies`` (one poll each) and return it, its batches and its waits."""
    server.script = list(replies)
    stop = RecordingStop(after_waits=len(replies))
    poller = BlockchainPoller(server.url, **{"timeout_s": 2.0, "rng": TopOfRange(), **poller_args})
    return poller, list(poller.batches(stop)), stop


def hashes(events) -> list[str]:
    return [row.tobytes().hex() for row in events["hash"]]


# --- BlockchainPoller -------------------------------------------------------


def test_good_events_arrive_with_their_values(server):
    txs = [make_tx(1), make_tx(2, fee=0, size=100, weight=400)]
    before = time.time()
    poller, batches, _ = poll_script(server, [ok(*txs)])

    (batch,) = batches
    assert before <= batch.fetched_at <= time.time()
    assert batch.source_pos is None and batch.malformed == Counter()
    assert hashes(batch.events) == [tx["hash"] for tx in txs]
    for field_name in ("time", "fee", "size", "weight"):
        assert batch.events[field_name].tolist() == [tx[field_name] for tx in txs]
    assert poller.stats["polls"] == 1 and poller.stats["ok"] == 1 and not poller.stats["errors"]


def test_poller_survives_every_fault_and_keeps_going(server):
    script = [
        ok(make_tx(1), make_tx(2)),
        Reply(429, headers={"Retry-After": "7"}),
        Reply(503),
        Reply(500),
        Reply(200, "<html>down for maintenance</html>"),
        Reply(200, json.dumps({"status": "ok"})),
        Reply(200, json.dumps({"txs": [make_tx(9)]}), delay_s=1.0),  # slower than the timeout
        Reply(404),
        ok(make_tx(2), make_tx(3), without(make_tx(4), "fee"), make_tx(5, fee="1005")),  # overlaps the first
    ]
    poller, batches, stop = poll_script(server, script, timeout_s=0.3, interval_s=0.5)

    assert [dict(batch.malformed) for batch in batches] == [
        {},
        {"response: not JSON": 1},
        {"txs: missing": 1},
        {"fee: missing": 1, "fee: not an integer": 1},
    ]
    assert hashes(batches[0].events) == [make_tx(1)["hash"], make_tx(2)["hash"]]
    assert hashes(batches[3].events) == [make_tx(2)["hash"], make_tx(3)["hash"]]
    assert batches[3].events["fee"].tolist() == [1002, 1003]
    assert server.served == len(script) and poller.stats["polls"] == len(script)
    assert poller.stats["ok"] == 2
    assert poller.stats["errors"] == Counter(
        {"http_429": 1, "http_503": 1, "http_500": 1, "bad_json": 2, "timeout": 1, "http_404": 1}
    )
    assert poller.stats["last_error"].startswith("http_404")
    # 429: Retry-After beats the 1 s ceiling; 503, 500 double it; a 200 resets it;
    # the timeout starts again at 1 s; a 404 keeps the normal interval.
    assert stop.waits == [0.5, 7, 2, 4, 0.5, 0.5, 1, 0.5, 0.5]
    assert poller.stats["backoff_seconds_total"] == 7 + 2 + 4 + 1


def test_backoff_grows_exponentially_to_the_cap_and_honours_retry_after(server):
    script = [Reply(503)] * 5 + [Reply(429, headers={"Retry-After": "100"}), ok(), Reply(502)]
    _, _, stop = poll_script(server, script, interval_s=0.5, backoff_base_s=1.0, backoff_cap_s=8.0)
    assert stop.waits == [1, 2, 4, 8, 8, 100, 0.5, 1]


def test_backoff_never_polls_faster_than_the_normal_interval(server):
    _, _, stop = poll_script(server, [Reply(429)] * 6, interval_s=15.0, backoff_base_s=1.0, backoff_cap_s=300.0)
    assert stop.waits == [15, 15, 15, 15, 16, 32]


def test_backoff_jitter_is_full_and_seeded(server):
    _, _, stop = poll_script(server, [Reply(503)] * 6, rng=random.Random(7), interval_s=0.0, backoff_cap_s=20.0)
    reference = random.Random(7)
    assert stop.waits == [reference.uniform(0, min(20.0, 2**attempt)) for attempt in range(6)]


def test_retry_after_as_http_date_is_honoured(server):
    retry_at = formatdate(time.time() + 30, usegmt=True)
    _, _, stop = poll_script(server, [Reply(429, headers={"Retry-After": retry_at})])
    assert 27 <= stop.waits[0] <= 31


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        ("Thu, 01 Jan 2026 00:01:00 GMT", 60.0),
        ("Thu, 01 Jan 2026 00:01:00 -0000", 60.0),  # parses to a naive datetime: still UTC
        ("Wed, 31 Dec 2025 23:00:00 GMT", 0.0),  # already past
        ("-5", 0.0),
        ("soon", None),
        (None, None),
    ],
)
def test_retry_after_seconds(header, expected):
    assert retry_after_seconds(header, now=NOW) == expected


def test_connection_errors_back_off():
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    poller = BlockchainPoller(f"http://127.0.0.1:{port}/", interval_s=0.5, timeout_s=2.0, rng=TopOfRange())
    stop = RecordingStop(after_waits=3)
    assert list(poller.batches(stop)) == []
    assert stop.waits == [1, 2, 4]
    assert poller.stats["errors"] == Counter({"connect": 3}) and poller.stats["ok"] == 0


@pytest.mark.parametrize(
    "reply", [ok(make_tx(1)), Reply(429, headers={"Retry-After": "3600"})], ids=["interval", "backoff"]
)
def test_stop_ends_the_loop_promptly(server, reply):
    server.script = [reply]
    stop = threading.Event()
    poller = BlockchainPoller(server.url, interval_s=60.0, timeout_s=2.0)
    consumer = threading.Thread(target=lambda: list(poller.batches(stop)))
    consumer.start()
    deadline = time.monotonic() + 5
    while not (poller.stats["ok"] or poller.stats["errors"]) and time.monotonic() < deadline:  # now waiting
        time.sleep(0.01)
    stopped_at = time.monotonic()
    stop.set()
    consumer.join(timeout=5)
    assert not consumer.is_alive()
    assert time.monotonic() - stopped_at < 1.0
    assert server.served == 1


# --- recording and replay ---------------------------------------------------


def test_record_then_replay_yields_the_same_events_and_counts(server, tmp_path):
    recording = tmp_path / "state" / "recording.jsonl"
    script = [
        ok(make_tx(1), make_tx(2, weight=100)),
        Reply(503),  # not a 200: not recorded
        Reply(200, "not json"),
        ok(make_tx(2), make_tx(3, time=int(time.time()) + 2 * MAX_CLOCK_SKEW_S), make_tx(4, fee=1.5)),
        Reply(200, json.dumps({"txs": "oops"})),
    ]
    _, live, _ = poll_script(server, script, record_to=recording)
    replayed = list(ReplaySource(recording).batches(threading.Event()))

    assert len(recording.read_text().splitlines()) == len(live) == len(replayed) == 4
    assert [batch.source_pos for batch in replayed] == ["1", "2", "3", "4"]
    for live_batch, replay_batch in zip(live, replayed):
        assert replay_batch.fetched_at == live_batch.fetched_at
        assert replay_batch.events.tobytes() == live_batch.events.tobytes()
        assert replay_batch.malformed == live_batch.malformed
    assert live[2].malformed == Counter({"time: in the future": 1, "fee: not an integer": 1})
    assert live[3].malformed == Counter({"txs: not a list": 1})


def write_recording(path: Path, fetched_ats: list[float]) -> None:
    for n, fetched_at in enumerate(fetched_ats):
        append_record(path, fetched_at, ok(make_tx(n)).body)


def test_replay_resume_from_skips_through_that_line(tmp_path):
    recording = tmp_path / "recording.jsonl"
    write_recording(recording, [NOW, NOW + 15, NOW + 30])
    batches = list(ReplaySource(recording).batches(threading.Event(), resume_from="2"))
    assert [batch.source_pos for batch in batches] == ["3"]
    assert hashes(batches[0].events) == [make_tx(2)["hash"]]
    assert batches[0].fetched_at == NOW + 30


def test_replay_counts_a_truncated_final_line(tmp_path):
    recording = tmp_path / "recording.jsonl"
    write_recording(recording, [NOW, NOW + 15])
    with recording.open("a") as damaged:
        damaged.write('{"fetched_at": 1767225630.0, "body": "{\\"txs\\": [')  # the crash cut it here

    batches = list(ReplaySource(recording).batches(threading.Event()))
    assert [len(batch) for batch in batches] == [1, 1, 0]
    assert batches[2].malformed == Counter({CORRUPT_LINE: 1})
    assert batches[2].source_pos == "3" and batches[2].fetched_at == NOW + 15


def test_replay_treats_undecodable_and_incomplete_lines_as_corrupt(tmp_path):
    recording = tmp_path / "recording.jsonl"
    recording.write_bytes(b'{"fetched_at": 1.0, "body": "\xff"}\n{"fetched_at": 1.0}\n{"body": "{}"}\n[1, 2]\n')
    batches = list(ReplaySource(recording).batches(threading.Event()))
    assert sum((batch.malformed for batch in batches), Counter()) == Counter({CORRUPT_LINE: 4})


def test_poller_appends_after_a_line_a_crash_cut_short(server, tmp_path):
    recording = tmp_path / "recording.jsonl"
    write_recording(recording, [NOW])
    with recording.open("a") as damaged:
        damaged.write('{"fetched_at": 17672')
    poll_script(server, [ok(make_tx(7))], record_to=recording)

    batches = list(ReplaySource(recording).batches(threading.Event()))
    assert [dict(batch.malformed) for batch in batches] == [{}, {CORRUPT_LINE: 1}, {}]
    assert hashes(batches[2].events) == [make_tx(7)["hash"]]


@pytest.mark.parametrize(("speed", "expected_waits"), [(2.0, [5.0, 10.0]), (None, [])])
def test_replay_speed_scales_the_recorded_gaps(tmp_path, speed, expected_waits):
    recording = tmp_path / "recording.jsonl"
    write_recording(recording, [NOW, NOW + 10, NOW + 30])
    stop = RecordingStop()
    assert len(list(ReplaySource(recording, speed=speed).batches(stop))) == 3
    assert stop.waits == expected_waits


def test_replay_stops_when_asked(tmp_path):
    recording = tmp_path / "recording.jsonl"
    write_recording(recording, [NOW, NOW + 10, NOW + 30])
    stop = RecordingStop(after_waits=1)
    assert [batch.source_pos for batch in ReplaySource(recording, speed=1.0).batches(stop)] == ["1"]


# --- parse_response and validate_transactions -------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("<html>502 Bad Gateway</html>", "response: not JSON"),
        (b"\xff\xfe not utf-8", "response: not JSON"),
        ("[" * 100_000, "response: not JSON"),  # nesting deep enough to exhaust the recursion limit
        ("", "response: not JSON"),
        ("[]", "txs: missing"),
        ('{"notice": "rate limited"}', "txs: missing"),
        ('{"txs": {"hash": "x"}}', "txs: not a list"),
        ('{"txs": [42]}', "transaction: not an object"),
    ],
)
def test_parse_response_counts_bad_bodies_without_raising(body, reason):
    events, malformed = parse_response(body, now=NOW)
    assert len(events) == 0 and malformed == Counter({reason: 1})


def test_parse_response_accepts_bytes():
    events, malformed = parse_response(json.dumps({"txs": [make_tx(1)]}).encode(), now=NOW)
    assert hashes(events) == [make_tx(1)["hash"]] and not malformed


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"fee": True}, "fee: not an integer"),
        ({"fee": 1.5}, "fee: not an integer"),
        ({"fee": "1000"}, "fee: not an integer"),
        ({"fee": -1}, "fee: below 0"),
        ({"fee": None}, "fee: missing"),
        ({"hash": "a" * 63}, "hash: not 64 hex characters"),
        ({"hash": "g" * 64}, "hash: not 64 hex characters"),
        ({"size": 200, "weight": 199}, "weight: not between size and 4 x size"),
        ({"size": 200, "weight": 801}, "weight: not between size and 4 x size"),
        ({"time": int(NOW) + MAX_CLOCK_SKEW_S + 1}, "time: in the future"),
        ({"time": 1_000_000_000}, "time: below 1231006505"),  # before the genesis block
    ],
)
def test_validate_transactions_rejects(overrides, reason):
    events, malformed = validate_transactions([make_tx(1), make_tx(2, **overrides)], now=NOW)
    assert hashes(events) == [make_tx(1)["hash"]]
    assert malformed == Counter({reason: 1})


@pytest.mark.parametrize(
    ("overrides", "now"),
    [
        ({"fee": 2.0}, NOW),  # an integral float is an integer
        ({"fee": 0}, NOW),
        ({"size": 200, "weight": 200}, NOW),
        ({"size": 200, "weight": 800}, NOW),
        ({"time": int(NOW) + MAX_CLOCK_SKEW_S}, NOW),  # at the skew limit
        ({"time": int(NOW) + 10 * MAX_CLOCK_SKEW_S}, None),  # no clock to compare with
    ],
)
def test_validate_transactions_accepts(overrides, now):
    tx = make_tx(1, **overrides)
    events, malformed = validate_transactions([tx], now=now)
    assert not malformed
    fields = ("time", "fee", "size", "weight")
    assert [events[name][0] for name in fields] == [tx[name] for name in fields]
