"""DeepAR with SageMaker's hyperparameter names, trained with GluonTS (torch).

SageMaker's built-in DeepAR and GluonTS's DeepAREstimator are the same
algorithm family. Hyperparameters keep SageMaker's names, so the same dict
drives both backends; :meth:`DeepARHyperparameters.gluonts_kwargs` maps them.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("helpers.deepar")

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

    def gluonts_kwargs(self) -> dict:
        from gluonts.time_feature import hour_of_day, minute_of_hour
        from gluonts.torch.distributions import NegativeBinomialOutput, NormalOutput, StudentTOutput
        from gluonts.transform import ExpectedNumInstanceSampler

        distribution = {"student-T": StudentTOutput, "gaussian": NormalOutput,
                        "negative-binomial": NegativeBinomialOutput}[self.likelihood]()
        return {
            "freq": self.time_freq, "prediction_length": self.prediction_length,
            "context_length": self.context_length, "num_layers": self.num_layers, "hidden_size": self.num_cells,
            "dropout_rate": self.dropout_rate, "distr_output": distribution, "lr": self.learning_rate,
            "batch_size": self.mini_batch_size, "num_batches_per_epoch": self.num_batches_per_epoch,
            "nonnegative_pred_samples": True,  # fees are never negative: a negative sample is clipped to 0
            # The daily rhythm only: GluonTS adds day of week, month and year for minutes, which a week of history
            # cannot teach (one example of each), so the network could only overfit them.
            "time_features": [minute_of_hour, hour_of_day],
            "train_sampler": ExpectedNumInstanceSampler(num_instances=self.num_instances_per_pass,
                                                        min_future=self.prediction_length),
        }


# One intra-op thread per prediction: an endpoint serves requests in parallel instead. Measured on this 2-core
# machine while it was busy: a 50 ms forecast took 400 ms with 2 OpenMP threads fighting for the cores.
INFERENCE_THREADS = 1


def use_inference_threads() -> None:
    import torch

    torch.set_num_threads(INFERENCE_THREADS)


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class TrainingResult:
    predictor: object  # gluonts PyTorchPredictor
    epochs_run: int
    best_validation_loss: float
    stopped_early: bool
    device: str


def train(hp: DeepARHyperparameters, start: pd.Timestamp, train_target: np.ndarray,
          validation_targets: list[np.ndarray], seed: int, workdir: Path) -> TrainingResult:
    """Train on ``train_target``; stop early when the loss on ``validation_targets`` (each scored on its last
    prediction_length points) has not improved for ``early_stopping_patience`` epochs; keep the best epoch."""
    import lightning.pytorch as pl
    from gluonts.torch.model.deepar import DeepAREstimator
    from lightning.pytorch.callbacks import EarlyStopping

    pl.seed_everything(seed, workers=True, verbose=False)
    stopper = EarlyStopping(monitor="val_loss", patience=hp.early_stopping_patience, mode="min")
    where = device()
    estimator = DeepAREstimator(**hp.gluonts_kwargs(), trainer_kwargs={
        "max_epochs": hp.epochs, "callbacks": [stopper], "accelerator": where, "devices": 1, "logger": False,
        "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(workdir),
        "deterministic": where == "cpu"})
    with _quiet_training():
        predictor = estimator.train(_dataset(start, [train_target], hp.time_freq),
                                    validation_data=_dataset(start, validation_targets, hp.time_freq), cache_data=True)
    epochs_run = stopper.stopped_epoch + 1 if stopper.stopped_epoch else hp.epochs
    return TrainingResult(predictor, epochs_run, float(stopper.best_score), bool(stopper.stopped_epoch), where)


def forecast(predictor, start: pd.Timestamp, histories: list[np.ndarray], freq: str, quantiles: tuple[float, ...],
             num_samples: int = 100) -> dict[str, np.ndarray]:
    """Forecasts after each history: {"mean": (n, horizon), "0.1": ..., "samples": (n, num_samples, horizon)}."""
    with _quiet_training():
        forecasts = list(predictor.predict(_dataset(start, histories, freq), num_samples=num_samples))
    result = {"mean": np.stack([f.mean for f in forecasts]), "samples": np.stack([f.samples for f in forecasts])}
    result.update({str(q): np.stack([f.quantile(q) for f in forecasts]) for q in quantiles})
    return result


def context_length(predictor) -> int:
    """How many of the latest points the trained network reads as its context window."""
    return int(predictor.prediction_net.model.context_length)


def save(predictor, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    predictor.serialize(path)
    return path


def load(path: Path):
    from gluonts.model.predictor import Predictor

    return Predictor.deserialize(Path(path))


def _dataset(start: pd.Timestamp, targets: list[np.ndarray], freq: str):
    from gluonts.dataset.common import ListDataset

    period = pd.Period(start.tz_convert("UTC").tz_localize(None), freq=freq)
    return ListDataset([{"start": period, "target": np.asarray(t, dtype=np.float32)} for t in targets], freq=freq)


class _quiet_training:
    """GluonTS and Lightning chatter (a UserWarning per batch, checkpoint notices): keep logs readable."""

    def __enter__(self):
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        self._levels = {name: logging.getLogger(name).level for name in ("lightning", "lightning.pytorch",
                                                                         "lightning.fabric", "gluonts")}
        for name in self._levels:
            logging.getLogger(name).setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        self._warnings.__exit__(*exc)
