"""The model build on AWS without an AWS account: the SageMaker Pipeline's definition generated offline (SDK v3,
under moto, the artifacts bucket as the SDK's default bucket), its jobs' code on real features and SageMaker-format
files, SSM parameters and pipeline executions in moto. moto has no ListPipelineExecutionSteps: the report test
patches that one call on the client."""
import json
import subprocess
import sys
from dataclasses import replace

import boto3
import numpy as np
import pandas as pd
import pytest
from moto import mock_aws

from conftest import PINNED_NOW, fake_aws_credentials, moto_account
from helpers.aws.package import JOBS_MODULES, build_jobs_zip
from helpers.aws.session import AwsContext
from helpers.core.baselines import baseline_forecasts
from helpers.core.hyperparameters import DeepARHyperparameters
from helpers.core.metrics import QUANTILE_NAMES
from helpers.core.preparation import BuildSettings, split
from helpers.feature_store import open_tx_per_minute
from helpers.ingestion import ingest
from helpers.training import build_steps, sagemaker_jobs
from helpers.training.interface import BASELINE_MARGIN, WQL_THRESHOLD, ParameterNotFound
from helpers.training.sagemaker_pipeline import STEP_NAMES, PipelineConfig, build_pipeline, settings_parameter
from helpers.training.ssm import HYPERPARAMETERS, SsmParameters, ssm_name

REGION = "eu-west-1"
PREFIX = "ws-test"
BUCKET = f"{PREFIX}-123456789012-{REGION}"
SMALL = BuildSettings(hyperparameters=DeepARHyperparameters(context_length=30, epochs=2, num_cells=16),
                      training_days=1.5, n_test_windows=4, n_validation_windows=2, num_samples=50)
CONFIG = PipelineConfig(PREFIX, REGION, f"{PREFIX}-model-build", f"arn:aws:iam::123456789012:role/{PREFIX}-model-build",
                        f"s3://{BUCKET}/model-build", f"{PREFIX}-avg-fee-deepar", f"{PREFIX}-tx-per-minute", PREFIX,
                        f"s3://{BUCKET}/model-build/code/jobs-0123456789abcdef/helpers.zip",
                        f"arn:aws:kms:{REGION}:123456789012:key/k")


@pytest.fixture(autouse=True, scope="module")
def fake_credentials():
    with pytest.MonkeyPatch.context() as patch:
        # SAGEMAKER_VALIDATE_ROLE: ModelTrainer would otherwise simulate the role's policy (iam:SimulatePrincipalPolicy)
        fake_aws_credentials(patch, REGION, SAGEMAKER_VALIDATE_ROLE="false")
        yield


@pytest.fixture
def aws():
    with moto_account(PREFIX, REGION, BUCKET) as context:
        yield context


def pipeline_session(context):
    from sagemaker.core.workflow.pipeline_context import PipelineSession

    return PipelineSession(boto_session=context.session, default_bucket=BUCKET,
                           default_bucket_prefix="model-build/sdk")


@pytest.fixture(scope="module")
def definition():
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        context = AwsContext(prefix=PREFIX, region=REGION)
        return json.loads(build_pipeline(CONFIG, pipeline_session(context)).definition())


def steps_by_name(definition) -> dict:
    found = {}

    def visit(steps):
        for step in steps:
            found[step["Name"]] = step
            visit(step.get("Arguments", {}).get("IfSteps", []))
            visit(step.get("Arguments", {}).get("ElseSteps", []))
    visit(definition["Steps"])
    return found


def json_get(file: str, path: str) -> dict:
    return {"Std:JsonGet": {"PropertyFile": {"Get": f"Steps.{'Prepare' if file == 'Settings' else 'Evaluate'}"
                                                    f".PropertyFiles.{file}"}, "Path": path}}


