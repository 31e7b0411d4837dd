"""The Managed Flink job, run by PyFlink in local mode on the same event file as the local engine: the same minutes,
revisions and dead letters, minute by minute. The job reads a file where AWS has Kinesis; its code is otherwise the
one Managed Flink runs."""
import numpy as np
import pytest

from conftest import PINNED_NOW, make_events
from helpers.core.aggregator import Aggregator
from helpers.core.events import hash_keys
from helpers.ingestion.flink_local import FLINK_PYTHON, compare_minute_by_minute, run_flink_job, write_events_file
from helpers.ingestion.sources.simulator import SimulatorConfig, TransactionModel

pytestmark = pytest.mark.slow
HOURS = 3
START = PINNED_NOW - HOURS * 3600
PREFIXED = 600  # distinct hashes sharing their first 30 bytes


def polls_with_hard_cases() -> tuple[list[np.ndarray], int]:
    """Three simulated hours as the poller delivers them, poll by poll (overlapping polls, late and very late copies),
    with the cases a stream gets wrong added at the middle poll: a duplicate within a poll, polls replayed later,
    a late event for a minute that closed empty, and 600 distinct hashes sharing a 30-byte prefix. Returns the
    polls and the empty minute."""
    model = TransactionModel(SimulatorConfig(seed=7, late_fraction=0.03, very_late_fraction=0.005))
    copies, delivered_at = model.delivery_schedule(START, PINNED_NOW)
    polls = [copies[delivered_at == t] for t in np.unique(delivered_at)]
    polls = [poll[poll["time"] >= START] for poll in polls]
    middle = len(polls) // 2
    now_then = int(np.concatenate(polls[:middle])["time"].max())
    empty_minute = now_then // 60 * 60 - 180  # closed by the watermark (now_then - 60), within its lateness
    polls = [poll[poll["time"] // 60 * 60 != empty_minute] for poll in polls]
    prefixed = make_events([(0, now_then - 30 + i % 20, 10 + i) for i in range(PREFIXED)])
    prefixed["hash"][:, :30] = 0xAB
    prefixed["hash"][:, 30], prefixed["hash"][:, 31] = np.arange(PREFIXED) // 256, np.arange(PREFIXED) % 256
    late_into_empty = make_events([(10**9, empty_minute + 7, 4242)])
    hard = np.concatenate([prefixed, late_into_empty, prefixed[:50], polls[middle - 1][:20]])  # within, across
    polls = polls[:middle] + [hard] + polls[middle:]
    polls.insert(middle + 3, np.concatenate([polls[middle - 2], prefixed[-100:]]))  # replayed polls
    return polls, empty_minute


def run_local(batches) -> tuple[Aggregator, list[dict], list[tuple]]:
    aggregator, records, letters = Aggregator(), [], []
    for batch in batches:
        emitted, dead = aggregator.process(batch)
        records += emitted
        letters += dead
    return aggregator, records, letters


@pytest.fixture(scope="module")
def both_engines(tmp_path_factory):
    if not FLINK_PYTHON.exists():
        pytest.skip(f"no PyFlink environment at {FLINK_PYTHON}: run `make flink-venv` (make test does)")
    polls, empty_minute = polls_with_hard_cases()
    events = np.concatenate(polls)
    folder = tmp_path_factory.mktemp("flink")
    features, dead = run_flink_job(write_events_file(folder / "events.jsonl", events), folder / "out", timeout_s=300)
    return polls, events, empty_minute, run_local(polls), features, dead  # the local engine poll by poll


def test_the_flink_job_and_the_local_engine_agree_minute_by_minute(both_engines):
    _, _, _, (_, records, letters), features, dead = both_engines
    result = compare_minute_by_minute(records, letters, features, dead)
    assert result.equal, result.differences
    assert result.minutes >= HOURS * 60 - 10 and result.revisions == len(features) and len(dead) == len(letters)


def test_the_event_file_holds_every_hard_case(both_engines):
    _, events, empty_minute, (aggregator, records, letters), _, _ = both_engines
    counters = aggregator.state.counters
    assert counters.events_in == len(events)
    assert counters.duplicates_dropped >= 1000  # the simulator's overlapping polls, the duplicates added
    assert counters.late_accepted == counters.revisions_emitted >= 20  # late, within the allowed lateness
    assert counters.dead_lettered == len(letters) >= 5  # beyond it
    assert all(wm >= t // 60 * 60 + 60 + 300 for _, t, _, _, _, wm, _ in letters)
    unique = len(np.unique(hash_keys(events)))
    assert unique == counters.events_in - counters.duplicates_dropped
    late_first = [r for r in records if r["window_start"] == empty_minute]  # the minute that closed empty
    assert len(late_first) == 1 and late_first[0]["revision"] == 0 and late_first[0]["total_fee"] == 4242
    assert late_first[0]["event_time"] >= empty_minute + 60  # emitted after the minute had closed
    prefixed = (events["hash"][:, :30] == 0xAB).all(axis=1)
    assert len(np.unique(hash_keys(events[prefixed]))) == PREFIXED
    # Every distinct transaction is counted once: in its minute's latest revision, a still open minute, or a dead
    # letter. A dedupe on a prefix of the hash would lose 599 of the 600.
    latest = {}
    for record in records:
        latest[record["tx_minute"]] = record["tx_count"]
    still_open = sum(w.stats[0] for w in aggregator.state.windows.values() if w.revision < 0)
    assert sum(latest.values()) + still_open + len(letters) == unique


def test_the_local_engine_does_not_depend_on_batching(both_engines):
    polls, events, _, (_, records, letters), _, _ = both_engines
    _, whole, whole_letters = run_local([events])
    assert (whole, whole_letters) == (records, letters)
    middle = len(polls) // 2
    part = polls[middle - 60:middle + 60]  # half an hour around the added cases
    _, by_poll, by_poll_letters = run_local(part)
    _, one_by_one, one_by_one_letters = run_local(event[None] for event in np.concatenate(part))
    assert (one_by_one, one_by_one_letters) == (by_poll, by_poll_letters)
    assert any(r["revision"] > 0 for r in by_poll) and len(by_poll) >= 25


def test_a_difference_is_found_and_named(both_engines):
    _, _, _, (_, records, letters), features, dead = both_engines
    altered = features.copy()
    altered.loc[0, "tx_count"] += 1
    found = compare_minute_by_minute(records, letters, altered.iloc[:-1], dead.iloc[1:])
    assert not found.equal
    assert any("local (count, total, avg)" in d for d in found.differences)
    assert any("emitted 1 times by the local engine, 0 by Flink" in d for d in found.differences)
    assert any("dead letters differ: 1 only local" in d for d in found.differences)
