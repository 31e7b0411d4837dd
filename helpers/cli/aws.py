"""AWS commands: ``python -m helpers aws package | deploy | status | redrive | stop``.

The same steps notebook 01 takes with ``backend="aws"``, for a facilitator's terminal or a learner whose kernel
cannot build the code packages.
"""
from __future__ import annotations

from pathlib import Path

from helpers.cli.common import emit


def add_commands(commands) -> None:
    top = commands.add_parser("aws", help="the AWS backend: package the code, deploy the stacks, redrive failures")
    top.add_argument("--prefix", help="names every resource (default: $MLOPS_AWS_PREFIX or mlops-workshop)")
    top.add_argument("--region", help="default: the AWS CLI's region ($AWS_DEFAULT_REGION)")
    top.add_argument("--profile")
    aws = top.add_subparsers(dest="aws_command", required=True, metavar="AWS_COMMAND")

    package = aws.add_parser("package", help="build the Lambda and Flink zips and upload them to the storage stack's "
                                             "bucket (deploying that stack first)")
    package.add_argument("--jar", type=Path, help="a Kinesis connector jar downloaded by hand, where this machine "
                                                  "cannot download it")
    package.set_defaults(run=_package)

    deploy = aws.add_parser("deploy", help="deploy both stacks, create the feature group, backfill, start the stream")
    deploy.add_argument("--source", choices=("simulator", "blockchain", "replay"), default="simulator")
    deploy.add_argument("--days", type=float, default=7.0, help="simulator: days of history to backfill")
    deploy.add_argument("--seed", type=int, default=42)
    deploy.add_argument("--replay-file", type=Path)
    deploy.add_argument("--jar", type=Path)
    deploy.set_defaults(run=lambda args: emit(_stream(args).start(
        source=args.source, backfill_days=args.days, seed=args.seed, replay_file=args.replay_file, jar=args.jar)))

    aws.add_parser("status", help="the stream's health on AWS").set_defaults(
        run=lambda args: print(_stream(args).describe().to_string(index=False)))
    aws.add_parser("redrive", help="write again the feature-store batches in the writer's on-failure queue"
                   ).set_defaults(run=_redrive)
    aws.add_parser("stop", help="stop the Flink application and the poller's schedule (deletes nothing)"
                   ).set_defaults(run=lambda args: emit(_stream(args).stop()))


def _context(args):
    from helpers.aws.session import AwsContext

    options = {k: v for k, v in (("prefix", args.prefix), ("region", args.region), ("profile", args.profile)) if v}
    return AwsContext(**options)


def _stream(args):
    from helpers.ingestion.aws import AwsStream

    return AwsStream(_context(args))


def _package(args) -> None:
    from helpers.aws import package, stacks

    context = _context(args)
    storage = stacks.deploy(context, "storage", {"Prefix": context.prefix})
    emit(package.package_and_upload(context, storage.outputs["Bucket"], jar=args.jar))


def _redrive(args) -> None:
    from helpers.feature_store.writer import redrive

    context = _context(args)
    outputs = _stream(args).outputs
    emit(redrive(context.client("sqs"), context.client("kinesis"), context.client("sagemaker-featurestore-runtime"),
                 outputs["WriterDeadLetterQueueUrl"], outputs["FeatureGroupName"]))
