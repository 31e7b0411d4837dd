"""Monitoring commands: monitor start|stop|status|run-now, alarms; serve-monitor and retrain (what the monitor
and an alarm's action run in the background)."""
from __future__ import annotations

from helpers.cli.common import emit, workshop


def add_commands(commands) -> None:
    monitor = commands.add_parser("monitor", help="start, stop or show the hourly monitor; `monitor run-now` scores "
                                                  "every matured hour now")
    monitor.add_argument("action", choices=["start", "stop", "status", "run-now"])
    monitor.add_argument("--auto-approve", action="store_true",
                         help="a retrained model goes on through staging to production by itself")
    monitor.set_defaults(run=_monitor)
    commands.add_parser("alarms", help="the alarms' state and their history of transitions").set_defaults(
        run=_alarms)

    commands.add_parser("serve-monitor").set_defaults(run=_serve_monitor)
    retrain = commands.add_parser("retrain")
    retrain.add_argument("retrain_id", type=int)
    retrain.set_defaults(run=_retrain)


def _monitor(args) -> None:
    monitor = workshop(args).monitor
    if args.action == "start":
        emit(monitor.start(**({"auto_approve": True} if args.auto_approve else {})))
    elif args.action == "stop":
        monitor.stop()
    elif args.action == "status":
        emit(monitor.status())
    else:
        emit(monitor.run_now())


def _alarms(args) -> None:
    import pandas as pd

    monitor = workshop(args).monitor
    pd.set_option("display.width", 200, "display.max_colwidth", 120)
    emit(monitor.status().alarms)
    print(monitor.alarm_history().to_string(index=False))


def _serve_monitor(args) -> None:
    from helpers.monitoring import monitor

    monitor.serve(args.state_dir)


def _retrain(args) -> None:
    from helpers.monitoring import retrain

    retrain.stop_on_sigterm()
    print(retrain.run(args.state_dir, args.retrain_id))
