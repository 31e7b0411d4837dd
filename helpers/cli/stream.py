"""Stream commands: start, status, dead-letters, backfill, drift, speed; serve-ingest (what ``start`` runs)."""
from __future__ import annotations

from helpers.cli.common import emit, workshop
from helpers.ingestion import ingest


def add_commands(commands) -> None:
    start = commands.add_parser("start", help="start the ingestion service in the background (simulator by default)")
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
    start.set_defaults(run=_start)

    commands.add_parser("status", help="the ingestion service's health and counters").set_defaults(run=_status)
    letters = commands.add_parser("dead-letters", help="the newest events later than the allowed lateness (kept, "
                                                       "not counted)")
    letters.add_argument("--limit", type=int, default=20)
    letters.set_defaults(run=lambda args: print(workshop(args).stream.dead_letters(args.limit).to_string(index=False)))

    backfill = commands.add_parser("backfill", help="simulate history into the feature store, in the foreground")
    backfill.add_argument("--days", type=float, default=7.0)
    backfill.add_argument("--seed", type=int, default=42)
    backfill.add_argument("--now", help="simulate up to this instant, ISO-8601 UTC (default: the wall clock)")
    backfill.set_defaults(run=lambda args: emit(ingest.backfill(args.state_dir, days=args.days, seed=args.seed,
                                                                now=args.now)))

    drift = commands.add_parser("drift", help="multiply the running simulator's fees from now on (the retrain demo)")
    drift.add_argument("--fee-factor", type=float, default=3.0)
    drift.set_defaults(run=lambda args: emit(workshop(args).stream.inject_drift(fee_factor=args.fee_factor)))

    speed = commands.add_parser("speed", help="change how fast simulated time runs (60: an hour a minute)")
    speed.add_argument("speed", type=float, help="simulated seconds per wall second")
    speed.set_defaults(run=lambda args: emit(workshop(args).stream.set_speed(args.speed)))

    commands.add_parser("serve-ingest").set_defaults(run=lambda args: ingest.serve(args.state_dir))


def _start(args) -> None:
    settings = {"source": args.source, "backfill_days": args.days, "speed": args.speed, "seed": args.seed,
                "now": args.now, "url": args.url, "interval_s": args.interval, "record_to": args.record_to,
                "replay_file": args.replay_file}
    emit(workshop(args).stream.start(**settings).detail)


def _status(args) -> int:
    current = workshop(args).stream.status()
    emit(current.detail)
    return 0 if current.running else 3
