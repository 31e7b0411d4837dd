import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from helpers.events import EVENT_DTYPE  # noqa: E402


def make_events(rows) -> np.ndarray:
    """Events from (hash_int, time, fee[, size, weight]) tuples; the hash int fills the first 8 bytes."""
    events = np.zeros(len(rows), dtype=EVENT_DTYPE)
    for i, row in enumerate(rows):
        key, t, fee, *rest = row
        size, weight = rest if rest else (250, 700)
        events[i]["hash"][:8] = np.frombuffer(int(key).to_bytes(8, "little"), dtype=np.uint8)
        events[i]["hash"][8:] = 7
        events[i]["time"], events[i]["fee"], events[i]["size"], events[i]["weight"] = t, fee, size, weight
    return events


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    path = tmp_path / "state"
    monkeypatch.setenv("MLOPS_STATE_DIR", str(path))
    return path


@pytest.fixture(autouse=True, scope="session")
def _any_timezone():
    """Tests must pass under any TZ: run them all under a far-from-UTC zone."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Pacific/Kiritimati"  # UTC+14
    if hasattr(__import__("time"), "tzset"):
        __import__("time").tzset()
    yield
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
