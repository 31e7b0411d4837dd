"""AWS commands: ``python -m helpers aws package | deploy | status | redrive | stop | build | report | builds |
cleanup``.

The same steps notebook 01 takes with ``backend="aws"``, for a facilitator's terminal or a learner whose kernel
cannot build the code packages.
"""
from __future__ import annotations

from pathlib import Path

from helpers.cli.common import clean_up, emit


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
    build = aws.add_parser("build", help="deploy the model-build stack, define the SageMaker Pipeline from this "
                                         "checkout and start an execution (the hyperparameters in SSM)")
    build.add_argument("--wait", action="store_true", help="wait for it (about 30 minutes) and print its report")
    build.set_defaults(run=_build)
    report = aws.add_parser("report", help="a model build's steps, quality gate and comparison with the baselines")
    report.add_argument("execution_id", help="its id or ARN (python -m helpers aws builds lists them)")
    report.set_defaults(run=lambda args: _print_report(_builds(args).report(args.execution_id)))
    aws.add_parser("builds", help="the latest model-build executions, newest first").set_defaults(
        run=lambda args: print(_builds(args).list().to_string(index=False)))
    cleanup = aws.add_parser("cleanup", help="delete everything the workshop made on AWS (found by its tags and its "
                                             "stacks) after asking, then list what is left (exit 1: not clean)")
    cleanup.add_argument("--yes", action="store_true", help="delete without asking (headless)")
    cleanup.set_defaults(run=lambda args: clean_up(_backend(args), args.yes))


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


def _backend(args):
    from helpers.connect import AwsBackend

    options = {k: v for k, v in (("prefix", args.prefix), ("region", args.region), ("profile", args.profile)) if v}
    return AwsBackend(**options)


def _builds(args):
    return _backend(args).builds()


def _build(args) -> None:
    builds = _builds(args)
    if args.wait:
        _print_report(builds.run())
    else:
        arn = builds.start()
        print(f"started {arn}\nfollow it in SageMaker Studio (Pipelines) or: python -m helpers aws report "
              f"{arn.rsplit('/', 1)[1]}")


def _print_report(report) -> None:
    print(f"execution {report.execution_id}: {report.status}")
    print(report.steps[["name", "status", "seconds"]].to_string(index=False))
    print(report.gate_report())
    if report.evaluation:
        print(report.comparison().round(4).to_string())
