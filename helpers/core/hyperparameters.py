"""DeepAR's hyperparameters under SageMaker's names, with their ranges: one dict drives both backends.

SageMaker's built-in DeepAR and GluonTS's DeepAREstimator are the same algorithm family;
:func:`helpers.training.deepar.gluonts_kwargs` maps these names to GluonTS's, and
:meth:`DeepARHyperparameters.sagemaker` gives the built-in algorithm's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import pandas as pd

LIKELIHOODS = ("student-T", "gaussian", "negative-binomial")
# (minimum, maximum) for every numeric hyperparameter, from SageMaker's DeepAR documentation where it gives one.
RANGES = {
    "context_length": (1, 2000), "prediction_length": (1, 2000), "epochs": (1, 1000), "num_layers": (1, 8),
    "num_cells": (1, 200), "dropout_rate": (0.0, 0.9), "learning_rate": (1e-6, 1.0), "mini_batch_size": (1, 4096),
    "early_stopping_patience": (1, 1000), "num_batches_per_epoch": (1, 10_000), "num_instances_per_pass": (1, 10_000),
}


MAX_GAP_SHARE = 0.5  # more missing minutes than this, in training data or a context window: mostly guesswork


class HyperparameterError(ValueError):
    """A hyperparameter is out of range; the message names it and the allowed range."""


@dataclass(frozen=True)
class DeepARHyperparameters:
    context_length: int = 60  # minutes of history the network reads
    prediction_length: int = 30  # forecast 30 minutes ahead
    time_freq: str = "1min"
    epochs: int = 10
    num_layers: int = 2
    num_cells: int = 40
    dropout_rate: float = 0.1
    # Gaussian, not Student-t: on 12 simulated weeks a Student-t's heavy-tailed samples, fed back as lags while
    # forecasting, pushed the median up over the horizon (calibration 0.68 at the 0.5 quantile); measured in
    # python -m bench train.
    likelihood: str = "gaussian"
    learning_rate: float = 3e-3
    mini_batch_size: int = 32
    early_stopping_patience: int = 3  # epochs without a better validation loss before stopping
    # GluonTS only (SageMaker sizes an epoch itself): batches per epoch, and training windows drawn per pass
    # over the series (one long series: drawing many per pass keeps data loading cheap).
    num_batches_per_epoch: int = 50
    num_instances_per_pass: int = 64

    def __post_init__(self):
        for name, (low, high) in RANGES.items():
            value = getattr(self, name)
            kind = int if isinstance(low, int) else float
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                raise HyperparameterError(f"{name}={value!r}: must be {'an integer' if kind is int else 'a number'}")
            if not low <= value <= high:
                raise HyperparameterError(f"{name}={value!r} is out of range: use {low} to {high}")
        if self.likelihood not in LIKELIHOODS:
            raise HyperparameterError(f"likelihood={self.likelihood!r}: use one of {LIKELIHOODS}")
        try:
            pd.tseries.frequencies.to_offset(self.time_freq)
        except ValueError:
            raise HyperparameterError(f"time_freq={self.time_freq!r}: use a pandas frequency such as '1min'") from None

    @classmethod
    def from_dict(cls, values: dict) -> "DeepARHyperparameters":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise HyperparameterError(f"unknown hyperparameter {unknown[0]!r}: DeepAR knows {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    def sagemaker(self) -> dict[str, str]:
        """The built-in algorithm's hyperparameters (strings, SageMaker's names, GluonTS-only ones left out)."""
        gluonts_only = {"num_batches_per_epoch", "num_instances_per_pass"}
        return {k: str(v) for k, v in self.to_dict().items() if k not in gluonts_only}
