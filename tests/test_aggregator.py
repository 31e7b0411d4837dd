"""Windowing edge cases of the event-time aggregator, and its exactly-once replay."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_events
from helpers.core.aggregator import Aggregator, WindowConfig
from helpers.ingestion.checkpoint import Checkpoint

M = 1_800_000_000 // 60 * 60  # a minute boundary (2027-01-15T08:00:00Z)


def run(records, config=WindowConfig()):
    agg = Aggregator(config)
    emitted, dead = [], []
    for rows in records:
        out, dl = agg.process(make_events(rows))
        emitted += out
        dead += dl
    return agg, emitted, dead


def latest(emitted):
    by_minute = {}
    for record in emitted:
        if record["revision"] >= by_minute.get(record["tx_minute"], {"revision": -1})["revision"]:
            by_minute[record["tx_minute"]] = record
    return by_minute


def test_window_boundaries_are_half_open():
    _, emitted, _ = run([[(1, M + 59, 10), (2, M + 60, 20)], [(3, M + 181, 5)]])
    by_minute = latest(emitted)
    assert by_minute["2027-01-15T08:00:00Z"]["tx_count"] == 1
    assert by_minute["2027-01-15T08:01:00Z"]["tx_count"] == 1
    assert "2027-01-15T08:03:00Z" not in by_minute  # still open


def test_window_emits_only_once_the_watermark_passes_its_end():
    agg, emitted, _ = run([[(1, M + 10, 10)], [(2, M + 119, 10)]])
    assert emitted == [] and agg.watermark == M + 59
    out, _ = agg.process(make_events([(3, M + 120, 10)]))
    assert [r["tx_minute"] for r in out] == ["2027-01-15T08:00:00Z"]
    assert out[0]["window_start"] == M and out[0]["event_time"] == agg.watermark == M + 60


def test_out_of_order_events_within_the_bound_count_in_their_minute():
    _, emitted, dead = run([[(1, M + 50, 1), (2, M + 5, 2)], [(3, M + 100, 3), (4, M + 30, 4)], [(5, M + 300, 0)]])
    first = latest(emitted)["2027-01-15T08:00:00Z"]
    assert first["tx_count"] == 3 and first["total_fee"] == 7 and first["revision"] == 0 and dead == []


def test_late_event_within_allowed_lateness_revises_its_minute():
    agg, emitted, dead = run([[(1, M + 10, 100)], [(2, M + 200, 1)], [(3, M + 20, 50)]])
    revisions = [r for r in emitted if r["tx_minute"] == "2027-01-15T08:00:00Z"]
    assert [(r["revision"], r["tx_count"], r["total_fee"]) for r in revisions] == [(0, 1, 100), (1, 2, 150)]
    assert revisions[0]["event_time"] <= revisions[1]["event_time"]  # a later revision is known later
    assert agg.state.counters.late_accepted == 1 and agg.state.counters.revisions_emitted == 1 and dead == []


def test_event_beyond_allowed_lateness_is_dead_lettered_not_dropped():
    config = WindowConfig(allowed_lateness_s=120)
    agg, emitted, dead = run([[(1, M + 10, 100)], [(2, M + 400, 1)], [(3, M + 20, 50)]], config)
    assert [r["tx_count"] for r in emitted if r["tx_minute"] == "2027-01-15T08:00:00Z"] == [1]
    assert len(dead) == 1 and dead[0][1:3] == (M + 20, 50) and dead[0][-1] == "beyond allowed lateness"
    assert agg.state.counters.dead_lettered == 1


def test_duplicates_within_and_across_polls_count_once():
    agg, emitted, _ = run([[(1, M + 1, 10), (1, M + 1, 10), (2, M + 2, 20)], [(2, M + 2, 20), (3, M + 3, 30)],
                           [(9, M + 200, 0)]])
    first = latest(emitted)["2027-01-15T08:00:00Z"]
    assert (first["tx_count"], first["total_fee"]) == (3, 60)
    assert agg.state.counters.duplicates_dropped == 2 and agg.state.counters.events_in == 6


def test_duplicate_of_a_dead_letter_is_a_duplicate():
    config = WindowConfig(allowed_lateness_s=0)
    agg, _, dead = run([[(1, M + 10, 1)], [(2, M + 400, 1)], [(3, M + 20, 5)], [(3, M + 20, 5)]], config)
    assert len(dead) == 1 and agg.state.counters.duplicates_dropped == 1


def test_empty_minutes_emit_nothing_and_their_neighbours_close():
    _, emitted, _ = run([[(1, M + 10, 1)], [(2, M + 250, 2)], [(3, M + 400, 3)]])
    assert sorted(latest(emitted)) == ["2027-01-15T08:00:00Z", "2027-01-15T08:04:00Z"]


def test_average_fee_is_a_float_never_truncated():
    _, emitted, _ = run([[(1, M + 1, 1, 100, 400), (2, M + 2, 2, 100, 400)], [(3, M + 200, 0)]])
    record = latest(emitted)["2027-01-15T08:00:00Z"]
    assert record["avg_fee"] == 1.5 and record["avg_fee_rate"] == 3 / 200


def test_hash_memory_is_bounded_by_the_ttl():
    config = WindowConfig(dedupe_ttl_s=3600)
    agg, _, _ = run([[(i, M + i, 1) for i in range(100)], [(1000, M + 7200, 1)]], config)
    assert len(agg.state.seen_keys) == 1  # only the hash younger than W - ttl is remembered


def test_empty_record_changes_nothing():
    agg, emitted, dead = run([[]])
    assert (emitted, dead, agg.watermark) == ([], [], None)


events_strategy = st.lists(
    st.tuples(st.integers(0, 40), st.integers(0, 900), st.integers(0, 10_000)), min_size=1, max_size=120
)


@settings(max_examples=60, deadline=None)
@given(events=events_strategy, cuts=st.lists(st.integers(0, 120), max_size=8), crash_at=st.integers(0, 9))
def test_every_unique_transaction_counts_exactly_once_even_across_a_restart(tmp_path_factory, events, cuts, crash_at):
    """Per minute: latest revision + dead letters == ground truth, whatever the batching and crash point."""
    rows = [(key, M + t, fee) for key, t, fee in events]
    truth = {}
    for key, t, fee in {key: (key, t, fee) for key, t, fee in reversed(rows)}.values():  # first copy wins
        count, total = truth.get(t // 60 * 60, (0, 0))
        truth[t // 60 * 60] = (count + 1, total + fee)
    bounds = sorted({0, len(rows), *[c for c in cuts if c < len(rows)]})
    records = [rows[a:b] for a, b in zip(bounds, bounds[1:])] + [[(10**6, M + 10**5, 0)]]  # a final flush

    config = WindowConfig(allowed_lateness_s=120)
    path = tmp_path_factory.mktemp("ckpt") / "agg.db"
    agg, emitted, dead = Aggregator(config), [], []
    for i, record in enumerate(records):
        if i == crash_at:  # checkpoint, "crash", restore from the checkpoint
            Checkpoint(path).commit(i, agg.state, [], [])
            agg = Aggregator(config, Checkpoint(path).load()[1])
        out, dl = agg.process(make_events(record))
        emitted += out
        dead += dl
    seen = {}
    for r in latest(emitted).values():
        seen[int(r["window_start"])] = (r["tx_count"], r["total_fee"])
    for _, t, fee, *_ in dead:
        count, total = seen.get(t // 60 * 60, (0, 0))
        seen[t // 60 * 60] = (count + 1, total + fee)
    seen.pop(M + 10**5 // 60 * 60, None)
    assert seen == truth


def test_distinct_hashes_sharing_a_long_prefix_are_all_counted(tmp_path):
    """Dedupe is on the whole hash: 3,535 hashes equal but for their last byte or two lose nothing."""
    events = make_events([(0, M + i % 60, 10) for i in range(3535)])
    events["hash"][:, :30] = 0xAB  # a replay file or a hostile source: 30 shared bytes
    events["hash"][:, 30] = np.arange(3535) // 256
    events["hash"][:, 31] = np.arange(3535) % 256
    agg = Aggregator()
    first, _ = agg.process(events[:2000])
    Checkpoint(tmp_path / "c.db").commit(1, agg.state, [], [])
    agg = Aggregator(state=Checkpoint(tmp_path / "c.db").load()[1])  # and the memory survives a restart
    agg.process(np.concatenate([events[1000:], events[:10]]))  # overlapping polls: 1,010 true duplicates
    out, _ = agg.process(make_events([(1, M + 200, 1)]))
    assert latest(first + out)["2027-01-15T08:00:00Z"]["tx_count"] == 3535
    assert agg.state.counters.duplicates_dropped == 1010


@settings(max_examples=80, deadline=None)
@given(events=events_strategy, cuts=st.lists(st.integers(0, 120), max_size=10))
def test_the_output_depends_on_the_order_of_events_never_on_their_batching(events, cuts):
    """What the Flink job relies on: fed one event at a time, the engine emits exactly what it emits in batches."""
    rows = [(key, M + t, fee) for key, t, fee in events] + [(10**6, M + 10**5, 0)]
    bounds = sorted({0, len(rows), *[c for c in cuts if c < len(rows)]})
    config = WindowConfig(allowed_lateness_s=120)
    batched = run([rows[a:b] for a, b in zip(bounds, bounds[1:])], config)
    one_by_one = run([[row] for row in rows], config)
    assert batched[1] == one_by_one[1] and batched[2] == one_by_one[2]
    assert vars(batched[0].state.counters) == vars(one_by_one[0].state.counters)


def test_a_late_event_in_the_batch_that_closes_its_window_is_a_revision_at_once():
    _, emitted, _ = run([[(1, M + 10, 100), (2, M + 125, 1), (3, M + 30, 50)], [(4, M + 400, 0)]])
    revisions = [(r["revision"], r["tx_count"], r["event_time"]) for r in emitted if r["window_start"] == M]
    assert revisions == [(0, 1, M + 65), (1, 2, M + 65)]  # closed by event 2, revised by event 3, in one batch
