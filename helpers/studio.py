"""Install the project into a SageMaker Studio kernel: ``python -m helpers.studio`` (``--dry-run`` to see the plan).

The Studio image already has torch, numpy, pandas and Jupyter, built for its hardware; ``pip install -e .`` would
replace torch with a multi-GB build. So: this package with ``--no-deps``, then only the pins from pyproject.toml that
the AWS backend needs and the image lacks. Standard library only: it runs before anything is installed.
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The local twin's training, serving and notebook-running stack: on AWS, SageMaker runs those.
NOT_NEEDED = {"torch", "gluonts", "lightning", "mlflow", "fastapi", "uvicorn", "jupyterlab", "ipykernel", "ipywidgets",
              "papermill"}
IMAGE_HAS = {"numpy", "pandas", "pyarrow", "matplotlib"}  # kept as the image built them, installed only if missing


def plan(dependencies: list[str], installed=lambda name: importlib.util.find_spec(name) is not None) -> list[str]:
    """The pinned requirements to install, in pyproject's order."""
    chosen = []
    for requirement in dependencies:
        name = re.split(r"[=<>!~\[ ]", requirement, maxsplit=1)[0].lower()
        if name in NOT_NEEDED or (name in IMAGE_HAS and installed(name)):
            continue
        chosen.append(requirement)
    return chosen


def main(argv: list[str]) -> int:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    requirements = plan(dependencies)
    commands = [[sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(REPO)],
                [sys.executable, "-m", "pip", "install", "--quiet", *requirements]]
    for command in commands:
        print(" ".join(command[2:]))
        if "--dry-run" not in argv and subprocess.run(command).returncode:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
