"""The embedded engine against the distributed one a user would move to: the local engine and the Managed Flink
job (PyFlink, local mode), in one run, on the same 7-day event file (about 3.5 M transactions; with the poller's
duplicates, late and very late copies, 4.6 M events). Dedupe is on in both; each is timed from the file to its
outputs, start-up included; their outputs are compared minute by minute.

The job runs without checkpoints here: in local mode Flink keeps checkpoints in the JobManager's memory (5 MB at
most), which the week's dedupe state outgrows, and the end of the input commits the output files anyway. That only
spares Flink work, so the ratio is conservative.
"""
from __future__ import annotations

import binascii
import tempfile
import time
from pathlib import Path

import numpy as np
from pyarrow import json as pa_json

from bench.common import Record
from bench.ingest import WEEK_START
from helpers.core.aggregator import Aggregator
from helpers.core.events import EVENT_DTYPE
from helpers.ingestion.flink_local import compare_minute_by_minute, run_flink_job, write_events_file
from helpers.ingestion.sources.simulator import SimulatorConfig, TransactionModel

CACHE = Path(__file__).resolve().parents[1] / "build" / "bench"
SEED = 42
DAYS = 7.0
BATCH = 2_000  # events per call of the local engine: about what one log record holds during a backfill
FLINK_TIMEOUT_S = 3600


def event_file(days: float = DAYS, seed: int = SEED) -> Path:
    """The week's deliveries in arrival order, hour by hour; generated once (a pure function of seed and week)."""
    path = CACHE / f"flink-events-{seed}-{WEEK_START}-{days:g}d.jsonl"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        model, end = TransactionModel(SimulatorConfig(seed=seed)), WEEK_START + int(days * 86400)
        events = np.concatenate([model.deliveries(t0, min(t0 + 3600, end)) for t0 in range(WEEK_START, end, 3600)])
        write_events_file(path.with_suffix(".tmp"), events[events["time"] >= WEEK_START]).rename(path)
    return path


def read_events(path: Path) -> np.ndarray:
    """The event file as the core's events array, in arrival order."""
    table = pa_json.read_json(path)
    events = np.zeros(table.num_rows, dtype=EVENT_DTYPE)
    hashes = "".join(table.column("hash").to_pylist())
    events["hash"] = np.frombuffer(binascii.unhexlify(hashes), dtype=np.uint8).reshape(-1, 32)
    for column in ("time", "fee", "size", "weight"):
        events[column] = table.column(column).to_numpy()
    return events


def local_engine(path: Path) -> tuple[list[dict], list[tuple], Aggregator, dict]:
    started = time.perf_counter()
    events, aggregator, records, letters = read_events(path), Aggregator(), [], []
    parsed = time.perf_counter()
    for start in range(0, len(events), BATCH):
        emitted, dead = aggregator.process(events[start:start + BATCH])
        records += emitted
        letters += dead
    done = time.perf_counter()
    return records, letters, aggregator, {"wall_s": done - started, "read_s": parsed - started,
                                          "process_s": done - parsed}


def run() -> list[Record]:
    path = event_file()
    records, letters, aggregator, local_times = local_engine(path)
    counters = aggregator.state.counters
    unique = counters.events_in - counters.duplicates_dropped
    shared = {"unique_transactions": unique, "events": counters.events_in, "duplicates": counters.duplicates_dropped,
              "revisions_emitted": counters.revisions_emitted, "dead_letters": counters.dead_lettered,
              "events_file": str(path)}
    local = Record("flink.local_engine_throughput", unique / local_times["wall_s"], "tx/s", "info",
                   {**shared, **local_times, "batch": BATCH})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            features, dead = run_flink_job(path, Path(tmp), timeout_s=FLINK_TIMEOUT_S, checkpoint_interval_ms=None)
            flink_s = time.perf_counter() - started
    except Exception as error:  # the local engine's figure still counts
        return [local, Record.failure("flink.pyflink_throughput", f"{type(error).__name__}: {error}"[-3000:])]
    result = compare_minute_by_minute(records, letters, features, dead)
    return [
        local,
        Record("flink.pyflink_throughput", unique / flink_s, "tx/s", "info",
               {**shared, "wall_s": flink_s, "checkpoints": "off", "parallelism": 1}),
        Record("flink.local_over_pyflink", flink_s / local_times["wall_s"], "x", ">= 2",
               {"local_wall_s": local_times["wall_s"], "pyflink_wall_s": flink_s}),
        Record("flink.outputs_equal", float(result.equal), "bool", ">= 1",
               {"differences": result.differences, "minutes": result.minutes, "revisions": result.revisions,
                "dead_letters": result.dead_letters}),
    ]
