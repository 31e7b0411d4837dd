"""The SageMaker Pipeline's two processing jobs, Prepare and Evaluate: the local build's steps, run in SageMaker's
scikit-learn container (Python 3.12, numpy, pandas, boto3) on the same code (:mod:`helpers.training.build_steps`).

The pipeline runs this file as the job's script; the helpers package arrives beside it as a zip input
(``helpers.aws.package``). Both jobs read what they depend on when they run, never when the pipeline was defined:
Prepare reads the hyperparameters from SSM unless the execution passed its own settings, Evaluate reads the
gate's threshold and margin, and writes them into ``gate.json`` for the condition step to compare.

    python sagemaker_jobs.py prepare --prefix P --region R --feature-group G --athena-workgroup W --settings JSON
    python sagemaker_jobs.py evaluate --prefix P --region R
"""
from __future__ import annotations

import sys

BUNDLE = "/opt/ml/processing/input/bundle/helpers.zip"
if __name__ == "__main__":  # run as the job's script: import helpers from the bundle (zipimport)
    sys.path.insert(0, BUNDLE)

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from helpers.core.baselines import BASELINES, baseline_forecasts  # noqa: E402
from helpers.core.deepar_json import quantile_arrays  # noqa: E402
from helpers.core.hyperparameters import DeepARHyperparameters  # noqa: E402
from helpers.core.metrics import QUANTILE_NAMES  # noqa: E402
from helpers.core.preparation import BuildSettings, check_enough, split  # noqa: E402
from helpers.training.build_steps import (  # noqa: E402
    EVALUATION_FILE,
    FORECASTS_FILE,
    GATE_FILE,
    MODEL,
    baseline_scores,
    decide_gate,
    deepar_channels,
    evaluate_forecasters,
    extract_series,
    save_forecasts,
    split_outputs,
)

log = logging.getLogger("helpers.training.sagemaker_jobs")

ROOT = Path("/opt/ml/processing")
CHANNELS = ("train", "test", "forecast")  # Prepare's DeepAR JSON lines: each its own output, one file each
SETTINGS_FILE, SERIES_FILE = "settings.json", "series.npz"
# gate.json's "registry": the strings the Register step copies into the model package's customer metadata.
REGISTRY_METADATA = ("mean_wQuantileLoss", *(f"{name}_mean_wQuantileLoss" for name in BASELINES), "best_baseline",
                     "threshold", "margin")


def resolve_settings(given: dict, hyperparameters_from_ssm) -> BuildSettings:
    """The execution's settings: those it was started with, the rest defaults; the hyperparameters, unless
    given, the ones in SSM now (a retrain started by an alarm passes none)."""
    hyperparameters = given.get("hyperparameters") or hyperparameters_from_ssm()
    return BuildSettings.from_parameters({**given, "hyperparameters": hyperparameters})


def inference_config(settings: BuildSettings) -> str:
    """DeepAR's batch-transform configuration (its DEEPAR_INFERENCE_CONFIG): the quantiles the gate scores."""
    return json.dumps({"num_samples": settings.num_samples, "output_types": ["mean", "quantiles"],
                       "quantiles": list(QUANTILE_NAMES)})


def prepare(features, settings: BuildSettings, out: Path = ROOT / "output") -> dict:
    """Extract, check and split, as the local build does; write DeepAR's channels, the series, and settings.json
    (the settings resolved, the built-in algorithm's hyperparameters, what was extracted)."""
    series, start, extracted = extract_series(features, settings)
    check_enough(series, settings)
    windows = split(len(series), settings)
    for channel, text in deepar_channels(series, start, windows).items():
        _write(out / channel / f"{channel}.json", text)
    (out / "data").mkdir(parents=True, exist_ok=True)
    np.savez(out / "data" / SERIES_FILE, series=series, series_start=int(start.timestamp()),
             origins=windows.test_origins)
    document = {"settings": settings.to_parameters(), "sagemaker_hyperparameters": settings.hyperparameters.sagemaker(),
                "inference_config": inference_config(settings), "extract": extracted,
                "prepare": split_outputs(windows, start, settings)}
    _write(out / "settings" / SETTINGS_FILE, json.dumps(document, indent=1))
    return document


