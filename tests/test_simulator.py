import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from helpers.core.events import EVENT_DTYPE, hash_keys, vsize
from helpers.ingestion.sources.simulator import (
    Drift,
    Simulator,
    SimulatorConfig,
    TransactionModel,
    ar1,
    inject_drift,
    load_drifts,
)
from helpers.local.clock import SimClock

T0 = 1_763_337_600  # 2025-11-17T00:00:00Z
HOUR, DAY = 3600, 86400
CFG = SimulatorConfig(origin=T0 - DAY)  # a near origin keeps the latent path short


def fast_clock(sim_now: float, speed: float) -> SimClock:
    return SimClock(anchor_wall=time.time(), anchor_sim=sim_now, speed=speed)


def run(sim: Simulator, resume_from: str | None = None, on_batch=None) -> list:
    batches = []
    for batch in sim.batches(threading.Event(), resume_from):
        batches.append(batch)
        if on_batch:
            on_batch(batches)
    return batches


def events_of(batches) -> np.ndarray:
    return np.concatenate([b.events for b in batches]) if batches else np.zeros(0, EVENT_DTYPE)


def since(start: float, events: np.ndarray) -> np.ndarray:
    """A simulator started at ``start`` delivers nothing from before it (no partial first minutes)."""
    return events[events["time"] >= start]


def test_ar1_matches_the_recursion_with_and_without_leading_dims():
    rng = np.random.default_rng(0)
    shocks = rng.standard_normal((3, 200))
    start = np.array([0.5, -1.0, 2.0])
    expected = np.empty_like(shocks)
    x = start.copy()
    for t in range(shocks.shape[1]):
        x = 0.97 * x + shocks[:, t]
        expected[:, t] = x
    np.testing.assert_allclose(ar1(shocks, 0.97, start), expected, atol=1e-12)
    np.testing.assert_allclose(ar1(shocks[1], 0.97, -1.0), expected[1], atol=1e-12)


def test_same_seed_same_output_other_seed_differs():
    a, b = TransactionModel(CFG), TransactionModel(CFG)
    other = TransactionModel(replace(CFG, seed=7))
    np.testing.assert_array_equal(a.transactions(T0, T0 + 2 * HOUR), b.transactions(T0, T0 + 2 * HOUR))
    np.testing.assert_array_equal(a.deliveries(T0, T0 + HOUR), b.deliveries(T0, T0 + HOUR))
    first_hashes = [model.transactions(T0, T0 + 60)["hash"][:10] for model in (a, other)]
    assert not np.array_equal(*first_hashes)


def test_pieces_equal_the_whole():
    whole, pieces = TransactionModel(CFG), TransactionModel(CFG)
    cuts = [T0, T0 + 1234.5, T0 + 7000, T0 + 3 * HOUR]
    for query in ("transactions", "deliveries"):
        full = getattr(whole, query)(cuts[0], cuts[-1])
        # later pieces first: nothing may depend on the order of queries
        parts = [getattr(pieces, query)(a, b) for a, b in reversed(list(zip(cuts, cuts[1:])))]
        np.testing.assert_array_equal(np.concatenate(parts[::-1]), full)
    minutes = np.arange(T0 - DAY, T0 + 2 * DAY, 60)  # crosses day blocks of the latent path
    full = TransactionModel(CFG).latent(minutes)
    fresh = TransactionModel(CFG)
    late, early = fresh.latent(minutes[3000:]), fresh.latent(minutes[:3000])
    for key, values in full.items():
        np.testing.assert_array_equal(np.concatenate([early[key], late[key]]), values)


def test_transactions_are_sorted_bitcoin_like_and_inside_the_window():
    txs = TransactionModel(CFG).transactions(T0 + 10.5, T0 + HOUR)
    assert np.all(np.diff(txs["time"]) >= 0)
    assert txs["time"].min() >= T0 + 10.5 and txs["time"].max() < T0 + HOUR
    assert np.all((txs["size"] <= txs["weight"]) & (txs["weight"] <= 4 * txs["size"]))
    assert 200 < np.median(vsize(txs)) < 300
    assert np.all(txs["fee"] >= vsize(txs))  # at least the 1 sat/vB minimum relay fee
    assert len(np.unique(hash_keys(txs))) == len(txs)