def literals(value) -> list:
    """Every number in a piece of the definition."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in literals(v)]
    if isinstance(value, list):
        return [n for v in value for n in literals(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


# ------------------------------------------------------------------ the definition, offline

def test_the_pipeline_has_the_local_builds_steps_in_order(definition):
    assert [s["Name"] for s in definition["Steps"]] == ["Prepare", "Train", "CreateModel", "Forecast", "Evaluate",
                                                        "QualityGate"]
    steps = steps_by_name(definition)
    assert set(steps) == set(STEP_NAMES)
    assert {name: s["Type"] for name, s in steps.items()} == {
        "Prepare": "Processing", "Train": "Training", "CreateModel": "Model", "Forecast": "Transform",
        "Evaluate": "Processing", "QualityGate": "Condition", "Register": "RegisterModel", "GateFailed": "Fail"}
    assert definition["Parameters"] == [{"Name": "BuildSettings", "Type": "String", "DefaultValue": "{}"}]


def test_the_gate_compares_values_the_evaluate_job_wrote_when_it_ran(definition):
    gate = steps_by_name(definition)["QualityGate"]["Arguments"]
    assert gate["Conditions"] == [
        {"Type": "LessThanOrEqualTo", "LeftValue": json_get("Gate", "score"),
         "RightValue": json_get("Gate", "threshold")},
        {"Type": "LessThanOrEqualTo", "LeftValue": json_get("Gate", "score"),
         "RightValue": json_get("Gate", "baseline_bound")}]
    assert literals(gate["Conditions"]) == []  # no threshold baked in at definition time
    assert [s["Name"] for s in gate["IfSteps"]] == ["Register"] and [s["Name"] for s in gate["ElseSteps"]] == \
        ["GateFailed"]
    evaluate = steps_by_name(definition)["Evaluate"]
    assert {f["PropertyFileName"]: f["FilePath"] for f in evaluate["PropertyFiles"]} == {
        "Evaluation": "evaluation.json", "Gate": "gate.json"}
    assert evaluate["Arguments"]["AppSpecification"]["ContainerArguments"] == ["evaluate", "--prefix", PREFIX,
                                                                              "--region", REGION]


def test_register_is_pending_approval_with_the_evaluation_as_its_metrics(definition):
    register = steps_by_name(definition)["Register"]["Arguments"]
    assert register["ModelApprovalStatus"] == "PendingManualApproval"
    assert register["ModelPackageGroupName"] == CONFIG.model_package_group
    statistics = register["ModelMetrics"]["ModelQuality"]["Statistics"]
    assert statistics["ContentType"] == "application/json"
    outer = statistics["S3Uri"]["Std:Join"]
    assert outer["Values"][1:] == ["evaluation", "evaluation.json"]
    assert outer["Values"][0]["Std:Join"]["Values"] == [CONFIG.artifacts_uri, {"Get": "Execution.PipelineExecutionId"}]
    metadata = register["CustomerMetadataProperties"]
    assert metadata.pop("pipeline_execution_id") == {"Get": "Execution.PipelineExecutionId"}
    assert metadata == {key: json_get("Gate", f"registry.{key}") for key in sagemaker_jobs.REGISTRY_METADATA}
    (container,) = register["InferenceSpecification"]["Containers"]
    assert "forecasting-deepar" in container["Image"]
    assert container["ModelDataUrl"] == {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}


def test_the_fail_step_gives_both_numbers_and_the_advice(definition):
    message = steps_by_name(definition)["GateFailed"]["Arguments"]["ErrorMessage"]["Std:Join"]["Values"]
    read = [v["Std:JsonGet"]["Path"] for v in message if isinstance(v, dict)]
    assert read == ["score", "threshold", "best_baseline_score", "margin", "baseline_bound", "advice"]
    assert message[0].startswith("quality gate failed")


def test_training_reads_its_hyperparameters_from_what_prepare_resolved(definition):
    train = steps_by_name(definition)["Train"]["Arguments"]
    assert "forecasting-deepar" in train["AlgorithmSpecification"]["TrainingImage"]
    assert train["HyperParameters"] == {name: json_get("Settings", f"sagemaker_hyperparameters.{name}")
                                        for name in DeepARHyperparameters().sagemaker()}
    assert {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in train["InputDataConfig"]} == {
        channel: {"Get": f"Steps.Prepare.ProcessingOutputConfig.Outputs['{channel}'].S3Output.S3Uri"}
        for channel in ("train", "test")}
    assert train["OutputDataConfig"]["KmsKeyId"] == CONFIG.kms_key_arn
    forecast = steps_by_name(definition)["Forecast"]["Arguments"]
    assert forecast["Environment"] == {"DEEPAR_INFERENCE_CONFIG": json_get("Settings", "inference_config")}
    assert forecast["TransformInput"]["SplitType"] == "Line"


def test_prepare_gets_the_settings_parameter_the_bundle_and_its_script_from_the_artifacts_bucket(definition):
    prepare = steps_by_name(definition)["Prepare"]["Arguments"]
    arguments = prepare["AppSpecification"]["ContainerArguments"]
    assert arguments[0] == "prepare" and arguments[-2:] == ["--settings", {"Get": "Parameters.BuildSettings"}]
    inputs = {i["InputName"]: i["S3Input"] for i in prepare["ProcessingInputs"]}
    assert inputs["bundle"]["S3Uri"] == CONFIG.bundle_uri
    assert inputs["bundle"]["LocalPath"] + "/helpers.zip" == sagemaker_jobs.BUNDLE
    assert inputs["code"]["S3Uri"].startswith(f"s3://{BUCKET}/model-build/")  # where the role may read
    assert prepare["AppSpecification"]["ContainerEntrypoint"][-1].endswith("/sagemaker_jobs.py")
    image = prepare["AppSpecification"]["ImageUri"]
    assert "sagemaker-scikit-learn" in image and "py312" in image  # Python 3.12, as the code needs
    assert sorted(o["OutputName"] for o in prepare["ProcessingOutputConfig"]["Outputs"]) == \
        sorted([*sagemaker_jobs.CHANNELS, "data", "settings"])


# ------------------------------------------------------------------ the jobs' code

@pytest.fixture(scope="module")
def features_state(tmp_path_factory):
    state = tmp_path_factory.mktemp("aws-build") / "state"
    ingest.backfill(state, days=2.0, now=PINNED_NOW, progress=False)
    return state


@pytest.fixture(scope="module")
def prepared(features_state, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepare")
    features = open_tx_per_minute(features_state / "feature_store")
    try:
        document = sagemaker_jobs.prepare(features, SMALL, out)
        series, start, _ = build_steps.extract_series(features, SMALL)
    finally:
        features.close()
    return out, document, series, start


def test_prepare_writes_deepars_channels_split_as_the_local_build_splits(prepared):
    out, document, series, start = prepared
    windows = split(len(series), SMALL)
    lines = {c: [json.loads(line) for line in (out / c / f"{c}.json").read_text().splitlines()]
             for c in sagemaker_jobs.CHANNELS}
    assert [len(line["target"]) for line in lines["train"]] == [windows.train_end]
    assert [len(line["target"]) for line in lines["test"]] == windows.validation_ends
    assert [len(line["target"]) for line in lines["forecast"]] == windows.test_origins
    assert {line["start"] for c in lines.values() for line in c} == {start.strftime("%Y-%m-%d %H:%M:%S")}
    observed = [v for v in lines["train"][0]["target"] if v != "NaN"]
    assert observed == [float(v) for v in series[:windows.train_end] if np.isfinite(v)]
    assert document["sagemaker_hyperparameters"] == SMALL.hyperparameters.sagemaker()
    assert BuildSettings.from_parameters(document["settings"]) == SMALL
    assert json.loads(document["inference_config"])["quantiles"] == list(QUANTILE_NAMES)
    assert document["prepare"]["test_windows"] == SMALL.n_test_windows
    assert json.loads((out / "settings" / "settings.json").read_text()) == document


def transform_output(path, forecasts: dict) -> None:
    """A DeepAR batch transform's output: one JSON line per window, mean and quantiles."""
    lines = [{"mean": forecasts["mean"][i].tolist(),
              "quantiles": {q: forecasts[q][i].tolist() for q in QUANTILE_NAMES}}
             for i in range(len(forecasts["mean"]))]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")


