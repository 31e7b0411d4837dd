"""Clean-up of the local twin: the running services and what the workshop wrote under the state directory.

The same shape as on AWS (:mod:`helpers.aws.cleanup`): :func:`inventory` finds, :func:`clean_up` asks, stops every
service and deletes the state directory's workshop files (``services.reset``, then ``logs/``), removes the directory
once nothing else is in it, and looks again. A file the workshop did not write is left alone, and not listed.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from helpers.core.cleanup import CleanupReport, Failure, Resource, confirmed, finish
from helpers.local import daemon
from helpers.local.config import RESET, SERVICES, Paths, default_state_dir

LOGS = "logs"  # Paths.at makes it; reset keeps it


def _root(state_dir: str | Path | None) -> Path:
    """The state directory, without creating it (Paths.at would)."""
    return Path(state_dir).resolve() if state_dir else default_state_dir()


def _made_by_the_workshop(name: str) -> bool:
    return any(name == made or name.startswith(f"{made}-") for made in (*RESET, LOGS))  # params.db-wal too


def inventory(state_dir: str | Path | None = None) -> list[Resource]:
    """The services running from this state directory, then each file and directory the workshop wrote there (an
    empty directory is not listed)."""
    root = _root(state_dir)
    if not root.is_dir():
        return []
    paths = Paths(root)
    running = [Resource("service", s, None, f"pid file {paths.pid_file(s).relative_to(root)}") for s in SERVICES
               if daemon.running(paths.pid_file(s))]
    entries = [Resource("directory" if p.is_dir() else "file", p.name, None, f"state directory {root}")
               for p in sorted(root.iterdir()) if _made_by_the_workshop(p.name) and _holds_anything(p)]
    return running + entries


def _holds_anything(path: Path) -> bool:
    """A file, or a directory with a file somewhere inside: not the empty logs/ that opening the state made."""
    return not path.is_dir() or any(not p.is_dir() for p in path.rglob("*"))


def clean_up(state_dir: str | Path | None = None, ask: Callable[[str], str] | None = None,
             yes: bool = False) -> CleanupReport:
    """Ask (unless ``yes``; ``ask`` defaults to ``input``), stop every service, delete the workshop's files and the
    state directory if nothing else is in it; then look again."""
    root = _root(state_dir)
    found = inventory(root)
    report = CleanupReport(
        subject="of the workshop", place=str(root), found=found,
        by_hand=f"by hand: `python -m helpers stop`, then delete {root}",
        confirm_hint="ws.clean_up(yes=True), notebook 99_cleanup with yes = True, or `python -m helpers cleanup --yes`")
    if not found:  # at most empty directories (connect() makes logs/): tidied away, nothing to ask
        if root.is_dir():
            _rest(root)
            _remove_if_empty(root)
        return finish(report, [])
    if not confirmed(report, ask, yes):
        return finish(report, found)
    for step, action in (("stopping the services and resetting", _reset), ("deleting the logs", _rest),
                         ("removing the state directory", _remove_if_empty)):
        try:
            action(root)
        except Exception as error:  # reported; the next step still runs
            report.failed.append(Failure(Resource("directory", str(root), None, "state directory"),
                                         f"{step}: {error}"))
    return finish(report, inventory(root))


def _reset(root: Path) -> None:
    from helpers.local import services

    services.reset(root)


def _rest(root: Path) -> None:
    """What reset keeps (logs/) or does not name (a database's -wal and -shm files)."""
    for path in root.iterdir():
        if not _made_by_the_workshop(path.name):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _remove_if_empty(root: Path) -> None:
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
