"""What a model build runs with, and how it splits a series: pure, so that the local pipeline and the SageMaker
processing step prepare the same data the same way.

The split, oldest to newest: training | validation windows | test windows, each window ``prediction_length``
minutes; validation windows come before the test windows, which are the series' last minutes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from helpers.core.baselines import DAY
from helpers.core.hyperparameters import MAX_GAP_SHARE, DeepARHyperparameters


@dataclass(frozen=True)
class BuildSettings:
    hyperparameters: DeepARHyperparameters = field(default_factory=DeepARHyperparameters)
    training_days: float = 7.0  # how much history to read from the feature store
    end: str | float | None = None  # the end of the data used (default: the newest minute stored)
    # test: the last 16 windows of prediction_length (8 hours). Measured: with 8 windows even the oracle lost to the
    # best baseline by more than 10 % at 2 % of instants; with 16, never (python -m bench train).
    n_test_windows: int = 16
    n_validation_windows: int = 4  # validation: the windows just before the test windows
    seed: int = 42
    num_samples: int = 100

    def __post_init__(self):
        for name in ("n_test_windows", "n_validation_windows", "num_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be at least 1")
        if self.training_days <= 0:
            raise ValueError(f"training_days={self.training_days}: must be positive")

    def to_parameters(self) -> dict:
        """Every setting, as the execution records it: enough to rebuild exactly the same model."""
        return {**asdict(self), "hyperparameters": self.hyperparameters.to_dict()}

    @classmethod
    def from_parameters(cls, parameters: dict) -> "BuildSettings":
        """The settings an execution recorded (its ``parameters``): to rebuild exactly the same model."""
        return cls(**{**parameters, "hyperparameters": DeepARHyperparameters.from_dict(
            parameters["hyperparameters"])})

    def minutes_needed(self) -> int:
        """A day for the seasonal-naive baseline and the daily pattern, the network's context, the windows."""
        hp = self.hyperparameters
        return DAY + hp.context_length + hp.prediction_length * (1 + self.n_validation_windows + self.n_test_windows)


@dataclass(frozen=True)
class Split:
    train_end: int  # training is series[:train_end]
    validation_ends: list[int]  # each validation window ends here (the windows right after train_end)
    test_origins: list[int]  # each test window starts here


def split(n_minutes: int, settings: BuildSettings) -> Split:
    """Where each window of a series of ``n_minutes`` starts or ends."""
    horizon = settings.hyperparameters.prediction_length
    test_start = n_minutes - settings.n_test_windows * horizon
    validation_start = test_start - settings.n_validation_windows * horizon
    return Split(validation_start, [validation_start + (k + 1) * horizon for k in range(settings.n_validation_windows)],
                 [test_start + k * horizon for k in range(settings.n_test_windows)])


def check_enough(series: np.ndarray, settings: BuildSettings) -> None:
    """Refuse a series too short for the settings, or mostly gaps, saying what to do."""
    needed, have = settings.minutes_needed(), len(series)
    if have < needed:
        raise ValueError(f"too little data: {needed} minutes ({needed / 60:.1f} h) are needed, the feature store has "
                         f"{have} ({have / 60:.1f} h). Let the stream run {(needed - have) / 60:.1f} h more, or "
                         f"backfill: python -m helpers backfill --days {int(np.ceil(needed / DAY)) + 1}")
    gaps = float(np.isnan(series).mean())
    if gaps > MAX_GAP_SHARE:
        raise ValueError(f"the data is mostly gaps: {gaps:.0%} of the minutes have no record (at most "
                         f"{MAX_GAP_SHARE:.0%} allowed). Check the stream (python -m helpers status) and "
                         "its source")
