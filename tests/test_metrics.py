"""Forecast metrics (checked by hand and against GluonTS's Evaluator) and the residual-quantile baselines."""
import numpy as np
import pandas as pd
import pytest
from gluonts.evaluation import Evaluator
from gluonts.model.forecast import QuantileForecast

from helpers.core.baselines import DAY, baseline_forecasts, naive_last_value, seasonal_naive
from helpers.core.metrics import (
    DEFAULT_QUANTILES,
    coverage,
    evaluate,
    mean_weighted_quantile_loss,
    rmse,
    weighted_quantile_losses,
)

KEYS = [str(q) for q in DEFAULT_QUANTILES]


def test_weighted_quantile_loss_by_hand_skips_nan_actuals():
    actuals = np.array([[10.0, np.nan], [20.0, 30.0]])
    forecasts = {  # 999 sits under the NaN actual and must not count
        "0.1": np.array([[5.0, 999.0], [10.0, 20.0]]),
        "0.5": np.array([[12.0, 999.0], [20.0, 27.0]]),
        "0.9": np.array([[15.0, 999.0], [25.0, 35.0]]),
    }
    # sum|y| = 10 + 20 + 30 = 60
    # 0.1: y - q = 5, 10, 10 (all under-forecast) -> 0.1 * 25 = 2.5       -> wQL = 2 * 2.5 / 60 = 5/60
    # 0.5: y - q = -2, 0, 3                       -> 0.5 * 2 + 0.5 * 3 = 2.5 -> wQL = 5/60
    # 0.9: y - q = -5, -5, -5 (all over-forecast) -> 0.1 * 15 = 1.5      -> wQL = 3/60
    # mean = (5 + 5 + 3) / 60 / 3 = 13/180
    quantiles = (0.1, 0.5, 0.9)
    losses = weighted_quantile_losses(actuals, forecasts, quantiles)
    assert losses == pytest.approx({"0.1": 5 / 60, "0.5": 5 / 60, "0.9": 3 / 60}, abs=1e-15)
    assert mean_weighted_quantile_loss(actuals, forecasts, quantiles) == pytest.approx(13 / 180, abs=1e-15)


def random_windows(rng: np.random.Generator, n_windows: int = 6, horizon: int = 12) -> tuple[np.ndarray, dict]:
    """Actuals and a quantile forecast (ordered quantiles around a noisy centre) of random data."""
    actuals = rng.normal(100, 20, (n_windows, horizon))
    centre = actuals + rng.normal(0, 10, actuals.shape)
    spread = np.sort(rng.normal(0, 15, (len(KEYS), n_windows, horizon)), axis=0)
    forecasts = {key: centre + spread[i] for i, key in enumerate(KEYS)}
    forecasts["mean"] = centre + rng.normal(0, 2, actuals.shape)
    return actuals, forecasts


def gluonts_metrics(actuals: np.ndarray, forecasts: dict) -> dict:
    """GluonTS's aggregate metrics, each window an item with its own start and some context before it."""
    context, horizon = 5, actuals.shape[1]
    targets, quantile_forecasts = [], []
    for i, window in enumerate(actuals):
        start = pd.Period("2027-01-15 08:00", freq="min") + i * 1000
        target = np.concatenate([np.full(context, 100.0), window])
        targets.append(pd.Series(target, index=pd.period_range(start - context, periods=context + horizon)))
        arrays = np.stack([forecasts[key][i] for key in [*KEYS, "mean"]])
        quantile_forecasts.append(QuantileForecast(arrays, start_date=start, forecast_keys=[*KEYS, "mean"]))
    totals, _ = Evaluator(quantiles=DEFAULT_QUANTILES, num_workers=0)(targets, quantile_forecasts)
    return totals


@pytest.mark.parametrize("gaps", [False, True])
def test_metrics_match_gluonts_evaluator(gaps):
    actuals, forecasts = random_windows(np.random.default_rng(7))
    if gaps:
        actuals[[0, 2, 5], [3, 0, 11]] = np.nan
    ours, theirs = evaluate(actuals, forecasts), gluonts_metrics(actuals, forecasts)
    assert ours["mean_wQuantileLoss"] == pytest.approx(theirs["mean_wQuantileLoss"], abs=1e-9)
    for key in KEYS:
        assert ours[f"wQuantileLoss[{key}]"] == pytest.approx(theirs[f"wQuantileLoss[{key}]"], abs=1e-9)
    if not gaps:  # with gaps GluonTS averages per-window MSEs, we pool the points
        assert ours["RMSE"] == pytest.approx(theirs["RMSE"], abs=1e-9)
        for key in KEYS:  # equal-length windows: the mean of per-window shares is the pooled share
            assert ours[f"coverage[{key}]"] == pytest.approx(theirs[f"Coverage[{key}]"], abs=1e-9)
    assert ours["points"] == actuals.size - 3 * gaps


def test_coverage_and_evaluate_on_a_constructed_example():
    actuals = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, np.nan, 7.0, 8.0]])
    lower, upper = np.full(actuals.shape, 2.0), np.full(actuals.shape, 6.0)
    assert coverage(actuals, lower, upper) == 4 / 7  # 2, 3, 4 and 5 of the 7 observed; bounds included
    forecasts = {key: np.full(actuals.shape, 2.0 + 4.0 * (key == "0.9")) for key in KEYS}
    forecasts["mean"] = actuals + 1  # NaN under the gap is fine
    metrics = evaluate(actuals, forecasts)
    assert metrics["coverage[0.1-0.9]"] == 4 / 7
    assert metrics["coverage[0.1]"] == 2 / 7  # 1 and 2 at or below 2
    assert metrics["coverage[0.9]"] == 5 / 7
    assert metrics["RMSE"] == 1.0
    assert metrics["points"] == 7
    assert set(metrics) == {"mean_wQuantileLoss", "RMSE", "coverage[0.1-0.9]", "points"} | {
        f"{name}[{key}]" for key in KEYS for name in ("wQuantileLoss", "coverage")
    }


