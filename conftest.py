"""Shared test set-up for tests/ and the notebooks (nbval).

Every test session runs under a far-from-UTC time zone (timestamps must not
depend on it), in a fresh state directory and on free endpoint ports, so no
test touches a learner's .state/ or services; any service the tests or
notebooks left running is stopped at the end.
"""
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from helpers.core.events import EVENT_DTYPE


def pytest_configure(config):
    os.environ["TZ"] = "Pacific/Kiritimati"  # UTC+14
    time.tzset()
    from helpers.core.times import PINNED_NOW_ENV
    from helpers.notebooks import PINNED_NOW

    os.environ[PINNED_NOW_ENV] = PINNED_NOW  # nbval's notebooks and every stream: the same market at any hour
    config._state_dir = tempfile.mkdtemp(prefix="mlops-test-state-")
    os.environ["MLOPS_STATE_DIR"] = config._state_dir
    from helpers.local.daemon import free_port

    for name in ("STAGING", "PROD"):  # never the default ports a learner's own endpoints may hold
        os.environ[f"MLOPS_{name}_PORT"] = str(free_port())


def pytest_unconfigure(config):
    from helpers.local import services

    services.stop_all(config._state_dir)
    shutil.rmtree(config._state_dir, ignore_errors=True)


# The simulated "now" of every test that streams or backfills: the same market at any hour of any day.
PINNED_NOW = 1_800_000_000 // 3600 * 3600  # 2027-01-15T08:00:00Z


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


def snapshot_feature_store(state: Path, destination: Path) -> Path:
    """A consistent copy of a live feature store (the stream may be writing): the SQLite catalog first, through
    SQLite's backup API, then the Parquet files, so every file the copied catalog lists is there (a file is written
    before it is listed, and a replaced one is kept for a retention period). Returns the copy's state directory."""
    import sqlite3

    source, target = Path(state) / "feature_store", Path(destination) / "feature_store"
    target.mkdir(parents=True)
    for db in source.glob("*.db"):
        with sqlite3.connect(db) as live, sqlite3.connect(target / db.name) as copy:
            live.backup(copy)
    shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.db", "*.db-*"))
    return Path(destination)


def private_copy(state: Path, tmp_path: Path, monkeypatch) -> Path:
    """A copy of a prepared state directory, whose endpoints get ports of their own."""
    from helpers.local.daemon import free_port

    copy = tmp_path / "state"
    shutil.copytree(state, copy)
    for name in ("STAGING", "PROD"):
        monkeypatch.setenv(f"MLOPS_{name}_PORT", str(free_port()))
    return copy


def wait_for(predicate, timeout_s=120, what="condition"):
    """Poll ``predicate`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def state_dir(tmp_path):
    """A private state directory; any service started in it is stopped afterwards."""
    from helpers.local import services

    path = tmp_path / "state"
    yield path
    services.stop_all(path)


def fake_aws_credentials(patch, region: str, **extra: str) -> None:
    """moto's placeholder credentials and a region, and no profile, config file or token of this machine's that
    could reach a real account; ``extra``: more variables to set. ``patch``: a pytest MonkeyPatch."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
        patch.delenv(name, raising=False)
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": region, "AWS_CONFIG_FILE": os.devnull,
                        "AWS_SHARED_CREDENTIALS_FILE": os.devnull, **extra}.items():
        patch.setenv(name, value)


@contextmanager
def moto_account(prefix: str, region: str, bucket: str):
    """A moto account holding the workshop's bucket; yields the AwsContext of ``prefix`` in it."""
    import boto3
    from moto import mock_aws

    from helpers.aws.session import AwsContext

    with mock_aws():
        boto3.client("s3", region_name=region).create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
        yield AwsContext(prefix=prefix, region=region)
