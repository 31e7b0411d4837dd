"""Every local background service at once: what is running, a teardown that stops it all, and a reset."""
from __future__ import annotations

import shutil

from helpers.endpoints import deploy
from helpers.ingestion import ingest
from helpers.local import daemon
from helpers.local.config import RESET, SERVICES, Paths
from helpers.monitoring import monitor, retrain


def running(state_dir=None) -> list[str]:
    """The local services alive now, by name (config.SERVICES)."""
    paths = Paths.at(state_dir)
    return [service for service in SERVICES if daemon.running(paths.pid_file(service))]


def stop_all(state_dir=None) -> list[str]:
    """Stop every local service cleanly (the monitor first, so it starts nothing new; the stream last, after its
    checkpoint); returns what is still running: nothing, unless a process refused to die."""
    paths = Paths.at(state_dir)
    monitor.stop(paths.root)
    retrain.stop(paths)
    deploy.stop_endpoints(paths.root)
    ingest.stop(paths.root)
    return running(paths.root)


def reset(state_dir=None) -> None:
    """Stop every local service and delete what they made (stream, features, models, endpoints): a fresh start."""
    paths = Paths.at(state_dir)
    stop_all(paths.root)
    for name in RESET:
        target = paths.root / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