def test_deliveries_lose_nothing_with_the_configured_duplicates_and_lateness():
    model = TransactionModel(CFG)
    t0, t1 = T0 + HOUR, T0 + 7 * HOUR
    truth = model.transactions(t0, t1)
    copies, delivered_at = model.delivery_schedule(t0, t1 + CFG.max_delivery_lag_s)
    mine = (copies["time"] >= t0) & (copies["time"] < t1)
    copies, delivered_at = copies[mine], delivered_at[mine]
    keys, first_index, n_copies = np.unique(hash_keys(copies), return_index=True, return_counts=True)
    np.testing.assert_array_equal(keys, np.sort(hash_keys(truth)))  # every transaction, nothing invented
    assert np.all(delivered_at > copies["time"])
    assert np.all(delivered_at % CFG.poll_interval_s == 0)  # delivered by polls
    n = len(truth)
    first_delay = delivered_at[first_index] - copies["time"][first_index]
    assert first_delay.max() <= CFG.max_delivery_lag_s
    assert np.mean(n_copies == 2) == pytest.approx(CFG.overlap_fraction, abs=0.01)
    assert np.all(n_copies <= 2)
    late = (first_delay > CFG.late_delay_s[0]) & (first_delay <= CFG.late_delay_s[1] + CFG.poll_interval_s)
    very_late = first_delay >= CFG.very_late_delay_s[0]
    assert np.all(late | very_late | (first_delay <= CFG.poll_interval_s))
    assert late.sum() / n == pytest.approx(CFG.late_fraction, rel=0.2)
    assert very_late.sum() / n == pytest.approx(CFG.very_late_fraction, rel=0.4)


def test_deliveries_come_poll_by_poll_shuffled_within_each_poll():
    copies, delivered_at = TransactionModel(CFG).delivery_schedule(T0 + HOUR, T0 + 2 * HOUR)
    assert np.all(np.diff(delivered_at) >= 0)
    polls = np.split(copies["time"], np.flatnonzero(np.diff(delivered_at)) + 1)
    assert len(polls) == HOUR // CFG.poll_interval_s
    out_of_order = [np.any(np.diff(times) < 0) for times in polls]
    assert np.mean(out_of_order) > 0.9


def test_daily_seasonality_peaks_in_the_utc_afternoon():
    model = TransactionModel(CFG)
    days = T0 + DAY * np.arange(3)
    peak, trough = days + 15 * HOUR, days + 3 * HOUR
    assert model.latent(peak)["rate_per_s"].mean() > 1.4 * model.latent(trough)["rate_per_s"].mean()
    peak_count = sum(len(model.transactions(t, t + HOUR)) for t in peak)
    trough_count = sum(len(model.transactions(t, t + HOUR)) for t in trough)
    assert peak_count > 1.4 * trough_count


def test_fees_are_heavy_tailed():
    fee = TransactionModel(CFG).transactions(T0, T0 + 6 * HOUR)["fee"]
    p50, p99 = np.percentile(fee, [50, 99])
    assert p99 / p50 > 5
    assert fee.max() / p50 > 50


def test_fee_drift_multiplies_fees_from_its_start_and_leaves_earlier_ones_identical():
    start = T0 + 1800 + 17  # mid-minute: applies from the next whole minute
    drifted = TransactionModel(replace(CFG, drifts=(Drift(start=start, fee_factor=3.0),)))
    base = TransactionModel(CFG)
    before, after = drifted.transactions(T0, T0 + HOUR), base.transactions(T0, T0 + HOUR)
    for name in ("hash", "time", "size", "weight"):
        np.testing.assert_array_equal(before[name], after[name])
    first_minute = T0 + 1860
    earlier = before["time"] < first_minute
    np.testing.assert_array_equal(before["fee"][earlier], after["fee"][earlier])
    fee_rate = after["fee"] / vsize(after)
    unclipped = (fee_rate > 1.01) & (fee_rate < 3000)  # inside the fee-rate range before and after x3
    later = ~earlier & unclipped
    assert np.all(np.abs(before["fee"][later] - 3 * after["fee"][later]) <= 2)
    minutes = np.array([first_minute - 60, first_minute])
    np.testing.assert_allclose(drifted.latent(minutes)["fee_level"] / base.latent(minutes)["fee_level"], [1, 3])


@pytest.mark.parametrize("rate_factor", [0.5, 2.0])
def test_rate_drift_changes_counts_after_its_start_only(rate_factor):
    start = T0 + 2 * HOUR
    drifted = TransactionModel(replace(CFG, drifts=(Drift(start=start, fee_factor=1.0, rate_factor=rate_factor),)))
    base = TransactionModel(CFG)
    np.testing.assert_array_equal(drifted.transactions(T0, start), base.transactions(T0, start))
    ratio = len(drifted.transactions(start, start + 2 * HOUR)) / len(base.transactions(start, start + 2 * HOUR))
    assert ratio == pytest.approx(rate_factor, rel=0.05)


