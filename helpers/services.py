"""Every local background service at once: what is running, and a teardown that stops it all."""
from __future__ import annotations

from helpers import daemon, deploy, ingest, monitor, retrain
from helpers.config import Paths


def running(state_dir=None) -> list[str]:
    """The local services alive now: ingest, monitor, endpoint-staging, endpoint-prod, retrain."""
    paths = Paths.at(state_dir)
    pid_files = {"ingest": paths.ingest_pid, "monitor": paths.monitoring / "monitor.pid",
                 "retrain": paths.monitoring / "retrain.pid",
                 **{f"endpoint-{name}": deploy.pid_file(paths, name) for name in deploy.ENDPOINTS}}
    return [name for name, pid_file in pid_files.items() if daemon.alive(daemon.read_pid(pid_file))]


def stop_all(state_dir=None) -> list[str]:
    """Stop every local service cleanly (the monitor first, so it starts nothing new; the stream last, after its
    checkpoint); returns what is still running: nothing, unless a process refused to die."""
    paths = Paths.at(state_dir)
    monitor.stop(paths.root)
    retrain.stop(paths)
    deploy.stop_endpoints(paths.root)
    ingest.stop(paths.root)
    return running(paths.root)
