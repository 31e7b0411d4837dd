"""The Managed Flink job in PyFlink's local mode, beside the local engine: an event file in, both outputs compared.

PyFlink lives in its own virtual environment (``make flink-venv``: its pins clash with the main one), so the job runs
as a subprocess of that environment's Python; nothing here imports pyflink. The job reads the event file through a
filesystem source where AWS has Kinesis, and writes JSON-lines files where AWS has the output stream and S3; the job's
code is otherwise the same (:mod:`helpers.ingestion.flink_job`). Used by tests/test_flink_job.py and
``python -m bench flink``.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.core.events import hash_hex
from helpers.ingestion.flink_job import PROPERTY_GROUP

REPO = Path(__file__).resolve().parents[2]
FLINK_PYTHON = REPO / ".venv-flink" / "bin" / "python"
JOB = REPO / "helpers" / "ingestion" / "flink_job.py"
AVG_TOLERANCE = 1e-9
# The gateway JVM of local mode: a bounded heap that fails loudly (the dedupe state of a week is a few hundred MB),
# IPv4 loopback (containers often lack IPv6). PyFlink's launcher adds JVM_ARGS to its Java 17 --add-opens options.
JVM_ARGS = "-Xmx4g -XX:+ExitOnOutOfMemoryError -Djava.net.preferIPv4Stack=true"
RESTARTED = re.compile(r"switched from state \w+ to RESTARTING")  # a local run that restarts has failed


class FlinkJobError(RuntimeError):
    """The job could not run, or failed; the message says why and what to do."""


def write_events_file(path: Path, events: np.ndarray) -> Path:
    """The events as JSON lines in arrival order: what the poller puts on Kinesis, one transaction per record."""
    rows = zip(hash_hex(events), events["time"].tolist(), events["fee"].tolist(), events["size"].tolist(),
               events["weight"].tolist())
    with open(path, "w") as out:
        out.writelines(f'{{"hash":"{h}","time":{t},"fee":{f},"size":{s},"weight":{w}}}\n' for h, t, f, s, w in rows)
    return Path(path)


def _read_parts(directory: Path) -> pd.DataFrame:
    """The committed part files. Flink keeps a file hidden (``.part-*.inprogress.*``) until it commits it: one left
    over means the job stopped before its final checkpoint, and its rows would be missing."""
    files = sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []
    unfinished = [p.name for p in files if "inprogress" in p.name]
    if unfinished:
        raise FlinkJobError(f"{directory}: {len(unfinished)} part files still in progress ({unfinished[0]}): "
                            "the job did not finish cleanly")
    frames = [pd.read_json(p, lines=True, dtype=False, convert_dates=False)
              for p in files if not p.name.startswith((".", "_")) and p.stat().st_size]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _why(out_dir: Path) -> str:
    """The end of the job's output and the distinct causes in the JVM's log."""
    tail = (out_dir / "job.log").read_text(errors="replace")[-2500:]
    causes = []
    for log in (out_dir / "log").glob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("Caused by") and line[:200] not in causes:
                causes.append(line[:200])
    return f"the end of {out_dir / 'job.log'}:\n{tail}\ncauses in {out_dir / 'log'}:\n" + "\n".join(causes[-8:])


def run_flink_job(events_path: Path, out_dir: Path, python: Path = FLINK_PYTHON, timeout_s: float = 1800,
                  checkpoint_interval_ms: int | None = 1000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the job on ``events_path`` until the file's end; returns (features, dead letters) as data frames.

    Checkpoints are what commit the part files while the job runs, and the end of the input commits the rest; with
    ``checkpoint_interval_ms=None`` only the end does (the job's state is then never snapshotted).
    """
    if not Path(python).exists():
        raise FlinkJobError(f"no PyFlink environment at {python}: run `make flink-venv` (it makes .venv-flink/)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    props = {"connector": "filesystem", "source.path": str(Path(events_path).resolve()),
             "features.path": str(out_dir / "features"), "dead_letters.path": str(out_dir / "dead_letters"),
             "parallelism": "1", "flink.restart-strategy.type": "none"}  # a failure ends the run, never restarts it
    if checkpoint_interval_ms is not None:  # to files: the JobManager's memory holds 5 MB, ~50,000 hashes of state
        props.update({"checkpoint.interval.ms": str(checkpoint_interval_ms),
                      "flink.execution.checkpointing.dir": (out_dir / "checkpoints").resolve().as_uri()})
    properties = out_dir / "props.json"
    properties.write_text(json.dumps([{"PropertyGroupId": PROPERTY_GROUP, "PropertyMap": props}]))
    env = {**os.environ, "PYTHONPATH": "", "JVM_ARGS": JVM_ARGS, "FLINK_LOG_DIR": str(out_dir / "log")}
    deadline = time.monotonic() + timeout_s
    with open(out_dir / "job.log", "w") as output:
        job = subprocess.Popen([str(python), str(JOB), "--properties", str(properties)], stdout=output,
                               stderr=subprocess.STDOUT, env=env, start_new_session=True)  # its JVM and workers too
        try:
            while job.poll() is None:
                if time.monotonic() > deadline:
                    raise FlinkJobError(f"the Flink job ran past {timeout_s:.0f} s; {_why(out_dir)}")
                if any(RESTARTED.search(log.read_text(errors="replace")) for log in (out_dir / "log").glob("*.log")):
                    raise FlinkJobError(f"the Flink job failed and restarted; {_why(out_dir)}")
                time.sleep(0.5)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait()
    if job.returncode:
        raise FlinkJobError(f"the Flink job failed (exit {job.returncode}); {_why(out_dir)}")
    return _read_parts(out_dir / "features"), _read_parts(out_dir / "dead_letters")


