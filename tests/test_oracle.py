from dataclasses import replace

import numpy as np
import pytest

from helpers.core.metrics import DEFAULT_QUANTILES
from helpers.ingestion.sources.oracle import oracle_forecast, oracle_forecasts
from helpers.ingestion.sources.simulator import Drift, SimulatorConfig, TransactionModel

T0 = 1_763_337_600  # 2025-11-17T00:00:00Z
HOUR, DAY = 3600, 86400
CFG = SimulatorConfig(origin=T0 - DAY)  # a near origin keeps the latent path short
ORIGINS = [T0 + 3 * HOUR * i + 600 for i in range(8)]  # around the clock


def realised_avg_fee(model: TransactionModel, minute_starts: np.ndarray) -> np.ndarray:
    """The ground truth of the feature: mean fee of the transactions of each minute."""
    return np.array([model.transactions(m, m + 60)["fee"].mean() for m in minute_starts])


def test_the_oracle_is_calibrated_against_the_simulators_ground_truth():
    # Windows that do not overlap: their outcomes hang on disjoint future shocks.
    horizon = 10
    origins = T0 + 60 * horizon * np.arange(144)  # a whole day, every minute of it forecast once
    forecast = oracle_forecasts(CFG, list(origins), horizon, n_paths=100)
    model = TransactionModel(CFG)
    truth = realised_avg_fee(model, origins[0] + 60 * np.arange(len(origins) * horizon)).reshape(-1, horizon)
    for q in ("0.1", "0.5", "0.9"):
        assert np.mean(truth < forecast[q]) == pytest.approx(float(q), abs=0.05), q


def test_quantiles_are_ordered_and_spread_with_the_horizon():
    forecast = oracle_forecasts(CFG, ORIGINS, 30, n_paths=300)
    levels = np.stack([forecast[str(q)] for q in DEFAULT_QUANTILES])
    assert levels.shape == (len(DEFAULT_QUANTILES), len(ORIGINS), 30)
    assert np.all(np.diff(levels, axis=0) >= 0)
    relative_spread = ((forecast["0.9"] - forecast["0.1"]) / forecast["0.5"]).mean(axis=0)
    assert relative_spread[-1] > 2 * relative_spread[0]  # the latent state diffuses


def test_same_seed_same_forecast_and_one_origin_equals_its_row():
    first, again = (oracle_forecasts(CFG, ORIGINS[:2], 5, n_paths=50, seed=1) for _ in range(2))
    other = oracle_forecasts(CFG, ORIGINS[:2], 5, n_paths=50, seed=2)
    alone = oracle_forecast(CFG, ORIGINS[1], 5, n_paths=50, seed=1)
    assert set(first) == {"mean", *map(str, DEFAULT_QUANTILES)}
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
        np.testing.assert_array_equal(first[key][1], alone[key])
    assert not np.array_equal(first["0.5"], other["0.5"])


@pytest.mark.parametrize("drift_minute", [-60, 10])  # from before the origin, from its 10th minute
def test_a_fee_drift_triples_the_median_from_its_start(drift_minute):
    origin = ORIGINS[0]
    drifted = replace(CFG, drifts=(Drift(start=origin + 60 * drift_minute, fee_factor=3.0),))
    median, drifted_median = (oracle_forecast(config, origin, 20, n_paths=200)["0.5"] for config in (CFG, drifted))
    expected = np.where(np.arange(20) >= drift_minute, 3.0, 1.0)
    np.testing.assert_allclose(drifted_median / median, expected, rtol=0.02)


def test_origins_must_be_whole_minutes():
    with pytest.raises(ValueError, match="whole unix minutes"):
        oracle_forecast(CFG, T0 + 30, 5)