def test_metric_errors_are_clear():
    actuals, forecasts = random_windows(np.random.default_rng(1), n_windows=2, horizon=3)
    with pytest.raises(ValueError, match=r"no key '0.3'.*'0.1'"):
        evaluate(actuals, {key: value for key, value in forecasts.items() if key != "0.3"})
    with pytest.raises(ValueError, match=r"no key 'mean'"):
        evaluate(actuals, {key: value for key, value in forecasts.items() if key != "mean"})
    with pytest.raises(ValueError, match=r"forecasts\['0.5'\] has shape \(2, 2\), expected .*\(2, 3\)"):
        weighted_quantile_losses(actuals, {**forecasts, "0.5": forecasts["0.5"][:, :2]})
    with pytest.raises(ValueError, match=r"mean has shape"):
        rmse(actuals, forecasts["mean"].T)
    with pytest.raises(ValueError, match=r"sum of \|actual\| .* is 0"):
        weighted_quantile_losses(np.zeros_like(actuals), forecasts)
    with pytest.raises(ValueError, match=r"every actual is NaN"):
        coverage(np.full_like(actuals, np.nan), forecasts["0.1"], forecasts["0.9"])
    with pytest.raises(ValueError, match=r"NaN at a point whose actual is observed"):
        weighted_quantile_losses(actuals, {**forecasts, "0.1": np.full_like(actuals, np.nan)})


def test_point_rules_fall_back_to_the_latest_non_nan_value():
    history = np.array([1.0, 2.0, 3.0, 4.0, np.nan, 6.0, 7.0, np.nan])
    # one season (4) back: indexes 4, 5, 6, 7, then the last season again; NaN -> 7, the latest non-NaN
    np.testing.assert_array_equal(seasonal_naive(history, 6, season=4), [7, 6, 7, 7, 7, 6])
    np.testing.assert_array_equal(naive_last_value(history, 3), [7, 7, 7])
    with pytest.raises(ValueError, match=r"at least one season \(1440\), got 8"):
        seasonal_naive(history, 3)
    with pytest.raises(ValueError, match=r"no non-NaN value"):
        naive_last_value(np.full(5, np.nan), 3)


def noisy_daily_sine(seed: int, days: int = 7) -> np.ndarray:
    """A daily sine plus AR(1) noise, one value a minute."""
    rng = np.random.default_rng(seed)
    shocks = rng.normal(0, 2, days * DAY)
    noise = np.zeros_like(shocks)
    for t in range(1, len(noise)):
        noise[t] = 0.8 * noise[t - 1] + shocks[t]
    return 50 + 10 * np.sin(2 * np.pi * np.arange(days * DAY) / DAY) + noise


HORIZON = 60
ORIGINS = list(range(6 * DAY, 7 * DAY - HORIZON, 3 * HORIZON))  # 8 origins on the last day


def windows(series: np.ndarray) -> np.ndarray:
    return np.stack([series[origin : origin + HORIZON] for origin in ORIGINS])


def test_baselines_do_not_leak_the_future():
    series = noisy_daily_sine(seed=3)
    series[[100, 5000, 9000]] = np.nan
    forecasts = baseline_forecasts(series, ORIGINS, HORIZON)
    rng = np.random.default_rng(4)
    for i, origin in enumerate(ORIGINS):
        changed = series.copy()
        changed[origin:] = rng.normal(0, 1000, len(series) - origin)
        changed_forecasts = baseline_forecasts(changed, ORIGINS, HORIZON)
        for name, forecast in forecasts.items():
            for key, values in forecast.items():
                np.testing.assert_array_equal(changed_forecasts[name][key][i], values[i], err_msg=f"{name} {key}")


def test_seasonal_naive_reproduces_a_daily_periodic_series():
    day = 50 + 10 * np.sin(2 * np.pi * np.arange(DAY) / DAY) + np.random.default_rng(0).normal(0, 3, DAY)
    series = np.tile(day, 7)
    forecast = baseline_forecasts(series, ORIGINS, HORIZON)["seasonal_naive"]
    for key in [*KEYS, "mean"]:
        np.testing.assert_array_equal(forecast[key], windows(series))
    assert evaluate(windows(series), forecast)["mean_wQuantileLoss"] == 0


def test_baseline_quantiles_are_ordered_and_seasonal_naive_is_calibrated():
    series = noisy_daily_sine(seed=11)
    forecasts = baseline_forecasts(series, ORIGINS, HORIZON)
    for name, forecast in forecasts.items():
        quantiles = np.stack([forecast[key] for key in KEYS])
        assert quantiles.shape == (len(KEYS), len(ORIGINS), HORIZON)
        assert (np.diff(quantiles, axis=0) >= 0).all(), name
    metrics = evaluate(windows(series), forecasts["seasonal_naive"])
    assert np.isfinite(metrics["mean_wQuantileLoss"])
    assert 0.6 <= metrics["coverage[0.1-0.9]"] <= 0.95


def test_baseline_errors_are_clear():
    series = noisy_daily_sine(seed=0, days=1)
    with pytest.raises(ValueError, match=r"too short to back-test.*at least 1500"):
        baseline_forecasts(series, [DAY], HORIZON)
    with pytest.raises(ValueError, match=r"origins must be"):
        baseline_forecasts(series, [len(series) + 1], HORIZON)
