"""make lab starts JupyterLab on loopback, as root too (a container), and answers."""
import os
import re
import subprocess
import time

import httpx
import pytest

from conftest import wait_for
from helpers.local.config import REPO_ROOT
from helpers.local.daemon import free_port

pytestmark = pytest.mark.slow


def test_make_lab_serves_on_loopback_even_as_root(tmp_path):
    port = free_port()
    env = {**os.environ, "BROWSER": "true", "JUPYTER_RUNTIME_DIR": str(tmp_path)}  # no browser to open here
    lab = subprocess.Popen(["make", "--no-print-directory", "lab",
                            f"LAB_ARGS=--port={port} --port-retries=0 --no-browser"],
                           cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        deadline, seen = time.monotonic() + 240, ""
        while time.monotonic() < deadline and not re.search(rf"http://(127\.0\.0\.1|localhost):{port}/lab", seen):
            line = lab.stdout.readline()
            assert line or lab.poll() is None, f"make lab exited: {seen[-2000:]}"
            seen += line
        assert "--ip=127.0.0.1" in seen and re.search(rf":{port}/lab", seen), seen[-2000:]
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/api"), timeout_s=60, what="JupyterLab's API on loopback")
    finally:
        os.killpg(lab.pid, 15)
        lab.wait(timeout=30)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
