"""Command line for facilitators: ``python -m helpers <command>``, one module per stage.

Each module adds its commands with ``add_commands(commands)``; a command is a function of the parsed arguments
that returns its exit status. Run ``python -m helpers --help`` for the list, ``python -m helpers CMD --help`` for
one command.
"""
from __future__ import annotations

import argparse
import sys

from helpers.cli import aws, builds, endpoints, features, monitor, services, stream

STAGES = (stream, features, builds, endpoints, monitor, services, aws)
# What a command may raise for a mistake of its caller: the message says what to do, without a traceback.
USER_ERRORS = (ValueError, KeyError, RuntimeError, TimeoutError)  # AwsSetupError is a RuntimeError


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m helpers", description=__doc__.splitlines()[0])
    top.add_argument("--state-dir", help="state directory (default: $MLOPS_STATE_DIR or .state/)")
    top.add_argument("--backend", choices=("local", "aws"), default="local",
                     help="where the stage commands act (aws: $MLOPS_AWS_PREFIX, $AWS_DEFAULT_REGION, $AWS_PROFILE)")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES:
        stage.add_commands(commands)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