@pytest.mark.parametrize("threshold, margin, passes", [(1.0, 10.0, True), (0.001, 0.1, False)])
def test_evaluate_scores_with_the_local_code_and_writes_the_gate_with_both_numbers(prepared, tmp_path, threshold,
                                                                                  margin, passes):
    out, document, series, _ = prepared
    origins = split(len(series), SMALL).test_origins
    naive = baseline_forecasts(series, origins, 30)["seasonal_naive"]  # "DeepAR" forecasts as seasonal naive here
    transform_output(tmp_path / "forecast.json.out", naive)
    gate = sagemaker_jobs.evaluate(document, out / "data" / "series.npz", tmp_path / "forecast.json.out",
                                   threshold=threshold, margin=margin, out=tmp_path / "evaluation")
    evaluation = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    actuals = np.stack([series[o:o + 30] for o in origins])
    expected = build_steps.evaluate_forecasters(actuals, {"deepar": naive, **baseline_forecasts(series, origins, 30)},
                                                30)
    assert evaluation == expected  # JSON keeps a float exactly: the same numbers as the local code's
    assert evaluation["deepar"] == evaluation["seasonal_naive"]
    assert gate == json.loads((tmp_path / "evaluation" / "gate.json").read_text())
    assert (gate["passed"], gate["threshold"], gate["margin"]) == (passes, threshold, margin)
    assert gate["score"] == pytest.approx(evaluation["deepar"]["mean_wQuantileLoss"])
    assert gate["baseline_bound"] == pytest.approx(gate["best_baseline_score"] * (1 + margin))
    assert set(gate["registry"]) == set(sagemaker_jobs.REGISTRY_METADATA)
    assert {name: gate["registry"][f"{name}_mean_wQuantileLoss"] for name in ("seasonal_naive", "naive_last_value")} \
        == {name: f"{evaluation[name]['mean_wQuantileLoss']:.6f}" for name in ("seasonal_naive", "naive_last_value")}
    assert all(isinstance(v, str) and len(v) <= 256 for v in gate["registry"].values())  # customer metadata's limit
    assert (gate["advice"] == "") == passes
    target, saved_origins, saved_actuals, forecasts = build_steps.load_forecasts(
        tmp_path / "evaluation" / "test_forecasts.npz")
    assert saved_origins == origins and np.array_equal(saved_actuals, actuals, equal_nan=True)
    assert set(forecasts) == {"deepar", "seasonal_naive", "naive_last_value"}


