"""The raw transaction event: its columnar layout, validation and hash keys.

Every source turns what it receives into one numpy structured array per batch
(``EVENT_DTYPE``). Columnar batches keep the hot path vectorised: a 7-day
backfill is millions of events, too many for a dict per transaction.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

# hash: the 32 bytes of the transaction id; time: first seen, unix seconds (event
# time); fee in satoshi; size in bytes; weight in weight units (WU).
EVENT_DTYPE = np.dtype(
    [("hash", "u1", (32,)), ("time", "<i8"), ("fee", "<i8"), ("size", "<i8"), ("weight", "<i8")]
)

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
GENESIS_TIME = 1231006505  # 2009-01-03, the first Bitcoin block
MAX_CLOCK_SKEW_S = 2 * 3600  # a first-seen time further ahead than this is a broken clock


@dataclass
class EventBatch:
    """One delivery from a source: validated events plus what was rejected."""

    events: np.ndarray
    fetched_at: float  # unix seconds on the source's clock (the simulated one for the simulator)
    malformed: Counter = field(default_factory=Counter)  # reason -> count, e.g. "fee: not an integer"
    source_pos: str | None = None  # where the source can resume after this batch, if it can

    def __len__(self) -> int:
        return len(self.events)


def empty_events() -> np.ndarray:
    return np.zeros(0, dtype=EVENT_DTYPE)


HASH_KEY_DTYPE = np.dtype("V32")


def hash_keys(events: np.ndarray) -> np.ndarray:
    """Dedupe keys: the whole 32-byte transaction hash, as one sortable value per event.

    Never a prefix: replays, test vectors and hostile sources send distinct
    hashes that share long prefixes, and a prefix key would drop them as duplicates.
    """
    return np.ascontiguousarray(events["hash"]).view(HASH_KEY_DTYPE).ravel()


def hash_hex(events: np.ndarray) -> list[str]:
    return [row.tobytes().hex() for row in events["hash"]]


def _int_field(tx: dict, name: str, minimum: int) -> int | str:
    """The field as an int, or the reason it is not one."""
    value = tx.get(name)
    if value is None:
        return f"{name}: missing"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name}: not an integer"
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return f"{name}: not an integer"
    if value < minimum:
        return f"{name}: below {minimum}"
    return int(value)


def _validate_one(tx, now: float | None) -> tuple | str:
    if not isinstance(tx, dict):
        return "transaction: not an object"
    tx_hash = tx.get("hash")
    if not isinstance(tx_hash, str) or not _HEX64.match(tx_hash):
        return "hash: not 64 hex characters"
    values = []
    for name, minimum in (("time", GENESIS_TIME), ("fee", 0), ("size", 1), ("weight", 1)):
        value = _int_field(tx, name, minimum)
        if isinstance(value, str):
            return value
        values.append(value)
    time, _fee, size, weight = values
    if now is not None and time > now + MAX_CLOCK_SKEW_S:
        return "time: in the future"
    # weight = 3 x base size + total size, and base size <= total size
    if not size <= weight <= 4 * size:
        return "weight: not between size and 4 x size"
    return (bytes.fromhex(tx_hash), *values)


def validate_transactions(txs, now: float | None = None) -> tuple[np.ndarray, Counter]:
    """Validate raw API transactions into an event array; count the rejects by reason.

    ``now`` (unix seconds) bounds how far in the future a first-seen time may be.
    Malformed transactions are skipped, never raised: one bad row must not stop a stream.
    """
    malformed: Counter = Counter()
    if not isinstance(txs, list):
        malformed["txs: not a list"] += 1
        return empty_events(), malformed
    rows = []
    for tx in txs:
        result = _validate_one(tx, now)
        if isinstance(result, str):
            malformed[result] += 1
        else:
            rows.append(result)
    events = np.zeros(len(rows), dtype=EVENT_DTYPE)
    if rows:
        hashes, times, fees, sizes, weights = zip(*rows)
        events["hash"] = np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(-1, 32)
        events["time"], events["fee"] = times, fees
        events["size"], events["weight"] = sizes, weights
    return events, malformed


def vsize(events: np.ndarray) -> np.ndarray:
    """Virtual size in vbytes: weight / 4 rounded up, as Bitcoin Core defines it."""
    return (events["weight"] + 3) // 4


def events_frame(events: np.ndarray):
    """Events as a readable DataFrame: hex hash, UTC time, fee, size, weight, vsize."""
    import pandas as pd

    return pd.DataFrame({
        "hash": hash_hex(events),
        "time": pd.to_datetime(events["time"], unit="s", utc=True),
        "fee": events["fee"], "size": events["size"], "weight": events["weight"], "vsize": vsize(events),
    })
