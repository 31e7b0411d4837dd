"""A seeded, Bitcoin-like transaction simulator: the offline twin of the live API.

The model, in three layers:

1. A latent market state, one value per minute, Markov and generated forward
   from ``config.origin``:
   - arrival rate (tx/s) = base x daily seasonality (busiest in the UTC
     afternoon) x exp(AR(1) noise);
   - fee level (sat/vB) = base x daily seasonality x exp(AR(1) noise)
     x (1 + spike), where spikes arrive a few times a day (Poisson) and decay
     exponentially (a mempool congestion that clears).
2. Transactions: Poisson arrivals per minute at that rate. Each has a
   lognormal virtual size and a heavy-tailed fee rate (lognormal around the
   level, plus a rare Pareto tail of "overpayers"), so fee = rate x vsize.
3. Delivery, as polling the real API looks: every 15 s a poll returns what is
   new, partly overlapping the previous poll (duplicates), shuffled, with a few
   transactions late (within the allowed lateness) and a very few very late
   (beyond it: they must reach the dead-letter table).

Drift: a :class:`Drift` multiplies fees (and optionally the arrival rate) from
its start on; it can be injected into a running simulator through a JSON file,
to show a model going stale and being retrained.

Everything is a pure function of (config, time): transactions are generated per
hour with an RNG seeded by (seed, hour), the latent path day by day with an RNG
seeded by (seed, day). So a restarted service resumes exactly, tests compute the
ground truth independently, and a forecaster can condition on the true latent
state.
"""
from __future__ import annotations

import json
import logging
import math
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from helpers.core.events import EVENT_DTYPE, EventBatch, hash_keys
from helpers.local.clock import SharedClock, SimClock, write_json_atomic

log = logging.getLogger(__name__)

CHUNK_S = 3600  # transactions are generated one hour at a time
LATENT_BLOCK_MIN = 1440  # the latent path is generated one day at a time
STATE_KEYS = ("log_rate_noise", "log_fee_noise", "spike")  # the Markov state, one value per minute
# Independent RNG streams, so that e.g. adding drift-only transactions never shifts the base draws.
_LATENT_STREAM, _TX_STREAM, _EXTRA_TX_STREAM = 0, 1, 2


@dataclass(frozen=True)
class Drift:
    """From the first minute starting at or after ``start`` (unix s), fees x ``fee_factor``
    and the arrival rate x ``rate_factor``. Several drifts multiply."""

    start: float
    fee_factor: float
    rate_factor: float = 1.0

    def __post_init__(self) -> None:
        for name in ("fee_factor", "rate_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Drift {name}={getattr(self, name)}: must be > 0 (1.0 means unchanged)")


@dataclass(frozen=True)
class SimulatorConfig:
    """Every knob of the generating process; the defaults give ~3.5 M transactions a week around 15 sat/vB."""

    seed: int = 42
    origin: int = 1_735_689_600  # 2025-01-01T00:00Z: the latent path starts here; nothing happens before
    # arrivals
    base_rate_per_s: float = 5.8  # 7 days ~ 3.5 M transactions
    rate_daily_amplitude: float = 0.3
    rate_peak_hour_utc: float = 15.0
    rate_noise_phi: float = 0.9  # AR(1) per minute on the log rate
    rate_noise_sigma: float = 0.05
    # fee level (sat/vB)
    fee_base_sat_per_vb: float = 15.0
    fee_daily_amplitude: float = 0.4
    fee_peak_hour_utc: float = 16.0
    fee_noise_phi: float = 0.98  # AR(1) per minute on the log level
    fee_noise_sigma: float = 0.04
    spikes_per_day: float = 3.0
    spike_mean_jump: float = 1.5  # a spike multiplies the level by 1 + jump, exponential jump size
    spike_half_life_min: float = 20.0
    # per-transaction fee rate around the level
    fee_rate_sigma: float = 0.7  # lognormal spread
    fee_tail_fraction: float = 0.01  # overpayers: x (1 + Pareto(alpha))
    fee_tail_alpha: float = 2.0
    fee_rate_range_sat_per_vb: tuple[float, float] = (1.0, 10_000.0)  # min relay fee .. sanity cap
    # sizes
    vsize_median_vb: float = 250.0
    vsize_sigma: float = 0.6
    vsize_range_vb: tuple[float, float] = (60.0, 100_000.0)
    segwit_fraction: float = 0.8  # share of transactions that carry witness data
    witness_share_range: tuple[float, float] = (0.2, 0.65)  # witness bytes / total size of those
    # delivery
    poll_interval_s: int = 15
    overlap_fraction: float = 0.3  # delivered again by the next poll
    late_fraction: float = 0.01
    late_delay_s: tuple[int, int] = (60, 240)  # within an allowed lateness of 5 min
    very_late_fraction: float = 0.001
    very_late_delay_s: tuple[int, int] = (480, 1500)  # beyond it: dead letters
    drifts: tuple[Drift, ...] = ()

    def __post_init__(self) -> None:
        if self.origin % 60:
            raise ValueError(f"origin={self.origin}: must be a whole unix minute (a multiple of 60)")

    @property
    def max_delivery_lag_s(self) -> int:
        """The longest a copy can arrive after its event time: very late, then one poll, then a duplicate."""
        return self.very_late_delay_s[1] + 2 * self.poll_interval_s


