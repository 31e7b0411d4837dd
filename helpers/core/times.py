"""UTC instants: unix seconds, aware datetimes and ISO-8601, and the pinned "now" of runs that must not depend on
the hour.

Every timestamp in this project is UTC and timezone-aware. Unix seconds are used on hot paths; they are converted
with these helpers, never with local time.
"""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone

PINNED_NOW_ENV = "MLOPS_PINNED_NOW"


def pinned_now() -> float | None:
    """The simulated "now" pinned by $MLOPS_PINNED_NOW (ISO-8601 UTC), or None: runs that must come out the same at
    any hour (the tests, make demo) set it, and a learner who sets nothing sees the wall clock's market."""
    value = os.environ.get(PINNED_NOW_ENV)
    return as_unix(value, PINNED_NOW_ENV) if value else None


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def from_unix(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def minute_iso(unix_minute_start: float) -> str:
    """'2026-11-22T13:05:00Z': the record identifier of a one-minute window."""
    return from_unix(unix_minute_start).strftime("%Y-%m-%dT%H:%M:%SZ")


def as_unix(value, field: str) -> float:
    """A moment given as unix seconds, an aware datetime/Timestamp or an ISO-8601 string, as unix seconds.

    Raises ValueError naming ``field`` for a naive time or anything unreadable.
    """
    if isinstance(value, bool):
        raise ValueError(f"{field}={value!r}: give a UTC time (ISO-8601 with 'Z', an aware datetime or unix seconds)")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{field}={value!r}: not an ISO-8601 time; write e.g. '2026-11-22T13:05:00Z'") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{field}={value!r} has no time zone: add one, e.g. tzinfo=timezone.utc or a 'Z' suffix")
        return value.timestamp()
    raise ValueError(f"{field}={value!r}: give a UTC time (ISO-8601 with 'Z', an aware datetime or unix seconds)")


def first_now(now: float | str | None = None) -> float:
    """The simulated "now" a first start uses: ``now`` if given, else $MLOPS_PINNED_NOW, else the wall clock."""
    if now is not None:
        return as_unix(now, "now")
    pinned = pinned_now()
    return time.time() if pinned is None else pinned
