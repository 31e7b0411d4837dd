"""Background processes for the local twin, one lifecycle for every service (the stream, both endpoints, the
monitor, a retrain): spawn detached, wait until it is up, track it by pid file, stop it with SIGTERM.

A daemon runs ``python -m helpers --state-dir DIR <command>`` in its own
session, so it outlives the notebook kernel or shell that started it. It
holds its pid file itself (:func:`holding_pid_file`) and removes it on a clean
exit; a pid file whose process is gone means it crashed.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def spawn(state_dir: Path, command: list[str], output: Path) -> subprocess.Popen:
    """Start ``python -m helpers <command...>`` detached, its stdout and stderr appended to ``output``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "helpers", "--state-dir", str(state_dir), *command],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: it outlives the kernel that started it
        )


def start(state_dir: Path, command: list[str], output: Path, is_up: Callable[[subprocess.Popen], bool],
          wait_s: float, what: str) -> subprocess.Popen:
    """Spawn ``python -m helpers <command...>`` and wait until ``is_up(process)``; a clear error, naming the output
    file to read, if it exits first or takes longer than ``wait_s``."""
    process = spawn(state_dir, command, output)
    deadline = time.monotonic() + wait_s
    while not is_up(process):
        if process.poll() is not None:
            raise RuntimeError(f"the {what} exited at start (code {process.returncode}); see {output}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the {what} did not come up within {wait_s:.0f} s; see {output}")
        time.sleep(0.1)
    return process


@contextmanager
def holding_pid_file(pid_file: Path, what: str) -> Iterator[None]:
    """In the service's own process: refuse to run beside a live twin, hold the pid file, remove it on exit."""
    other = read_pid(pid_file)
    if alive(other) and other != os.getpid():
        raise SystemExit(f"another {what} is running (pid {other}); stop it first")
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(str(os.getpid()))
    try:
        yield
    finally:
        pid_file.unlink(missing_ok=True)


def log_to(path: Path) -> None:
    """A service's log: INFO and up, one line per record, times in UTC like everything else."""
    logging.basicConfig(filename=path, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s")
    logging.Formatter.converter = time.gmtime


def running(pid_file: Path) -> bool:
    return alive(read_pid(pid_file))


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    """Is ``pid`` a live helpers process? Reaps it if it is our exited child; zombies count as dead."""
    if not pid:
        return False
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child
    if not Path("/proc").is_dir():  # no procfs (macOS): trust the pid
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    return stat.split(") ", 1)[1][:1] != "Z" and b"helpers" in cmdline  # not a zombie, not a reused pid


def terminate(pid_file: Path, timeout_s: float = 30) -> bool:
    """SIGTERM the daemon and wait for it to exit; SIGKILL only past ``timeout_s``. True if it had to be killed."""
    pid = read_pid(pid_file)
    if not alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
        return True
    return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
