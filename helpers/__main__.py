"""Command line for facilitators: ``python -m helpers <command>``.

  start      start the local ingestion service in the background (simulator by default)
  stop       stop every local service cleanly: monitor, retrain, endpoints, the stream (it checkpoints first)
  status     print its health and counters
  dead-letters  the newest events that arrived later than the allowed lateness (kept, not counted)
  backfill   fill the feature store with simulated history, in the foreground
  compact    merge the offline store's small Parquet files (the service also does it every minute)
  reset      stop every local service and delete the local stream, features, models and endpoints
  drift      make the running simulator's fees jump, for the retraining demo
  train      run the model build pipeline (extract, train, evaluate, gate, register)
  runs       list pipeline executions; `runs ID` shows one execution's steps and metrics
  models     list registered model versions with their approval status
  param      get or set a parameter (the quality gate's threshold, ...)
  mlflow-ui  open the MLflow UI on the local registry
  approve    approve a model version: updates the threshold, deploys it to staging, smoke-tests it
  reject     reject a model version
  promote    deploy the version staging serves to production (only if Approved, InService and smoke-tested)
  deploy     deploy an Approved version to an endpoint (prod goes through the promotion guard)
  rollback   swap an endpoint back to its previous version
  describe   describe the staging and production endpoints
  speed      change how fast simulated time runs (60: an hour a minute)
  monitor    start, stop or show the hourly monitor; `monitor run-now` evaluates every matured hour now
  alarms     show the alarms' state and their history of transitions
  demo       run every notebook headless in local mode (what `make demo` does)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from helpers import ingest


def _print(status: dict) -> None:
    print(json.dumps(status, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", help="state directory (default: $MLOPS_STATE_DIR or .state/)")
    commands = parser.add_subparsers(dest="command", required=True)

    start = commands.add_parser("start", help="start the ingestion service in the background")
    start.add_argument("--source", choices=ingest.SOURCES, default="simulator")
    start.add_argument("--days", type=float, default=7.0, help="simulator: days of history to backfill first")
    start.add_argument("--speed", type=float, default=60.0, help="simulator: simulated seconds per second, once live")
    start.add_argument("--seed", type=int, default=42)
    start.add_argument("--now", help="simulator: the simulated 'now' to start at, ISO-8601 UTC such as "
                                     "2026-11-30T12:00:00Z (default: the wall clock); pins the data for a rerun")
    start.add_argument("--url", help="blockchain: the API's URL, e.g. a proxy or a mirror (default: blockchain.com)")
    start.add_argument("--interval", type=float, default=15.0, help="blockchain: seconds between polls")
    start.add_argument("--record-to", help="blockchain: record raw API responses to this file, for replay")
    start.add_argument("--replay-file", help="replay: a recording made with --record-to")
    commands.add_parser("stop", help="stop the ingestion service")
    commands.add_parser("status", help="print the ingestion service's status")
    letters = commands.add_parser("dead-letters", help="the newest events that came later than the allowed lateness")
    letters.add_argument("--limit", type=int, default=20)
    backfill = commands.add_parser("backfill", help="simulate history into the feature store, in the foreground")
    backfill.add_argument("--days", type=float, default=7.0)
    backfill.add_argument("--seed", type=int, default=42)
    backfill.add_argument("--now", help="simulate up to this instant, ISO-8601 UTC (default: the wall clock)")
    commands.add_parser("compact", help="merge the offline store's small files")
    commands.add_parser("reset", help="stop everything and delete the local state")
    drift = commands.add_parser("drift", help="multiply the simulator's fees from now on")
    drift.add_argument("--fee-factor", type=float, default=3.0)
    train = commands.add_parser("train", help="run the model build pipeline on the latest data")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--seed", type=int, default=42)
    runs = commands.add_parser("runs", help="list pipeline executions, or show one")
    runs.add_argument("execution_id", nargs="?")
    commands.add_parser("models", help="list registered model versions")
    param = commands.add_parser("param", help="get or set a parameter")
    param.add_argument("action", choices=["get", "set", "history"])
    param.add_argument("name")
    param.add_argument("value", nargs="?")
    ui = commands.add_parser("mlflow-ui", help="open the MLflow UI on the local registry")
    ui.add_argument("--port", type=int, default=5000)
    for verb in ("approve", "reject", "promote"):
        decision = commands.add_parser(verb, help=f"{verb} a model version")
        decision.add_argument("version", type=int, nargs="?",
                              help="default: the latest pending one (to promote: the one staging serves)")
        decision.add_argument("--by", required=True, help="who decides")
        decision.add_argument("--reason", required=True, help="why")
    deploy_cmd = commands.add_parser("deploy", help="deploy an Approved version to an endpoint")
    deploy_cmd.add_argument("endpoint", choices=["staging", "prod"])
    deploy_cmd.add_argument("version", type=int)
    rollback_cmd = commands.add_parser("rollback", help="swap an endpoint back to its previous version")
    rollback_cmd.add_argument("endpoint", choices=["staging", "prod"])
    commands.add_parser("describe", help="describe the endpoints")
    speed = commands.add_parser("speed", help="change how fast simulated time runs")
    speed.add_argument("speed", type=float, help="simulated seconds per wall second")
    monitor_cmd = commands.add_parser("monitor", help="the hourly monitor")
    monitor_cmd.add_argument("action", choices=["start", "stop", "status", "run-now"])
    monitor_cmd.add_argument("--auto-approve", action="store_true",
                             help="a retrained model goes on through staging to production by itself")
    commands.add_parser("alarms", help="the alarms' state and history")
    commands.add_parser("serve-monitor")  # what `monitor start` runs in the background
    retrain_cmd = commands.add_parser("retrain")  # what an alarm's action runs in the background
    retrain_cmd.add_argument("retrain_id", type=int)
    serve_endpoint = commands.add_parser("serve-endpoint")  # what deploy starts in the background
    serve_endpoint.add_argument("endpoint", choices=["staging", "prod"])
    demo = commands.add_parser("demo", help="run the notebooks headless in local mode")
    demo.add_argument("notebooks", nargs="+", type=Path)
    demo.add_argument("--out", type=Path, default=Path("build/notebooks"))
    commands.add_parser("serve-ingest")  # what `start` runs in the background

    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            settings = {"source": args.source, "backfill_days": args.days, "speed": args.speed, "seed": args.seed,
                        "now": args.now, "url": args.url, "interval_s": args.interval, "record_to": args.record_to,
                        "replay_file": args.replay_file}
            _print(ingest.start(args.state_dir, **settings))
        elif args.command == "stop":
            from helpers import services

            still = services.stop_all(args.state_dir)
            print("every local service stopped" if not still else f"still running: {still}")
            return 1 if still else 0
        elif args.command == "status":
            current = ingest.status(args.state_dir)
            _print(current)
            return 0 if current["running"] else 3
        elif args.command == "dead-letters":
            print(ingest.dead_letters(args.state_dir, args.limit).to_string(index=False))
        elif args.command == "backfill":
            _print(ingest.backfill(args.state_dir, days=args.days, seed=args.seed, now=args.now))
        elif args.command == "compact":
            from helpers.config import Paths
            from helpers.feature_store import open_tx_per_minute

            _print(open_tx_per_minute(Paths.at(args.state_dir).feature_store).compact())
        elif args.command == "reset":
            from helpers import services

            services.reset(args.state_dir)
        elif args.command == "drift":
            _print(ingest.inject_drift(args.state_dir, fee_factor=args.fee_factor))
        elif args.command in ("train", "runs", "models", "param", "mlflow-ui"):
            return _model_command(args)
        elif args.command in ("approve", "reject", "promote", "deploy", "rollback", "describe", "serve-endpoint"):
            return _deploy_command(args)
        elif args.command in ("speed", "monitor", "alarms", "serve-monitor", "retrain"):
            return _monitor_command(args)
        elif args.command == "demo":
            from helpers.notebooks import demo as run_demo

            run_demo(args.notebooks, args.out)
        elif args.command == "serve-ingest":
            ingest.serve(args.state_dir)
    except (ValueError, KeyError, RuntimeError, TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _monitor_command(args) -> int:
    from helpers import monitor, retrain

    if args.command == "speed":
        _print(ingest.set_speed(args.state_dir, args.speed))
    elif args.command == "serve-monitor":
        monitor.serve(args.state_dir)
    elif args.command == "retrain":
        retrain.stop_on_sigterm()
        print(retrain.run(args.state_dir, args.retrain_id))
    elif args.command == "alarms":
        import pandas as pd

        from helpers.alarms import open_stores
        from helpers.config import Paths

        pd.set_option("display.width", 200, "display.max_colwidth", 120)
        _print(monitor.status(args.state_dir)["alarms"])
        print(open_stores(Paths.at(args.state_dir).monitoring)[1].history().to_string(index=False))
    elif args.action == "start":
        _print(monitor.start(args.state_dir, **({"auto_approve": True} if args.auto_approve else {})))
    elif args.action == "stop":
        monitor.stop(args.state_dir)
    elif args.action == "status":
        _print(monitor.status(args.state_dir))
    else:
        _print(monitor.run_now(args.state_dir))
    return 0


def _deploy_command(args) -> int:
    from helpers import deploy

    if args.command == "serve-endpoint":
        from helpers import daemon, serving
        from helpers.config import Paths

        paths = Paths.at(args.state_dir)
        with daemon.holding_pid_file(paths.pid_file(f"endpoint-{args.endpoint}"), f"endpoint {args.endpoint!r}"):
            serving.serve(args.endpoint, deploy.ports(paths)[args.endpoint], deploy.state_file(paths, args.endpoint),
                          capture_dir=deploy.capture_dir(paths, args.endpoint))
        return 0
    if args.command in ("approve", "reject", "promote"):
        action = {"approve": deploy.approve, "reject": deploy.reject, "promote": deploy.promote}[args.command]
        _print(action(args.state_dir, args.version, by=args.by, reason=args.reason))
    elif args.command == "deploy":
        _print(deploy.deploy(args.state_dir, args.endpoint, args.version, by="cli"))
    elif args.command == "rollback":
        _print(deploy.rollback(args.state_dir, args.endpoint, by="cli"))
    else:
        _print({name: deploy.describe(args.state_dir, name) for name in deploy.ENDPOINTS})
    return 0


def _model_command(args) -> int:
    """The model commands: they import the training stack, so only when asked."""
    import pandas as pd

    from helpers.config import Paths

    paths = Paths.at(args.state_dir)
    pd.set_option("display.width", 160)
    if args.command == "train":
        from helpers import deepar, model_build

        hp = deepar.DeepARHyperparameters(epochs=args.epochs)
        execution = model_build.run(paths.root, model_build.BuildSettings(hyperparameters=hp, seed=args.seed))
        print(f"{execution.execution_id}: {execution.status}" + (f" ({execution.failure_reason})"
                                                                 if execution.failure_reason else ""))
        return 0 if execution.status in ("Succeeded", "FailedQualityGate") else 1
    if args.command == "runs":
        from helpers.pipeline import ExecutionStore

        store = ExecutionStore(paths.pipelines)
        if args.execution_id is None:
            print(store.list().to_string(index=False))
        else:
            execution = store.get(args.execution_id)
            print(f"{execution.execution_id}: {execution.status}  {execution.failure_reason or ''}")
            print(execution.steps[["name", "status", "seconds"]].to_string(index=False))
            _print(execution.outputs)
        return 0
    if args.command == "models":
        from helpers.registry import ModelRegistry

        print(ModelRegistry(paths.registry).versions().to_string(index=False))
        return 0
    if args.command == "param":
        from helpers.params import ParameterStore

        store = ParameterStore(paths.params)
        if args.action == "set":
            if args.value is None:
                raise ValueError("param set needs a value: python -m helpers param set NAME VALUE")
            print(f"{args.name} = {args.value} (version {store.put(args.name, args.value, by='cli')})")
        elif args.action == "history":
            print(pd.DataFrame(store.history(args.name)).to_string(index=False))
        else:
            print(store.get(args.name))
        return 0
    import subprocess

    from helpers.registry import ModelRegistry

    uri = ModelRegistry(paths.registry).tracking_uri
    print(f"MLflow UI on http://127.0.0.1:{args.port} (Ctrl-C to stop)")
    return subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                            "--host", "127.0.0.1", "--port", str(args.port)])


if __name__ == "__main__":
    sys.exit(main())