def read_transform_output(path: Path, windows: int, horizon: int) -> dict[str, np.ndarray]:
    """DeepAR's batch-transform answers, one JSON line per test window, as arrays (windows, horizon)."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if len(lines) != windows:
        raise ValueError(f"{path.name}: {len(lines)} forecasts for {windows} test windows")
    per_window = []
    for i, prediction in enumerate(lines):
        arrays = quantile_arrays(prediction)
        if arrays is None or "mean" not in prediction:
            raise ValueError(f"{path.name} line {i + 1}: no mean or a missing quantile of {QUANTILE_NAMES}")
        arrays["mean"] = np.asarray(prediction["mean"], dtype=float)
        if any(len(values) != horizon for values in arrays.values()):
            raise ValueError(f"{path.name} line {i + 1}: forecasts of another length than {horizon}")
        per_window.append(arrays)
    return {key: np.stack([w[key] for w in per_window]) for key in per_window[0]}


def evaluate(settings_document: dict, series_file: Path, transform_output: Path, threshold: float, margin: float,
             out: Path = ROOT / "output" / "evaluation") -> dict:
    """DeepAR's batch forecasts beside the baselines, scored by the local build's code; the gate's decision with
    the threshold and margin read now. Writes evaluation.json, test_forecasts.npz and gate.json."""
    settings = BuildSettings.from_parameters(settings_document["settings"])
    horizon = settings.hyperparameters.prediction_length
    with np.load(series_file) as saved:
        series, origins = saved["series"], saved["origins"].tolist()
        start = pd.Timestamp(int(saved["series_start"]), unit="s", tz="UTC")
    forecasts = {MODEL: read_transform_output(transform_output, len(origins), horizon),
                 **baseline_forecasts(series, origins, horizon)}
    actuals = np.stack([series[o:o + horizon] for o in origins])
    evaluation = evaluate_forecasters(actuals, forecasts, horizon)
    decision = decide_gate(evaluation, threshold, margin)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / EVALUATION_FILE, json.dumps(evaluation, indent=1))
    save_forecasts(out / FORECASTS_FILE, series, start, origins, actuals, forecasts)
    registry = {"mean_wQuantileLoss": f"{decision.score:.6f}", "best_baseline": decision.best_baseline,
                **{f"{name}_mean_wQuantileLoss": f"{score:.6f}" for name, score in baseline_scores(evaluation).items()},
                "threshold": f"{decision.threshold:g}", "margin": f"{decision.margin:g}"}
    gate_document = {**decision.as_dict(), "baselines": baseline_scores(evaluation), "registry": registry}
    _write(out / GATE_FILE, json.dumps(gate_document, indent=1))
    log.info(decision.reason)
    return gate_document


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ---------------------------------------------------------------- as the job's script


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    jobs = parser.add_subparsers(dest="job", required=True)
    for name in ("prepare", "evaluate"):
        job = jobs.add_parser(name)
        job.add_argument("--prefix", required=True)
        job.add_argument("--region", required=True)
        if name == "prepare":
            job.add_argument("--feature-group", required=True)
            job.add_argument("--athena-workgroup", required=True)
            job.add_argument("--settings", default="{}", help="BuildSettings as JSON; absent ones take defaults")
    return parser


def main(argv: list[str] | None = None) -> None:
    from helpers.aws.session import AwsContext
    from helpers.feature_store.aws import AwsFeatureGroup
    from helpers.training.interface import BASELINE_MARGIN, WQL_THRESHOLD
    from helpers.training.ssm import HYPERPARAMETERS, SsmParameters

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = _parser().parse_args(argv)
    context = AwsContext(prefix=args.prefix, region=args.region)
    parameters = SsmParameters(context)
    if args.job == "prepare":
        settings = resolve_settings(json.loads(args.settings),
                                    lambda: DeepARHyperparameters.from_dict(parameters.get_json(HYPERPARAMETERS))
                                    .to_dict())
        features = AwsFeatureGroup(context, {"FeatureGroupName": args.feature_group,
                                             "AthenaWorkGroup": args.athena_workgroup})
        prepare(features, settings)
    else:
        inputs = ROOT / "input"
        (transform_output,) = sorted((inputs / "transform").glob("*.out"))
        evaluate(json.loads((inputs / "settings" / SETTINGS_FILE).read_text()), inputs / "data" / SERIES_FILE,
                 transform_output, parameters.get_float(WQL_THRESHOLD), parameters.get_float(BASELINE_MARGIN))


if __name__ == "__main__":
    main()
