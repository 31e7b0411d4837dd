"""Probabilistic baselines for one 1-minute series: seasonal naive and last value.

Each forecast sees only the data before its origin. Its quantiles come from the method's own
empirical residuals: the method is back-tested at earlier origins inside the history, and
quantile q at step h = point[h] + the q-quantile of the step-h residuals (actual - point).
"""
from collections.abc import Callable
from functools import partial

import numpy as np

from helpers.core.metrics import DEFAULT_QUANTILES

DAY = 1440  # minutes
BACKTEST_EVERY = 30  # minutes between back-test origins
BACKTEST_SPAN = 3 * DAY  # how far back the back-test origins reach
BASELINES = ("seasonal_naive", "naive_last_value")  # what baseline_forecasts makes, in this order

PointMethod = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def _last_valid_before(history: np.ndarray, origins: np.ndarray) -> np.ndarray:
    """The latest non-NaN value before each origin (NaN where there is none)."""
    positions = np.where(np.isnan(history), -1, np.arange(len(history)))
    last_valid = np.maximum.accumulate(positions)[origins - 1]
    return np.where(last_valid >= 0, history[last_valid], np.nan)


def _seasonal_naive_points(history: np.ndarray, origins: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Point forecasts (len(origins), horizon); the last season repeats when horizon > season."""
    steps = np.arange(horizon) % season
    values = history[origins[:, None] - season + steps]
    return np.where(np.isnan(values), _last_valid_before(history, origins)[:, None], values)


def _last_value_points(history: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    return np.repeat(_last_valid_before(history, origins)[:, None], horizon, axis=1)


def _check_history(history: np.ndarray) -> np.ndarray:
    history = np.asarray(history, dtype=float)
    if np.isnan(history).all():
        raise ValueError(f"the history ({len(history)} points) has no non-NaN value to forecast from")
    return history


def seasonal_naive(history: np.ndarray, horizon: int, season: int = DAY) -> np.ndarray:
    """The values one season before each forecast step; a NaN one falls back to the latest non-NaN value."""
    history = _check_history(history)
    if len(history) < season:
        raise ValueError(f"seasonal naive needs a history of at least one season ({season}), got {len(history)}")
    return _seasonal_naive_points(history, np.array([len(history)]), horizon, season)[0]


def naive_last_value(history: np.ndarray, horizon: int) -> np.ndarray:
    """The last non-NaN value, repeated over the horizon."""
    history = _check_history(history)
    return _last_value_points(history, np.array([len(history)]), horizon)[0]


def _with_empirical_quantiles(
    history: np.ndarray, horizon: int, points: PointMethod, first_origin: int, quantiles: tuple[float, ...]
) -> dict[str, np.ndarray]:
    """The point forecast at the end of ``history``, with mean and quantiles from back-test residuals."""
    latest = len(history) - horizon  # the latest back-test origin whose actuals are all in the history
    backtest_origins = np.arange(latest, max(first_origin, latest - BACKTEST_SPAN + 1) - 1, -BACKTEST_EVERY)
    if len(backtest_origins) == 0:
        raise ValueError(
            f"a history of {len(history)} points is too short to back-test residuals: "
            f"it needs at least {first_origin + horizon}"
        )
    actuals = history[backtest_origins[:, None] + np.arange(horizon)]
    residuals = actuals - points(history, backtest_origins, horizon)
    if not (~np.isnan(residuals)).any(axis=0).all():
        raise ValueError("some forecast step has no back-test residual: its actual is NaN at every back-test origin")
    point = points(history, np.array([len(history)]), horizon)[0]
    forecast = {"mean": point + np.nanmean(residuals, axis=0)}
    for q, residual_quantile in zip(quantiles, np.nanquantile(residuals, quantiles, axis=0)):
        forecast[str(q)] = point + residual_quantile
    return forecast


def baseline_forecasts(
    series: np.ndarray,
    origins: list[int],
    horizon: int,
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES,
    season: int = DAY,
) -> dict[str, dict[str, np.ndarray]]:
    """Forecasts of "seasonal_naive" and "naive_last_value", each {"mean", "0.1", ...} of shape (len(origins), horizon).

    Origin i's forecast covers series[origins[i]:origins[i] + horizon] and uses only series[:origins[i]].
    """
    series = np.asarray(series, dtype=float)
    if not origins or not all(1 <= origin <= len(series) for origin in origins):
        raise ValueError(f"origins must be a non-empty list of indexes in [1, {len(series)}], got {origins}")
    methods: dict[str, tuple[PointMethod, int]] = {
        "seasonal_naive": (partial(_seasonal_naive_points, season=season), season),
        "naive_last_value": (_last_value_points, 1),
    }
    result = {}
    for name, (points, first_origin) in methods.items():
        per_origin = [
            _with_empirical_quantiles(_check_history(series[:origin]), horizon, points, first_origin, quantiles)
            for origin in origins
        ]
        result[name] = {key: np.stack([forecast[key] for forecast in per_origin]) for key in per_origin[0]}
    return result