# ---------------------------------------------------------------- latent state


def ar1(innovations: np.ndarray, phi: float, x0: float | np.ndarray) -> np.ndarray:
    """x[t] = phi * x[t-1] + innovations[t] along the last axis, from x[-1] = x0.

    Vectorised in blocks of 64: within a block a matrix product, across blocks
    only the carried-over value is sequential.
    """
    block = 64
    *lead, n = innovations.shape
    n_blocks = -(-n // block)
    padded = np.zeros((*lead, n_blocks * block))
    padded[..., :n] = innovations
    lags = np.subtract.outer(np.arange(block), np.arange(block))
    impulse = np.where(lags >= 0, phi ** np.maximum(lags, 0), 0.0)  # impulse[k, j] = phi^(k-j)
    from_zero = padded.reshape(*lead, n_blocks, block) @ impulse.T  # each block started at 0
    carry_weights = phi ** np.arange(1, block + 1)
    carry = np.asarray(x0, dtype=float)
    for b in range(n_blocks):
        from_zero[..., b, :] += carry_weights * carry[..., None]
        carry = from_zero[..., b, -1]
    return from_zero.reshape(*lead, n_blocks * block)[..., :n]


def simulate_latent(
    config: SimulatorConfig, n_minutes: int, state: dict[str, float | np.ndarray], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The next ``n_minutes`` of the Markov state, from ``state`` (the minute before).

    States may carry leading dimensions (many Monte Carlo paths at once); the
    minutes are the last axis.
    """
    lead = np.shape(state["spike"])
    rate_shocks = rng.standard_normal((*lead, n_minutes)) * config.rate_noise_sigma
    fee_shocks = rng.standard_normal((*lead, n_minutes)) * config.fee_noise_sigma
    new_spikes = rng.poisson(config.spikes_per_day / 1440, (*lead, n_minutes))
    jumps = new_spikes * rng.exponential(config.spike_mean_jump, (*lead, n_minutes))
    decay = 0.5 ** (1 / config.spike_half_life_min)
    return {
        "log_rate_noise": ar1(rate_shocks, config.rate_noise_phi, state["log_rate_noise"]),
        "log_fee_noise": ar1(fee_shocks, config.fee_noise_phi, state["log_fee_noise"]),
        "spike": ar1(jumps, decay, state["spike"]),
    }


def daily_pattern(minute_starts: np.ndarray, amplitude: float, peak_hour_utc: float) -> np.ndarray:
    hour = (minute_starts % 86400) / 3600  # unix time is UTC: no local time involved
    return 1 + amplitude * np.cos(2 * np.pi * (hour - peak_hour_utc) / 24)


def drift_factors(drifts: tuple[Drift, ...], minute_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fee factor, rate factor) per minute."""
    fee = np.ones(np.shape(minute_starts))
    rate = np.ones(np.shape(minute_starts))
    for drift in drifts:
        active = minute_starts >= drift.start
        fee = np.where(active, fee * drift.fee_factor, fee)
        rate = np.where(active, rate * drift.rate_factor, rate)
    return fee, rate


def latent_levels(
    config: SimulatorConfig, minute_starts: np.ndarray, states: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Arrival rate (tx/s) and fee level (median sat/vB) from the time and the state, drifts applied."""
    fee_factor, rate_factor = drift_factors(config.drifts, minute_starts)
    rate = (
        config.base_rate_per_s
        * daily_pattern(minute_starts, config.rate_daily_amplitude, config.rate_peak_hour_utc)
        * np.exp(states["log_rate_noise"])
        * rate_factor
    )
    fee_level = (
        config.fee_base_sat_per_vb
        * daily_pattern(minute_starts, config.fee_daily_amplitude, config.fee_peak_hour_utc)
        * np.exp(states["log_fee_noise"])
        * (1 + states["spike"])
        * fee_factor
    )
    return {"rate_per_s": rate, "fee_level": fee_level}


# ---------------------------------------------------------------- transactions


class TxChunk(NamedTuple):
    """Transactions sorted by time, with when each first reaches a poll and whether a second poll repeats it."""

    events: np.ndarray
    first_delivery: np.ndarray  # unix s, a poll instant (a multiple of poll_interval_s)
    duplicated: np.ndarray  # bool


def draw_size_and_fee(
    config: SimulatorConfig, rng: np.random.Generator, fee_levels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(size, weight, fee) of one transaction per fee level (sat/vB): a lognormal virtual size, then a
    heavy-tailed fee rate around the level. The building block an oracle forecaster reuses."""
    n = len(fee_levels)
    vsize_target = np.clip(
        config.vsize_median_vb * np.exp(config.vsize_sigma * rng.standard_normal(n)), *config.vsize_range_vb
    )
    # weight = 4 x size - 3 x witness bytes, so size <= weight <= 4 x size (legacy: weight = 4 x size)
    has_witness = rng.random(n) < config.segwit_fraction
    witness_share = np.zeros(n)
    witness_share[has_witness] = rng.uniform(*config.witness_share_range, np.count_nonzero(has_witness))
    size = np.round(vsize_target / (1 - 0.75 * witness_share)).astype(np.int64)
    weight = 4 * size - 3 * np.floor(witness_share * size).astype(np.int64)
    vsize = (weight + 3) // 4

    lognormal = np.exp(config.fee_rate_sigma * rng.standard_normal(n))
    in_tail = rng.random(n) < config.fee_tail_fraction
    tail = np.ones(n)
    tail[in_tail] += rng.pareto(config.fee_tail_alpha, np.count_nonzero(in_tail))
    fee_rate = np.clip(fee_levels * lognormal * tail, *config.fee_rate_range_sat_per_vb)
    return size, weight, np.round(fee_rate * vsize).astype(np.int64)


def draw_transactions(
    config: SimulatorConfig,
    rng: np.random.Generator,
    minute_starts: np.ndarray,
    expected_counts: np.ndarray,
    fee_level: np.ndarray,
    keep_probability: np.ndarray | None = None,
) -> TxChunk:
    """Transactions for the given minutes: Poisson counts, then one draw per attribute.

    ``keep_probability`` (per minute) thins the result after every draw, so a
    lower rate never shifts the random numbers of the transactions that stay.
    """
    counts = rng.poisson(expected_counts)
    n = int(counts.sum())
    minute = np.repeat(minute_starts, counts).astype(np.int64)
    time = minute + rng.integers(0, 60, n)
    size, weight, fee = draw_size_and_fee(config, rng, np.repeat(fee_level, counts))

    lateness = rng.random(n)
    very_late = lateness < config.very_late_fraction
    late = ~very_late & (lateness < config.very_late_fraction + config.late_fraction)
    delay = np.zeros(n, dtype=np.int64)
    delay[late] = rng.integers(*config.late_delay_s, np.count_nonzero(late), endpoint=True)
    delay[very_late] = rng.integers(*config.very_late_delay_s, np.count_nonzero(very_late), endpoint=True)
    poll = config.poll_interval_s
    first_delivery = ((time + delay) // poll + 1) * poll  # the first poll after it is seen
    duplicated = rng.random(n) < config.overlap_fraction
    keep = rng.random(n) < (1.0 if keep_probability is None else np.repeat(keep_probability, counts))

    events = np.zeros(n, dtype=EVENT_DTYPE)
    events["hash"].view("<u8")[:] = rng.bit_generator.random_raw(4 * n).reshape(n, 4)  # 32 random bytes
    events["time"], events["fee"], events["size"], events["weight"] = time, fee, size, weight
    order = np.argsort(time[keep], kind="stable")
    return TxChunk(events[keep][order], first_delivery[keep][order], duplicated[keep][order])


def _concat(chunks: list[TxChunk]) -> TxChunk:
    return TxChunk(*(np.concatenate(parts) for parts in zip(*chunks)))


class TransactionModel:
    """The generating process: latent path, ground-truth transactions and their deliveries."""

    def __init__(self, config: SimulatorConfig = SimulatorConfig()):
        self.config = config
        self._states = {key: np.zeros(0) for key in STATE_KEYS}  # from config.origin, whole days
        self._chunks: OrderedDict[tuple, TxChunk] = OrderedDict()  # an LRU cache; not thread-safe

    def set_drifts(self, drifts: tuple[Drift, ...]) -> None:
        self.config = replace(self.config, drifts=tuple(drifts))

    # -- latent

    def latent(self, minute_starts: np.ndarray) -> dict[str, np.ndarray]:
        """The latent state and levels of the minutes containing ``minute_starts`` (unix s).

        Keys: ``rate_per_s``, ``fee_level`` (drifts applied) and the Markov state
        ``log_rate_noise``, ``log_fee_noise``, ``spike``.
        """
        minutes = np.floor(np.asarray(minute_starts, dtype=float) / 60) * 60
        index = ((minutes - self.config.origin) // 60).astype(np.int64)
        if index.size and index.min() < 0:
            raise ValueError(
                f"minute {minutes.min():.0f} is before the simulator's origin {self.config.origin}: "
                "set SimulatorConfig(origin=...) earlier"
            )
        self._extend_latent(int(index.max()) + 1 if index.size else 0)
        states = {key: values[index] for key, values in self._states.items()}
        return {**latent_levels(self.config, minutes, states), **states}

    def _extend_latent(self, n_minutes: int) -> None:
        """Generate whole days forward from the origin until ``n_minutes`` exist: same path however queried."""
        have = len(self._states["spike"])
        new_days = []
        state = {key: (values[-1] if have else 0.0) for key, values in self._states.items()}
        for day in range(have // LATENT_BLOCK_MIN, -(-n_minutes // LATENT_BLOCK_MIN)):
            rng = np.random.default_rng([self.config.seed, _LATENT_STREAM, day])
            new_days.append(simulate_latent(self.config, LATENT_BLOCK_MIN, state, rng))
            state = {key: values[-1] for key, values in new_days[-1].items()}
        if new_days:
            self._states = {
                key: np.concatenate([self._states[key], *(day[key] for day in new_days)]) for key in STATE_KEYS
            }

    # -- transactions

    def transactions(self, t0: float, t1: float) -> np.ndarray:
        """Every transaction with event time in [t0, t1), sorted by time: the ground truth."""
        events = np.concatenate([chunk.events for chunk in self._chunks_between(t0, t1)])
        return events[(events["time"] >= t0) & (events["time"] < t1)]

    def avg_fee_per_minute(self, t0: int, t1: int) -> np.ndarray:
        """The true avg_fee of each minute in [t0, t1) (whole minutes), NaN for an empty one: what the stream
        computes from every transaction, the very late ones included. Hour by hour, so memory stays small."""
        minutes = (t1 - t0) // 60
        counts, fees = np.zeros(minutes), np.zeros(minutes)
        for hour in range(t0 - t0 % CHUNK_S, t1, CHUNK_S):
            events = self.transactions(max(hour, t0), min(hour + CHUNK_S, t1))
            index = (events["time"] - t0) // 60
            counts += np.bincount(index, minlength=minutes)
            fees += np.bincount(index, weights=events["fee"], minlength=minutes)
        return np.divide(fees, counts, out=np.full(minutes, np.nan), where=counts > 0)

    def deliveries(self, t0: float, t1: float) -> np.ndarray:
        """Every copy delivered in [t0, t1), poll by poll, shuffled within a poll."""
        return self.delivery_schedule(t0, t1)[0]

    def delivery_schedule(self, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
        """(copies, delivery time of each) for deliveries in [t0, t1); delivery times are poll instants."""
        txs = _concat(self._chunks_between(t0 - self.config.max_delivery_lag_s, t1))
        second_delivery = txs.first_delivery + self.config.poll_interval_s
        first = (txs.first_delivery >= t0) & (txs.first_delivery < t1)
        second = txs.duplicated & (second_delivery >= t0) & (second_delivery < t1)
        copies = np.concatenate([txs.events[first], txs.events[second]])
        delivered_at = np.concatenate([txs.first_delivery[first], second_delivery[second]])
        order = np.lexsort((hash_keys(copies), delivered_at))  # a hash is random: a shuffle within each poll
        return copies[order], delivered_at[order]

    def _chunks_between(self, t0: float, t1: float) -> list[TxChunk]:
        first, last = math.floor(t0 / CHUNK_S), math.ceil(t1 / CHUNK_S)
        return [self._chunk(index) for index in range(first, max(first + 1, last))]  # never empty: concatenable

    def _chunk(self, index: int) -> TxChunk:
        key = (index, self.config.drifts)
        if key in self._chunks:
            self._chunks.move_to_end(key)
        else:
            self._chunks[key] = self._generate_chunk(index)
            if len(self._chunks) > 8:  # a few hours: enough for sequential windows plus late deliveries
                self._chunks.popitem(last=False)
        return self._chunks[key]

    def _generate_chunk(self, index: int) -> TxChunk:
        """One hour of transactions, from an RNG seeded by (seed, hour): a pure function of the config."""
        minutes = np.arange(max(index * CHUNK_S, self.config.origin), (index + 1) * CHUNK_S, 60, dtype=np.int64)
        latent = self.latent(minutes)
        _, rate_factor = drift_factors(self.config.drifts, minutes)
        base_expected = latent["rate_per_s"] / rate_factor * 60
        base_rng = np.random.default_rng([self.config.seed, _TX_STREAM, index])
        base = draw_transactions(
            self.config, base_rng, minutes, base_expected, latent["fee_level"], np.minimum(rate_factor, 1.0)
        )
        if not np.any(rate_factor > 1):
            return base
        # A higher rate adds transactions from a stream of their own (Poisson superposition).
        extra_rng = np.random.default_rng([self.config.seed, _EXTRA_TX_STREAM, index])
        extra_expected = base_expected * np.maximum(rate_factor - 1, 0)
        extra = draw_transactions(self.config, extra_rng, minutes, extra_expected, latent["fee_level"])
        both = _concat([base, extra])
        order = np.argsort(both.events["time"], kind="stable")
        return TxChunk(*(part[order] for part in both))


# ---------------------------------------------------------------- drift file


def load_drifts(path: Path) -> tuple[Drift, ...]:
    """The drifts stored in ``path``; none if it does not exist."""
    path = Path(path)
    if not path.exists():
        return ()
    return tuple(Drift(**item) for item in json.loads(path.read_text())["drifts"])


def inject_drift(path: Path, drift: Drift) -> None:
    """Append a drift to the file a running :class:`Simulator` watches.

    Drifts only add up: to undo one, inject its inverse (e.g. fee_factor=1/3).
    """
    drifts = [*load_drifts(path), drift]
    write_json_atomic(path, {"drifts": [asdict(item) for item in drifts]})


# ---------------------------------------------------------------- the source


class Simulator(TransactionModel):
    """A :class:`~helpers.ingestion.sources.Source`: backfills from ``start`` to the clock's now, then polls live.

    Batches cover consecutive delivery windows [position, end); ``source_pos`` is
    the window end, so ``resume_from`` continues exactly after the last stored batch.
    """

    name = "simulator"

    def __init__(
        self,
        config: SimulatorConfig,
        start: float,
        clock: SimClock | SharedClock,
        until: float | None = None,
        drift_file: Path | None = None,
        backfill_chunk_s: float = 3600,
    ):
        super().__init__(config)
        self.start = float(start)
        self.clock = clock
        self.until = math.inf if until is None else float(until)
        self.drift_file = None if drift_file is None else Path(drift_file)
        self.backfill_chunk_s = backfill_chunk_s
        self._config_drifts = config.drifts
        self._file_drifts: list[Drift] = []  # as applied, in file order (the file only grows)
        self._drift_file_version: tuple | None = None

    def batches(self, stop: threading.Event, resume_from: str | None = None) -> Iterator[EventBatch]:
        position = self.start if resume_from is None else float(resume_from)
        self._reload_drifts(position, history=True)
        while not stop.is_set() and position < self.until:
            now = self.clock.now()
            end = self._window_end(position, now)
            if end > now and stop.wait(self.clock.wall_seconds(end - now)):
                return
            self._reload_drifts(position)
            copies = self.deliveries(position, end)
            # Late copies of transactions from before `start` would make its first minutes partial.
            yield EventBatch(copies[copies["time"] >= self.start], fetched_at=end, source_pos=str(end))
            position = end

    def _window_end(self, position: float, now: float) -> float:
        """The next poll instant, or a backfill-sized window when more than one poll behind the clock."""
        poll = self.config.poll_interval_s
        next_poll = (position // poll + 1) * poll
        catch_up_to = min(position + self.backfill_chunk_s, now) // poll * poll
        return min(max(next_poll, catch_up_to), self.until)

    def _reload_drifts(self, position: float, history: bool = False) -> None:
        """Re-read the drift file if it changed.

        A drift that appears while running starts no earlier than ``position``, so
        it only changes transactions not delivered yet. Drifts already in the file
        when the simulator starts are history and apply as written.
        """
        if self.drift_file is None:
            return
        try:
            stat = self.drift_file.stat()
            version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            version = None
        if version == self._drift_file_version:
            return
        self._drift_file_version = version
        for drift in load_drifts(self.drift_file)[len(self._file_drifts) :]:
            applied = drift if history or drift.start >= position else replace(drift, start=position)
            log.info("drift loaded: %s, applied from %s", drift, applied.start)
            self._file_drifts.append(applied)
        self.set_drifts(self._config_drifts + tuple(self._file_drifts))
