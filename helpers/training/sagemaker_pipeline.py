"""The model build as a SageMaker Pipeline (SDK v3): the AWS twin of :mod:`helpers.training.model_build`, step for
step, on the same code.

    Prepare (processing) -> Train (built-in DeepAR) -> CreateModel -> Forecast (batch transform)
      -> Evaluate (processing) -> QualityGate (condition) -> Register | GateFailed (fail)

- Prepare and Evaluate run :mod:`helpers.training.sagemaker_jobs` in the scikit-learn container, with the helpers
  package as a zip input: the local build's extraction, split, baselines, wQL and gate.
- The settings are one pipeline parameter, ``BuildSettings`` (JSON; ``{}``: the defaults, and the
  hyperparameters in SSM). Prepare resolves them and writes ``settings.json``, a property file the training step
  reads its hyperparameters from: nothing about the data or the model is fixed when the pipeline is defined.
- The gate's threshold and margin are read from SSM by the Evaluate job when it runs, and written with its
  decision into ``gate.json``; the condition compares values read from that file at run time. A retrain an alarm
  starts passes no parameters and still gets today's threshold.
- Every execution keeps its artifacts under ``<ArtifactsS3Uri>/<execution id>/``: the report reads them back.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from helpers.core.preparation import BuildSettings
from helpers.training.build_steps import EVALUATION_FILE, GATE_FILE
from helpers.training.sagemaker_jobs import CHANNELS, REGISTRY_METADATA, SETTINGS_FILE

JOBS_SCRIPT = Path(__file__).with_name("sagemaker_jobs.py")
SKLEARN_VERSION = "1.4-2-py312"  # Python 3.12 in the container, as in the Lambdas
PROCESSING_INSTANCE = "ml.m5.large"
TRAINING_INSTANCE = "ml.c5.2xlarge"  # DeepAR trains on CPU or GPU; CPU is cheaper for one short series
TRANSFORM_INSTANCE = "ml.m5.large"
STEP_NAMES = ("Prepare", "Train", "CreateModel", "Forecast", "Evaluate", "QualityGate", "Register", "GateFailed")
PROCESSING = "/opt/ml/processing"


@dataclass(frozen=True)
class PipelineConfig:
    """What the stacks decided (their outputs) and the code bundle's key: fixed infrastructure, not settings."""

    prefix: str
    region: str
    pipeline_name: str
    role_arn: str
    artifacts_uri: str  # s3://bucket/model-build
    model_package_group: str
    feature_group: str
    athena_workgroup: str
    bundle_uri: str  # s3://bucket/code/jobs-<sha>.zip
    kms_key_arn: str | None = None

    @classmethod
    def from_outputs(cls, prefix: str, region: str, model_build: dict, ingestion: dict, bundle_uri: str):
        return cls(prefix, region, model_build["PipelineName"], model_build["PipelineRoleArn"],
                   model_build["ArtifactsS3Uri"], model_build["ModelPackageGroupName"], ingestion["FeatureGroupName"],
                   ingestion["AthenaWorkGroup"], bundle_uri, ingestion.get("KmsKeyArn"))


def settings_parameter(settings: BuildSettings | None) -> str:
    """The ``BuildSettings`` parameter for an execution: ``{}`` lets Prepare take SSM's hyperparameters."""
    return "{}" if settings is None else json.dumps(settings.to_parameters(), default=str)


