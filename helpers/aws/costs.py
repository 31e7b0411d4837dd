"""What the workshop's AWS resources cost while they are up, so a forgotten endpoint cannot go unnoticed:
notebooks 04 and 05 print it (``ws.running_cost()``).

Only what bills by the hour whether used or not is counted (endpoints, the Flink application, the streams);
requests, storage and Lambda are cents a day (README "What it costs"). Prices are us-east-1 list prices at the
time of writing; other regions differ by a few per cent.
"""
from __future__ import annotations

from helpers.aws.session import AwsContext, explained
from helpers.core.costs import RunningCost

ENDPOINT_PRICE_PER_HOUR = {"ml.m5.large": 0.115, "ml.m5.xlarge": 0.23, "ml.m5.2xlarge": 0.461,
                           "ml.c5.large": 0.102, "ml.c5.xlarge": 0.204, "ml.c5.2xlarge": 0.408}
FLINK_KPU_PER_HOUR = 0.11  # and one orchestration KPU per running application
KINESIS_STREAM_PER_HOUR = 0.04  # on-demand, per stream
STAGES = ("staging", "prod")


def running_cost(context: AwsContext) -> RunningCost:
    """What bills by the hour now, found in the account, not assumed."""
    return RunningCost(_endpoints(context) + _flink(context) + _streams(context))


def _endpoints(context: AwsContext) -> list[tuple[str, float | None]]:
    from botocore.exceptions import ClientError

    sagemaker, found = context.client("sagemaker"), []
    for stage in STAGES:
        name = f"{context.prefix}-{stage}"
        try:
            with explained(f"describing the endpoint {name}"):
                endpoint = sagemaker.describe_endpoint(EndpointName=name)
        except ClientError as error:
            if "Could not find" in str(error):
                continue
            raise
        if endpoint["EndpointStatus"] in ("Deleting", "Failed"):
            continue
        config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
        for variant in config["ProductionVariants"]:
            count = variant.get("InitialInstanceCount", 1)
            price = ENDPOINT_PRICE_PER_HOUR.get(variant["InstanceType"])
            found.append((f"endpoint {name} ({count} x {variant['InstanceType']}, {endpoint['EndpointStatus']})",
                          None if price is None else price * count))
    return found


def _flink(context: AwsContext) -> list[tuple[str, float | None]]:
    from botocore.exceptions import ClientError

    name = f"{context.prefix}-aggregator"
    try:
        with explained(f"describing the Flink application {name}"):
            detail = context.client("kinesisanalyticsv2").describe_application(ApplicationName=name)[
                "ApplicationDetail"]
    except ClientError as error:
        if error.response["Error"]["Code"] == "ResourceNotFoundException":
            return []
        raise
    if detail["ApplicationStatus"] not in ("STARTING", "RUNNING", "UPDATING", "AUTOSCALING"):
        return []
    parallelism = detail.get("ApplicationConfigurationDescription", {}).get(
        "FlinkApplicationConfigurationDescription", {}).get("ParallelismConfigurationDescription", {})
    kpus = max(1, parallelism.get("CurrentParallelism", 1) // max(1, parallelism.get("ParallelismPerKPU", 1)))
    return [(f"Flink application {name} ({kpus} KPU + 1 orchestration KPU, {detail['ApplicationStatus']})",
             (kpus + 1) * FLINK_KPU_PER_HOUR)]


def _streams(context: AwsContext) -> list[tuple[str, float | None]]:
    from botocore.exceptions import ClientError

    kinesis, found = context.client("kinesis"), []
    for stream in (f"{context.prefix}-transactions", f"{context.prefix}-features"):
        try:
            with explained(f"describing the stream {stream}"):
                kinesis.describe_stream_summary(StreamName=stream)
        except ClientError as error:
            if error.response["Error"]["Code"] == "ResourceNotFoundException":
                continue
            raise
        found.append((f"Kinesis stream {stream} (on demand)", KINESIS_STREAM_PER_HOUR))
    return found
