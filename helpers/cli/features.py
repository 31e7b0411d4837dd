"""Feature store commands: compact."""
from __future__ import annotations

from helpers.cli.common import emit, workshop


def add_commands(commands) -> None:
    compact = commands.add_parser("compact", help="merge the offline store's small Parquet files (the stream also "
                                                  "does it every minute)")
    compact.set_defaults(run=lambda args: emit(workshop(args).features.compact()))
