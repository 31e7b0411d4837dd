"""DeepAR trained with GluonTS (torch), from SageMaker-named hyperparameters (:mod:`helpers.core.hyperparameters`):
training, forecasting, saving and loading a predictor."""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.core.hyperparameters import DeepARHyperparameters

log = logging.getLogger("helpers.training.deepar")


def gluonts_kwargs(hp: DeepARHyperparameters) -> dict:
    """GluonTS DeepAREstimator's arguments for SageMaker-named hyperparameters."""
    from gluonts.time_feature import hour_of_day, minute_of_hour
    from gluonts.torch.distributions import NegativeBinomialOutput, NormalOutput, StudentTOutput
    from gluonts.transform import ExpectedNumInstanceSampler

    distribution = {"student-T": StudentTOutput, "gaussian": NormalOutput,
                    "negative-binomial": NegativeBinomialOutput}[hp.likelihood]()
    return {
        "freq": hp.time_freq, "prediction_length": hp.prediction_length,
        "context_length": hp.context_length, "num_layers": hp.num_layers, "hidden_size": hp.num_cells,
        "dropout_rate": hp.dropout_rate, "distr_output": distribution, "lr": hp.learning_rate,
        "batch_size": hp.mini_batch_size, "num_batches_per_epoch": hp.num_batches_per_epoch,
        "nonnegative_pred_samples": True,  # fees are never negative: a negative sample is clipped to 0
        # The daily rhythm only: GluonTS adds day of week, month and year for minutes, which a week of history
        # cannot teach (one example of each), so the network could only overfit them.
        "time_features": [minute_of_hour, hour_of_day],
        "train_sampler": ExpectedNumInstanceSampler(num_instances=hp.num_instances_per_pass,
                                                    min_future=hp.prediction_length),
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
    estimator = DeepAREstimator(**gluonts_kwargs(hp), trainer_kwargs={
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