def test_a_transform_output_that_does_not_fit_is_refused_by_line(prepared, tmp_path):
    _, _, series, _ = prepared
    origins = split(len(series), SMALL).test_origins
    naive = baseline_forecasts(series, origins, 30)["seasonal_naive"]
    path = tmp_path / "forecast.json.out"
    transform_output(path, {k: v[:-1] for k, v in naive.items()})
    with pytest.raises(ValueError, match="3 forecasts for 4 test windows"):
        sagemaker_jobs.read_transform_output(path, 4, 30)
    transform_output(path, naive)
    broken = path.read_text().splitlines()
    broken[1] = json.dumps({"mean": [1.0] * 30, "quantiles": {"0.5": [1.0] * 30}})
    path.write_text("\n".join(broken))
    with pytest.raises(ValueError, match="line 2: no mean or a missing quantile"):
        sagemaker_jobs.read_transform_output(path, 4, 30)


def test_settings_take_ssms_hyperparameters_only_when_the_execution_passed_none():
    from_ssm = replace(SMALL.hyperparameters, epochs=7).to_dict()
    assert sagemaker_jobs.resolve_settings({}, lambda: from_ssm).hyperparameters.epochs == 7
    given = json.loads(settings_parameter(SMALL))
    assert sagemaker_jobs.resolve_settings(given, lambda: pytest.fail("SSM read")) == SMALL
    assert settings_parameter(None) == "{}"


def test_the_bundle_lands_where_the_job_imports_it_from(aws):
    from helpers.aws.package import upload_jobs_bundle

    uri = upload_jobs_bundle(aws, BUCKET)
    folder, name = uri.removeprefix(f"s3://{BUCKET}/").rsplit("/", 1)
    assert folder.startswith("model-build/code/jobs-") and name == sagemaker_jobs.BUNDLE.rsplit("/", 1)[1]
    assert aws.client("s3").head_object(Bucket=BUCKET, Key=f"{folder}/{name}")["ContentLength"] > 10_000