def build_pipeline(config: PipelineConfig, session):
    """The pipeline, ready to ``upsert`` or ``definition()``. ``session``: a PipelineSession whose default bucket is
    the artifacts bucket (the SDK uploads the job script there; the role may read nowhere else)."""
    os.environ.setdefault("AWS_DEFAULT_REGION", config.region)  # importing sagemaker.serve makes a client at once
    from sagemaker.core import image_uris
    from sagemaker.core.model_metrics import MetricsSource, ModelMetrics
    from sagemaker.core.processing import ScriptProcessor
    from sagemaker.core.shapes import ProcessingInput, ProcessingOutput, ProcessingS3Input, ProcessingS3Output
    from sagemaker.core.training.configs import Compute, InputData
    from sagemaker.core.transformer import Transformer
    from sagemaker.core.workflow.conditions import ConditionLessThanOrEqualTo
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.functions import Join, JsonGet
    from sagemaker.core.workflow.parameters import ParameterString
    from sagemaker.core.workflow.properties import PropertyFile
    from sagemaker.mlops.workflow.condition_step import ConditionStep
    from sagemaker.mlops.workflow.fail_step import FailStep
    from sagemaker.mlops.workflow.model_step import ModelStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import ProcessingStep, TrainingStep, TransformStep
    from sagemaker.serve.model_builder import ModelBuilder
    from sagemaker.train import ModelTrainer

    build_settings = ParameterString(name="BuildSettings", default_value="{}")
    run_dir = Join(on="/", values=[config.artifacts_uri, ExecutionVariables.PIPELINE_EXECUTION_ID])

    def at(*parts: str):
        return Join(on="/", values=[run_dir, *parts])

    def s3_input(name: str, uri, local: str):
        return ProcessingInput(input_name=name, s3_input=ProcessingS3Input(
            s3_uri=uri, local_path=f"{PROCESSING}/input/{local}", s3_data_type="S3Prefix", s3_input_mode="File"))

    def s3_output(name: str, uri, local: str):
        return ProcessingOutput(output_name=name, s3_output=ProcessingS3Output(
            s3_uri=uri, local_path=f"{PROCESSING}/output/{local}", s3_upload_mode="EndOfJob"))

    processor = ScriptProcessor(
        role=config.role_arn, command=["python3"], instance_type=PROCESSING_INSTANCE, instance_count=1,
        image_uri=image_uris.retrieve("sklearn", config.region, version=SKLEARN_VERSION,
                                      instance_type=PROCESSING_INSTANCE),
        base_job_name=f"{config.prefix}-model-build", sagemaker_session=session,
        volume_kms_key=config.kms_key_arn, output_kms_key=config.kms_key_arn)
    bundle = s3_input("bundle", config.bundle_uri, "bundle")
    region_args = ["--prefix", config.prefix, "--region", config.region]

    # ---- Prepare: extract from the offline store (Athena), check, split; DeepAR's channels
    settings_file = PropertyFile(name="Settings", output_name="settings", path=SETTINGS_FILE)
    prepare_outputs = [s3_output(channel, at("prepare", channel), channel) for channel in (*CHANNELS, "data",
                                                                                           "settings")]
    prepare = ProcessingStep(name="Prepare", property_files=[settings_file], step_args=processor.run(
        code=str(JOBS_SCRIPT), inputs=[bundle], outputs=prepare_outputs,
        arguments=["prepare", *region_args, "--feature-group", config.feature_group,
                   "--athena-workgroup", config.athena_workgroup, "--settings", build_settings]))

    def prepared(output: str):
        return prepare.properties.ProcessingOutputConfig.Outputs[output].S3Output.S3Uri

    # ---- Train: the built-in DeepAR, its hyperparameters read from settings.json when the step starts
    deepar_image = image_uris.retrieve("forecasting-deepar", config.region)
    hyperparameter_names = BuildSettings().hyperparameters.sagemaker()
    trainer = ModelTrainer(
        training_image=deepar_image, role=config.role_arn, sagemaker_session=session,
        compute=Compute(instance_type=TRAINING_INSTANCE, instance_count=1),
        base_job_name=f"{config.prefix}-deepar", output_data_config=_output_config(at("model"), config.kms_key_arn),
        hyperparameters={name: JsonGet(step_name=prepare.name, property_file=settings_file,
                                       json_path=f"sagemaker_hyperparameters.{name}")
                         for name in hyperparameter_names})
    train = TrainingStep(name="Train", step_args=trainer.train(input_data_config=[
        InputData(channel_name="train", data_source=prepared("train"), content_type="application/jsonlines"),
        InputData(channel_name="test", data_source=prepared("test"), content_type="application/jsonlines")]))

    # ---- CreateModel, then Forecast: a batch transform over the test windows' histories
    model = ModelBuilder(s3_model_data_url=train.properties.ModelArtifacts.S3ModelArtifacts, image_uri=deepar_image,
                         role_arn=config.role_arn, sagemaker_session=session)
    create_model = ModelStep(name="CreateModel", step_args=model.build())
    transformer = Transformer(
        model_name=create_model.properties.ModelName, instance_count=1, instance_type=TRANSFORM_INSTANCE,
        strategy="MultiRecord", assemble_with="Line", accept="application/jsonlines", output_path=at("transform"),
        env={"DEEPAR_INFERENCE_CONFIG": JsonGet(step_name=prepare.name, property_file=settings_file,
                                                json_path="inference_config")},
        output_kms_key=config.kms_key_arn, sagemaker_session=session, base_transform_job_name=f"{config.prefix}-fc")
    forecast = TransformStep(name="Forecast", step_args=transformer.transform(
        data=prepared("forecast"), content_type="application/jsonlines", split_type="Line"))

    # ---- Evaluate: baselines, wQL, the gate's decision with SSM's threshold and margin now
    evaluation_file = PropertyFile(name="Evaluation", output_name="evaluation", path=EVALUATION_FILE)
    gate_file = PropertyFile(name="Gate", output_name="evaluation", path=GATE_FILE)
    evaluate = ProcessingStep(name="Evaluate", property_files=[evaluation_file, gate_file], step_args=processor.run(
        code=str(JOBS_SCRIPT), arguments=["evaluate", *region_args],
        inputs=[bundle, s3_input("settings", prepared("settings"), "settings"),
                s3_input("data", prepared("data"), "data"),
                s3_input("transform", forecast.properties.TransformOutput.S3OutputPath, "transform")],
        outputs=[s3_output("evaluation", at("evaluation"), "evaluation")]))

    def gate(path: str):
        return JsonGet(step_name=evaluate.name, property_file=gate_file, json_path=path)

    # ---- Register (PendingManualApproval, evaluation.json as its metrics) or fail with both numbers
    register = ModelStep(name="Register", step_args=model.register(
        model_package_group_name=config.model_package_group, approval_status="PendingManualApproval",
        content_types=["application/json"], response_types=["application/json"],
        inference_instances=["ml.m5.large"], transform_instances=[TRANSFORM_INSTANCE],
        description="DeepAR forecasting avg_fee 30 minutes ahead; passed the quality gate (see its metadata)",
        model_metrics=ModelMetrics(model_statistics=MetricsSource(
            content_type="application/json", s3_uri=at("evaluation", EVALUATION_FILE))),
        customer_metadata_properties={"pipeline_execution_id": ExecutionVariables.PIPELINE_EXECUTION_ID,
                                      **{key: gate(f"registry.{key}") for key in REGISTRY_METADATA}}))
    failed = FailStep(name="GateFailed", error_message=Join(on="", values=[
        "quality gate failed: mean wQL ", gate("score"), " against the threshold ", gate("threshold"),
        ", and against the best baseline's ", gate("best_baseline_score"), " x (1 + margin ", gate("margin"),
        ") = ", gate("baseline_bound"), ". ", gate("advice")]))
    quality_gate = ConditionStep(
        name="QualityGate", if_steps=[register], else_steps=[failed],
        conditions=[ConditionLessThanOrEqualTo(left=gate("score"), right=gate("threshold")),
                    ConditionLessThanOrEqualTo(left=gate("score"), right=gate("baseline_bound"))])

    return Pipeline(name=config.pipeline_name, parameters=[build_settings], sagemaker_session=session,
                    steps=[prepare, train, create_model, forecast, evaluate, quality_gate])


def _output_config(uri, kms_key_arn: str | None):
    from sagemaker.core.shapes import OutputDataConfig

    return OutputDataConfig(s3_output_path=uri, **({"kms_key_id": kms_key_arn} if kms_key_arn else {}))
