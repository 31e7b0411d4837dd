"""Model build commands: train, runs, param."""
from __future__ import annotations

import pandas as pd

from helpers.cli.common import emit, workshop
from helpers.core.hyperparameters import DeepARHyperparameters
from helpers.core.preparation import BuildSettings


def add_commands(commands) -> None:
    train = commands.add_parser("train", help="run the model build pipeline (extract, train, evaluate, gate, "
                                              "register) on the latest data")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--seed", type=int, default=42)
    train.set_defaults(run=_train)

    runs = commands.add_parser("runs", help="list pipeline executions; `runs ID` shows one's steps and outputs")
    runs.add_argument("execution_id", nargs="?")
    runs.set_defaults(run=_runs)

    param = commands.add_parser("param", help="get, set or show the history of a parameter (the quality gate's "
                                              "threshold, ...)")
    param.add_argument("action", choices=["get", "set", "history"])
    param.add_argument("name")
    param.add_argument("value", nargs="?")
    param.set_defaults(run=_param)


def _train(args) -> int:

    settings = BuildSettings(hyperparameters=DeepARHyperparameters(epochs=args.epochs),
                                         seed=args.seed)
    built = workshop(args).builds.run(settings)
    print(f"{built.execution_id}: {built.status}" + (f" ({built.failure_reason})" if built.failure_reason else ""))
    return 0 if built.status in ("Succeeded", "FailedQualityGate") else 1


def _runs(args) -> None:
    builds = workshop(args).builds
    pd.set_option("display.width", 160)
    if args.execution_id is None:
        print(builds.list().to_string(index=False))
        return
    built = builds.report(args.execution_id)
    print(f"{built.execution_id}: {built.status}  {built.failure_reason or ''}")
    print(built.steps[["name", "status", "seconds"]].to_string(index=False))
    emit(built.outputs)


def _param(args) -> None:
    parameters = workshop(args).parameters
    if args.action == "set":
        if args.value is None:
            raise ValueError("param set needs a value: python -m helpers param set NAME VALUE")
        print(f"{args.name} = {args.value} (version {parameters.put(args.name, args.value, by='cli')})")
    elif args.action == "history":
        print(pd.DataFrame(parameters.history(args.name)).to_string(index=False))
    else:
        print(parameters.get(args.name))
