"""Forecast accuracy metrics, as SageMaker DeepAR and GluonTS's ``Evaluator`` report them.

Actuals are an array of shape (n_windows, horizon); forecasts are a dict in SageMaker DeepAR's
layout, {"mean": array, "0.1": array, ..., "0.9": array}, each of the actuals' shape (quantile
keys are strings). Points whose actual is NaN (gaps in the 1-minute grid) are excluded from
every sum and count; forecasts may hold anything there.
"""
import numpy as np

DEFAULT_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# The same levels as DeepAR's JSON spells them: the keys of "quantiles" in a request and a response.
QUANTILE_NAMES = tuple(str(q) for q in DEFAULT_QUANTILES)


def _observed(actuals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The actuals as a 2-D float array (one row per window) and the mask of its non-NaN points."""
    actuals = np.atleast_2d(np.asarray(actuals, dtype=float))
    observed = ~np.isnan(actuals)
    if not observed.any():
        raise ValueError("no observed actuals: every actual is NaN (or there are none)")
    return actuals, observed


def _aligned(values: np.ndarray, actuals: np.ndarray, observed: np.ndarray, name: str) -> np.ndarray:
    """``values`` as a float array of the actuals' shape, checked for NaN where an actual is observed."""
    values = np.atleast_2d(np.asarray(values, dtype=float))
    if values.shape != actuals.shape:
        raise ValueError(f"{name} has shape {values.shape}, expected the actuals' shape {actuals.shape}")
    if np.isnan(values[observed]).any():
        raise ValueError(f"{name} is NaN at a point whose actual is observed")
    return values


def _forecast(forecasts: dict, key: str, actuals: np.ndarray, observed: np.ndarray) -> np.ndarray:
    if key not in forecasts:
        raise ValueError(
            f"forecasts has no key {key!r}: expected 'mean' and one key per quantile as a string "
            f"like '0.1' (SageMaker DeepAR's layout), got {sorted(forecasts)}"
        )
    return _aligned(forecasts[key], actuals, observed, f"forecasts[{key!r}]")


def weighted_quantile_losses(
    actuals: np.ndarray, forecasts: dict, quantiles: tuple[float, ...] = DEFAULT_QUANTILES
) -> dict[str, float]:
    """wQL[t] = 2 * sum(t*max(y-q,0) + (1-t)*max(q-y,0)) / sum|y|, per quantile t (key "0.1" etc.).

    Both sums run over all observed points of all windows together before dividing, as GluonTS
    aggregates over items; NaN actuals are skipped.
    """
    actuals, observed = _observed(actuals)
    y = actuals[observed]
    abs_target_sum = np.abs(y).sum()
    if abs_target_sum == 0:
        raise ValueError("weighted quantile loss is undefined: the sum of |actual| over observed points is 0")
    losses = {}
    for q in quantiles:
        error = y - _forecast(forecasts, str(q), actuals, observed)[observed]
        pinball = np.maximum(q * error, (q - 1) * error)
        losses[str(q)] = float(2 * pinball.sum() / abs_target_sum)
    return losses


def mean_weighted_quantile_loss(
    actuals: np.ndarray, forecasts: dict, quantiles: tuple[float, ...] = DEFAULT_QUANTILES
) -> float:
    """SageMaker's test:mean_wQuantileLoss: the mean of wQL over ``quantiles``."""
    return float(np.mean(list(weighted_quantile_losses(actuals, forecasts, quantiles).values())))


def rmse(actuals: np.ndarray, mean: np.ndarray) -> float:
    """Root mean squared error over all observed points.

    Equals GluonTS's RMSE when no actual is NaN; with gaps GluonTS averages per-window MSEs instead.
    """
    actuals, observed = _observed(actuals)
    error = actuals[observed] - _aligned(mean, actuals, observed, "mean")[observed]
    return float(np.sqrt(np.mean(error**2)))


def coverage(actuals: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """The share of observed actuals within [lower, upper] (bounds included)."""
    actuals, observed = _observed(actuals)
    y = actuals[observed]
    inside = (_aligned(lower, actuals, observed, "lower")[observed] <= y) & (
        y <= _aligned(upper, actuals, observed, "upper")[observed]
    )
    return float(inside.mean())


def evaluate(actuals: np.ndarray, forecasts: dict, quantiles: tuple[float, ...] = DEFAULT_QUANTILES) -> dict:
    """All metrics of one evaluation.

    Keys: "mean_wQuantileLoss", "wQuantileLoss[q]" per quantile, "RMSE" (of "mean"),
    "coverage[lo-hi]" (share inside the outermost quantiles, the 80% interval by default),
    "coverage[q]" per quantile (share of actuals at or below it, GluonTS's calibration check) and
    "points" (the number of observed actuals).
    """
    actuals, observed = _observed(actuals)
    losses = weighted_quantile_losses(actuals, forecasts, quantiles)
    metrics: dict = {"mean_wQuantileLoss": float(np.mean(list(losses.values())))}
    metrics.update({f"wQuantileLoss[{key}]": loss for key, loss in losses.items()})
    metrics["RMSE"] = rmse(actuals, _forecast(forecasts, "mean", actuals, observed))
    lowest, highest = str(min(quantiles)), str(max(quantiles))
    metrics[f"coverage[{lowest}-{highest}]"] = coverage(actuals, forecasts[lowest], forecasts[highest])
    no_lower_bound = np.full(actuals.shape, -np.inf)
    for q in quantiles:
        metrics[f"coverage[{q}]"] = coverage(actuals, no_lower_bound, forecasts[str(q)])
    metrics["points"] = int(observed.sum())
    return metrics
