"""Commands for every local service at once: stop, reset, cleanup; and demo, every notebook headless."""
from __future__ import annotations

from pathlib import Path


def add_commands(commands) -> None:
    commands.add_parser("stop", help="stop every local service cleanly: monitor, retrain, endpoints, the stream (it "
                                     "checkpoints first)").set_defaults(run=_stop)
    commands.add_parser("reset", help="stop every local service and delete the local stream, features, models and "
                                      "endpoints").set_defaults(run=_reset)
    cleanup = commands.add_parser("cleanup", help="delete everything the workshop made here (the services, the state "
                                                  "directory) after asking, then list what is left (exit 1: not "
                                                  "clean)")
    cleanup.add_argument("--yes", action="store_true", help="delete without asking (headless)")
    cleanup.set_defaults(run=_cleanup)
    demo = commands.add_parser("demo", help="run the notebooks headless in local mode (what `make demo` does)")
    demo.add_argument("notebooks", nargs="+", type=Path)
    demo.add_argument("--out", type=Path, default=Path("build/notebooks"))
    demo.set_defaults(run=_demo)


def _stop(args) -> int:
    from helpers.cli.common import workshop

    still = workshop(args).teardown().still_running
    print("every local service stopped" if not still else f"still running: {still}")
    return 1 if still else 0


def _reset(args) -> None:
    from helpers.local import services

    services.reset(args.state_dir)


def _cleanup(args) -> int:
    from helpers.cli.common import clean_up, workshop

    return clean_up(workshop(args), args.yes)


def _demo(args) -> None:
    from helpers.notebooks import demo

    demo(args.notebooks, args.out)
