"""DeepAR's JSON, to and from arrays: the request an application sends, and the predictions it gets back.

Pure: the local endpoints, the SageMaker ones, the smoke test, the monitor's scoring and the notebooks share it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from helpers.core.metrics import QUANTILE_NAMES

START_FORMAT = "%Y-%m-%d %H:%M:%S"  # DeepAR's "start": a naive timestamp, read as UTC here


def deepar_request(history: pd.Series, num_samples: int = 100, quantiles=QUANTILE_NAMES,
                   output_types=("mean", "quantiles")) -> dict:
    """A DeepAR request for one series on the minute grid; gaps are sent as "NaN"."""
    return {"instances": [{"start": history.index[0].strftime(START_FORMAT),
                           "target": [float(v) if np.isfinite(v) else "NaN" for v in history.to_numpy(float)]}],
            "configuration": {"num_samples": num_samples, "output_types": list(output_types),
                              "quantiles": list(quantiles)}}


def forecast_origin(instance: dict) -> float:
    """The first forecast minute of a request's instance (unix s): the minute after the history it sent."""
    return pd.Timestamp(instance["start"], tz="UTC").timestamp() + 60 * len(instance["target"])


def quantile_arrays(prediction: dict, quantiles=QUANTILE_NAMES) -> dict[str, np.ndarray] | None:
    """A prediction's quantiles as float arrays; None if it lacks one of ``quantiles``."""
    answered = prediction.get("quantiles", {})
    if not all(q in answered for q in quantiles):
        return None
    return {q: np.asarray(answered[q], dtype=float) for q in quantiles}