def test_the_jobs_run_from_the_bundle_alone_loading_no_local_machinery(tmp_path):
    bundle = build_jobs_zip(tmp_path)
    code = ("import sys; sys.path.insert(0, sys.argv[1])\nimport helpers.training.sagemaker_jobs as jobs\n"
            "from helpers.feature_store.aws import AwsFeatureGroup\nfrom helpers.training.ssm import SsmParameters\n"
            "print(jobs.__file__)\n"
            "print(sorted(m for m in ('sqlite3', 'duckdb', 'torch', 'mlflow', 'gluonts', 'httpx', 'sagemaker')"
            " if m in sys.modules))")
    # -I: no current directory or PYTHONPATH on the path, so the checkout cannot stand in for the bundle
    result = subprocess.run([sys.executable, "-I", "-c", code, str(bundle)], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    where, loaded = result.stdout.splitlines()
    assert where.startswith(str(bundle)) and loaded == "[]"
    assert "helpers/training/sagemaker_jobs.py" in JOBS_MODULES


# ------------------------------------------------------------------ SSM parameters

def test_parameters_live_under_the_prefix_with_their_history(aws):
    assert ssm_name(PREFIX, WQL_THRESHOLD) == f"/{PREFIX}/model-build/wql-threshold"
    with pytest.raises(ValueError, match="use one under /rtmlops/"):
        ssm_name(PREFIX, "threshold")
    parameters = SsmParameters(aws)
    assert parameters.ensure_model_build_defaults() == {WQL_THRESHOLD: 0.24, BASELINE_MARGIN: 0.10}
    assert parameters.put(WQL_THRESHOLD, 0.3, by="notebook 04", reason="the new model's worst hour") == 2
    assert parameters.get_float(WQL_THRESHOLD) == 0.3
    assert parameters.ensure_model_build_defaults()[WQL_THRESHOLD] == 0.3  # kept, not reset
    history = parameters.history(WQL_THRESHOLD)
    assert [(h["version"], h["value"]) for h in history] == [(1, "0.24"), (2, "0.3")]
    assert history[1]["reason"] == "notebook 04: the new model's worst hour"
    raw = boto3.client("ssm", region_name=REGION).get_parameter(Name=f"/{PREFIX}/model-build/wql-threshold")
    assert raw["Parameter"]["Value"] == "0.3"


def test_an_unset_parameter_says_how_to_set_it(aws):
    parameters = SsmParameters(aws)
    boto3.client("ssm", region_name=REGION).put_parameter(Name=f"/{PREFIX}/model/current-wql", Value="none",
                                                          Type="String")
    with pytest.raises(ParameterNotFound, match="is not set: set it with `python -m helpers param set"):
        parameters.get("/rtmlops/model/current-wql")
    with pytest.raises(ParameterNotFound, match="hyperparameters"):
        parameters.get(HYPERPARAMETERS)
    parameters.put(HYPERPARAMETERS, "{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        parameters.get_json(HYPERPARAMETERS)


# ------------------------------------------------------------------ executions in moto

def fake_stack(name: str, outputs: dict) -> None:
    """A stack with the outputs the code reads (moto cannot deploy a model package group)."""
    template = {"Resources": {"Nothing": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
                "Outputs": {k: {"Value": v} for k, v in outputs.items()}}
    boto3.client("cloudformation", region_name=REGION).create_stack(StackName=f"{PREFIX}-{name}",
                                                                     TemplateBody=json.dumps(template))


def test_an_execution_starts_with_the_settings_it_was_given(aws):
    from helpers.training.aws import AwsModelBuilds

    builds = AwsModelBuilds(aws)
    arn = builds.start(SMALL, CONFIG)
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    pipeline = sagemaker.describe_pipeline(PipelineName=CONFIG.pipeline_name)
    assert [s["Name"] for s in json.loads(pipeline["PipelineDefinition"])["Steps"]][0] == "Prepare"
    assert pipeline["RoleArn"] == CONFIG.role_arn
    given = sagemaker.list_pipeline_parameters_for_execution(PipelineExecutionArn=arn)["PipelineParameters"]
    assert given == [{"Name": "BuildSettings", "Value": settings_parameter(SMALL)}]
    assert builds._given_settings(arn) == json.loads(settings_parameter(SMALL))


def put_artifacts(execution_id: str, files: dict) -> None:
    s3 = boto3.client("s3", region_name=REGION)
    for key, path in files.items():
        s3.upload_file(str(path), BUCKET, f"model-build/{execution_id}/{key}")


@pytest.mark.parametrize("passed", [True, False])
def test_the_report_is_read_back_from_the_step_records_and_the_artifacts(aws, prepared, tmp_path, monkeypatch,
                                                                        passed):
    from helpers.training.aws import AwsModelBuilds

    out, document, series, _ = prepared
    origins = split(len(series), SMALL).test_origins
    transform_output(tmp_path / "forecast.json.out", baseline_forecasts(series, origins, 30)["seasonal_naive"])
    gate = sagemaker_jobs.evaluate(document, out / "data" / "series.npz", tmp_path / "forecast.json.out",
                                   threshold=1.0 if passed else 0.001, margin=10.0, out=tmp_path / "evaluation")
    fake_stack("model-build", {"ArtifactsS3Uri": f"s3://{BUCKET}/model-build"})
    execution_id = "abc123def456"
    put_artifacts(execution_id, {f"evaluation/{n}": tmp_path / "evaluation" / n
                                 for n in ("evaluation.json", "gate.json", "test_forecasts.npz")}
                  | {"prepare/settings/settings.json": out / "settings" / "settings.json"})
    started = pd.Timestamp(PINNED_NOW, unit="s", tz="UTC")
    step = lambda name, status, **extra: {"StepName": name, "StepStatus": status, "StartTime": started,  # noqa: E731
                                          "EndTime": started + pd.Timedelta(minutes=5), **extra}
    records = [step(name, "Succeeded") for name in ("Prepare", "Train", "CreateModel", "Forecast", "Evaluate",
                                                     "QualityGate")]
    records.append(step("Register", "Succeeded", Metadata={"RegisterModel": {
        "Arn": f"arn:aws:sagemaker:{REGION}:123456789012:model-package/{PREFIX}-avg-fee-deepar/3"}}) if passed else
        step("GateFailed", "Failed", FailureReason="quality gate failed: mean wQL 0.09 against the threshold 0.001"))
    sagemaker = aws.client("sagemaker")
    monkeypatch.setattr(sagemaker, "list_pipeline_execution_steps",
                        lambda **_: {"PipelineExecutionSteps": list(reversed(records))[::-1]})
    monkeypatch.setattr(sagemaker, "describe_pipeline_execution", lambda **_: {
        "PipelineExecutionStatus": "Succeeded" if passed else "Failed",
        **({} if passed else {"FailureReason": "Step GateFailed failed"})})
    report = AwsModelBuilds(aws).report(execution_id)
    assert report.status == ("Succeeded" if passed else "FailedQualityGate")
    assert report.gate.passed is passed and report.gate.threshold == gate["threshold"]
    assert report.model_version == (3 if passed else None)
    assert report.failure_reason == (None if passed else
                                     "quality gate failed: mean wQL 0.09 against the threshold 0.001")
    assert list(report.steps["name"])[-1] == ("Register" if passed else "GateFailed")
    assert (report.steps["seconds"] == 300).all()
    assert report.comparison().index[0] in {"deepar", "seasonal_naive", "naive_last_value"}
    assert report.parameters == document["settings"] and report.outputs["test_windows"] == SMALL.n_test_windows
    assert np.array_equal(report.actuals, np.stack([series[o:o + 30] for o in origins]), equal_nan=True)
    assert report.target.index[0] == prepared[3] and report.test_origins == origins
    assert ("registered as version 3" in report.gate_report()) is passed