@dataclass
class Comparison:
    """The local engine against the Flink job: what differs, minute by minute (nothing when they agree)."""

    minutes: int
    revisions: int  # records the local engine emitted: first emissions and revisions
    dead_letters: int
    differences: list[str] = field(default_factory=list)  # the first 20

    @property
    def equal(self) -> bool:
        return not self.differences


def compare_minute_by_minute(local_records: list[dict], local_dead: list[tuple], flink_features: pd.DataFrame,
                             flink_dead: pd.DataFrame) -> Comparison:
    """Equal when both emitted the same (minute, revision) pairs, each as often, with the same count and total and
    an average within 1e-9 (the latest revision of each minute among them), and the same dead letters as a multiset
    of (hash, time, fee, watermark)."""
    flink_records = flink_features.to_dict("records") if len(flink_features) else []
    differences = []
    pairs = [Counter((r["tx_minute"], int(r["revision"])) for r in rows) for rows in (local_records, flink_records)]
    for key in sorted(set(pairs[0]) | set(pairs[1])):
        if pairs[0][key] != pairs[1][key]:
            differences.append(f"{key}: emitted {pairs[0][key]} times by the local engine, {pairs[1][key]} by Flink")

    def values(rows) -> dict:
        return {(r["tx_minute"], int(r["revision"])): (int(r["tx_count"]), int(r["total_fee"]), float(r["avg_fee"]))
                for r in rows}

    local, flink = values(local_records), values(flink_records)
    for key in sorted(set(local) & set(flink)):
        mine, theirs = local[key], flink[key]
        if mine[:2] != theirs[:2] or abs(mine[2] - theirs[2]) > AVG_TOLERANCE:
            differences.append(f"{key}: local (count, total, avg) {mine}, Flink {theirs}")
    letters = [Counter((h, int(t), int(f), int(w)) for h, t, f, _, _, w, _ in local_dead),
               Counter((r["hash"], int(r["time"]), int(r["fee"]), int(r["watermark"]))
                       for r in (flink_dead.to_dict("records") if len(flink_dead) else []))]
    if letters[0] != letters[1]:
        differences.append(f"dead letters differ: {sum((letters[0] - letters[1]).values())} only local, "
                           f"{sum((letters[1] - letters[0]).values())} only in Flink")
    return Comparison(minutes=len({m for m, _ in local}), revisions=len(local_records), dead_letters=len(local_dead),
                      differences=differences[:20])
