"""Run the workshop notebooks headless with papermill, and keep their figures.

Used by ``make demo`` (``python -m helpers demo``) and by the notebook tests.
"""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from helpers.local.config import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


# A simulated "now" fixed in advance, for runs that must be the same at any hour: the market history, the features,
# the model and the gate's decision depend on it, never on the wall clock. The tests and make demo set it as
# $MLOPS_PINNED_NOW (helpers.core.times.pinned_now), which notebook 01's stream and notebook 03's data end default to.
PINNED_NOW = "2026-11-30T12:00:00Z"
# CI mode: the pinned instant, and shorter watching and plotting. The model is the real one, on 7 days: training
# time does not grow with the history, and the benchmarks measure the model and its gate on 7-day builds.
CI_PARAMETERS = {  # a notebook not named here runs with its defaults
    "01_ingestion.ipynb": {"speed": 60.0, "watch_seconds": 4},
    "02_features.ipynb": {"hours": 6},
}


# The clean-up runs last. With its default yes=False a headless run cannot answer its question, so it deletes nothing
# (make demo's state stays for the facilitator) and says how to run it with yes=True.
CLEANUP_NOTEBOOK = "99_cleanup.ipynb"


def ci_runs(cleanup: bool = True) -> list[tuple[Path, dict]]:
    """Every numbered notebook in order, each with its CI-mode parameters: what make demo and the notebook test run;
    ``cleanup=False``: the loop alone, 01 to 05 (what the suite benchmark times)."""
    return [(path, CI_PARAMETERS.get(path.name, {})) for path in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
            if cleanup or path.name != CLEANUP_NOTEBOOK]


def run_notebook(notebook: Path, out_dir: Path, parameters: dict | None = None, timeout_s: int = 1200) -> Path:
    """Execute ``notebook`` into ``out_dir`` with papermill; return the executed copy's path."""
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / Path(notebook).name
    papermill.execute_notebook(
        str(notebook), str(executed), parameters=parameters or {}, kernel_name="python3",
        cwd=str(Path(notebook).parent), progress_bar=False, execution_timeout=timeout_s,
    )
    return executed


def extract_figures(executed: Path, figure_dir: Path) -> list[Path]:
    """Save every PNG the notebook displayed as ``<notebook>-<n>.png``."""
    figure_dir.mkdir(parents=True, exist_ok=True)
    cells = json.loads(executed.read_text())["cells"]
    pngs = [o["data"]["image/png"] for c in cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    paths = []
    for i, png in enumerate(pngs, start=1):
        path = figure_dir / f"{executed.stem}-{i}.png"
        path.write_bytes(base64.b64decode(png))
        paths.append(path)
    return paths


def demo(notebooks: list[Path], out_dir: Path) -> None:
    """Run every notebook in order in local mode at the pinned instant, then stop the services they started."""
    import os

    from helpers.core.times import PINNED_NOW_ENV
    from helpers.local import services

    os.environ.setdefault(PINNED_NOW_ENV, PINNED_NOW)  # the same run at any hour; the notebooks' kernels inherit it
    try:
        for notebook in notebooks:
            started = time.monotonic()
            executed = run_notebook(Path(notebook), out_dir, {"backend": "local"})
            figures = extract_figures(executed, out_dir / "figures")
            print(f"{Path(notebook).name}: ran in {time.monotonic() - started:.0f} s, {len(figures)} figures")
    finally:
        services.stop_all()
    print(f"executed notebooks and figures: {out_dir}/")
