"""The oracle: the simulator's own predictive distribution of the per-minute ``avg_fee``.

A forecaster sees only the features (per-minute aggregates) and must guess the
hidden market state behind them: how congested the mempool is, whether a fee
spike is decaying. The simulator knows that state exactly. The oracle takes the
true Markov state of the last minute before the forecast origin, simulates many
futures from it with the simulator's own functions (the same AR noise, spikes,
daily pattern and drifts), draws each future minute's transactions from the same
distributions (a Poisson count, heavy-tailed fees) and averages their fees.
Quantiles across these Monte Carlo paths are the true conditional quantiles
(up to Monte Carlo error): the best quantile forecast possible at the origin.

So the oracle's quantile loss is a floor: no forecaster that sees only the
features can beat it on average, because it would need information the features
lack. What remains even for the oracle is irreducible: the future shocks of the
latent state and the sampling noise of a few hundred fees a minute. A model's
gap to the oracle is what better modelling could still win.
"""
from __future__ import annotations

import numpy as np

from helpers.core.metrics import DEFAULT_QUANTILES
from helpers.ingestion.sources.simulator import (
    STATE_KEYS,
    SimulatorConfig,
    TransactionModel,
    draw_size_and_fee,
    latent_levels,
    simulate_latent,
)


def oracle_forecast(
    config: SimulatorConfig,
    origin: int,
    horizon: int,
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES,
    n_paths: int = 1000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """{"mean": (horizon,), "0.1": (horizon,), ...}: the avg_fee (sat) of the minutes starting at
    ``origin`` (unix s, a whole minute), ``origin`` + 60, ..., given the true state of minute ``origin`` - 60."""
    window = oracle_forecasts(config, [origin], horizon, quantiles, n_paths, seed)
    return {key: values[0] for key, values in window.items()}


def oracle_forecasts(
    config: SimulatorConfig,
    origins: list[int],
    horizon: int,
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES,
    n_paths: int = 1000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """:func:`oracle_forecast` for several origins, stacked: arrays of shape (len(origins), horizon).

    Each origin has its own RNG, seeded by (seed, origin): a window's forecast
    does not depend on which other origins are asked for.
    """
    origins = np.asarray(origins, dtype=np.int64)
    if np.any(origins % 60):
        raise ValueError(f"origins {origins[origins % 60 != 0]}: must be whole unix minutes (multiples of 60)")
    states = TransactionModel(config).latent(origins - 60)  # one latent path for all origins
    windows = []
    for i, origin in enumerate(origins):
        state = {key: states[key][i] for key in STATE_KEYS}
        rng = np.random.default_rng([seed, int(origin)])
        windows.append(summarise(sample_avg_fees(config, int(origin), state, horizon, n_paths, rng), quantiles))
    return {key: np.stack([window[key] for window in windows]) for key in windows[0]}


def sample_avg_fees(
    config: SimulatorConfig,
    origin: int,
    state: dict[str, float],
    horizon: int,
    n_paths: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """(n_paths, horizon) Monte Carlo draws of the avg_fee of the minutes from ``origin``, from ``state``."""
    paths = simulate_latent(config, horizon, {key: np.full(n_paths, value) for key, value in state.items()}, rng)
    levels = latent_levels(config, origin + 60 * np.arange(horizon), paths)  # daily pattern and drifts
    path_index = np.arange(n_paths)
    avg_fee = np.empty((n_paths, horizon))
    for minute in range(horizon):  # one minute at a time bounds memory to ~n_paths x 350 transactions
        counts = rng.poisson(levels["rate_per_s"][:, minute] * 60)
        _, _, fees = draw_size_and_fee(config, rng, np.repeat(levels["fee_level"][:, minute], counts))
        totals = np.bincount(np.repeat(path_index, counts), weights=fees, minlength=n_paths)
        # An empty minute has no avg_fee (the stream emits no row): NaN, left out of the statistics.
        avg_fee[:, minute] = np.divide(totals, counts, out=np.full(n_paths, np.nan), where=counts > 0)
    return avg_fee


def summarise(samples: np.ndarray, quantiles: tuple[float, ...]) -> dict[str, np.ndarray]:
    """Mean and quantiles across paths (axis 0), keyed as GluonTS names quantiles: str(q)."""
    levels = np.nanquantile(samples, quantiles, axis=0)
    return {"mean": np.nanmean(samples, axis=0), **{str(q): level for q, level in zip(quantiles, levels)}}