def test_drift_file_round_trip(tmp_path):
    path = tmp_path / "drifts.json"
    assert load_drifts(path) == ()
    first, second = Drift(start=T0, fee_factor=3.0), Drift(start=T0 + HOUR, fee_factor=1 / 3, rate_factor=1.5)
    inject_drift(path, first)
    inject_drift(path, second)
    assert load_drifts(path) == (first, second)


def test_a_running_simulator_picks_up_an_injected_drift_for_new_transactions_only(tmp_path):
    path = tmp_path / "drifts.json"
    now = T0 + 2 * HOUR
    clock = fast_clock(now, speed=600)  # a 15 s poll takes 25 ms
    sim = Simulator(CFG, start=T0 + HOUR, clock=clock, until=now + 600, drift_file=path)
    injected = {}

    def inject_after_first_live_batch(batches):
        if not injected and batches[-1].fetched_at >= now:
            injected["at"] = batches[-1].fetched_at
            inject_drift(path, Drift(start=clock.now() + 60, fee_factor=3.0))
            inject_drift(path, Drift(start=T0, fee_factor=2.0))  # in the past: applies from now on only

    batches = run(sim, on_batch=inject_after_first_live_batch)
    future, past = sim.config.drifts
    assert future.fee_factor == 3.0 and past.fee_factor == 2.0
    assert past.start >= injected["at"]  # clamped: history already delivered stays as it was
    delivered = events_of(batches)
    reference = TransactionModel(replace(CFG, drifts=sim.config.drifts))
    np.testing.assert_array_equal(delivered, since(T0 + HOUR, reference.deliveries(T0 + HOUR, now + 600)))
    undrifted = since(T0 + HOUR, TransactionModel(CFG).deliveries(T0 + HOUR, now + 600))
    changed = delivered["fee"] != undrifted["fee"]
    assert changed.any() and delivered["time"][changed].min() >= past.start


def test_backfill_then_live_then_resume_without_gap_or_overlap():
    now = T0 + 3 * HOUR + 7
    clock = fast_clock(now, speed=300)  # a 15 s poll takes 50 ms
    until = now + 300

    def simulator():
        return Simulator(CFG, start=T0, clock=clock, until=until)

    first = []
    for batch in simulator().batches(threading.Event()):
        first.append(batch)
        if len(first) == 10:
            break
    spans = np.diff([T0] + [b.fetched_at for b in first])
    assert spans[0] == HOUR  # backfill: one batch per backfill_chunk_s
    assert spans[-1] == CFG.poll_interval_s  # live: one batch per poll
    assert all(b.source_pos == str(b.fetched_at) for b in first)
    rest = run(simulator(), resume_from=first[-1].source_pos)
    assert rest[0].fetched_at > first[-1].fetched_at and rest[-1].fetched_at == until
    all_copies = TransactionModel(CFG).deliveries(T0, until)
    assert (all_copies["time"] < T0).any() and events_of(first)["time"].min() >= T0
    np.testing.assert_array_equal(events_of(first + rest), since(T0, all_copies))


def test_catches_up_in_big_batches_when_the_clock_jumps_ahead():
    now = T0 + HOUR
    clock = fast_clock(now, speed=3000)
    until = now + 2 * HOUR + 300
    sim = Simulator(CFG, start=now, clock=clock, until=until)

    def jump_once(batches):
        if len(batches) == 3:
            clock.anchor_sim += 2 * HOUR  # the service was down for two hours

    batches = run(sim, on_batch=jump_once)
    spans = np.diff([now] + [b.fetched_at for b in batches])
    assert spans.max() == HOUR
    np.testing.assert_array_equal(events_of(batches), since(now, TransactionModel(CFG).deliveries(now, until)))


def test_stop_ends_a_live_wait_promptly():
    now = T0 + HOUR
    sim = Simulator(CFG, start=now, clock=fast_clock(now, speed=1.0), until=now + HOUR)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert list(sim.batches(stop)) == []  # the first poll is up to 15 s away
    assert time.monotonic() - started < 2


def test_nothing_before_the_origin():
    model = TransactionModel(CFG)
    with pytest.raises(ValueError, match="origin"):
        model.latent(np.array([CFG.origin - 60]))
    assert len(model.transactions(CFG.origin - HOUR, CFG.origin)) == 0
    with pytest.raises(ValueError, match="origin"):
        SimulatorConfig(origin=CFG.origin + 1)


def test_seven_days_is_about_three_and_a_half_million_transactions():
    model = TransactionModel(SimulatorConfig())
    started = time.perf_counter()
    count = len(model.transactions(T0, T0 + 7 * DAY))
    elapsed = time.perf_counter() - started
    print(f"7 days: {count:,} transactions in {elapsed:.2f} s ({count / elapsed:,.0f} tx/s)")
    assert count == pytest.approx(3.5e6, rel=0.15)
