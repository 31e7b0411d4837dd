# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUILD := build
# The demo runs in its own state directory so it never touches a learner's .state/.
DEMO_STATE := $(BUILD)/state
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: install flink-venv demo test bench lab clean

install: $(VENV)/.installed

# torch first, pinned: it is a CPU build on this machine's disk; a looser spec pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

demo: install
	rm -rf $(DEMO_STATE) && mkdir -p $(BUILD)/notebooks
	MLOPS_STATE_DIR=$(abspath $(DEMO_STATE)) $(PY) -m helpers demo $(NOTEBOOKS) --out $(BUILD)/notebooks

# checkov would move pinned packages (boto3 among them), so it lives in a virtualenv of its own; the tests use it.
LINT_VENV := .venv-lint
$(LINT_VENV)/.installed: Makefile
	test -x $(LINT_VENV)/bin/python || $(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LINT_VENV)/bin/python -m pip install --quiet "checkov==3.3.30"
	touch $@

# PyFlink (the Managed Flink job in local mode) pins numpy, pandas and pyarrow against the main environment's:
# its own virtualenv. apache-flink 1.20 matches the application's runtime, FLINK-1_20.
FLINK_VENV := .venv-flink
FLINK_PIN := apache-flink==1.20.3
flink-venv: $(FLINK_VENV)/.installed
$(FLINK_VENV)/.installed: Makefile
	rm -rf $(FLINK_VENV) && $(PYTHON) -m venv $(FLINK_VENV)
	$(FLINK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLINK_VENV)/bin/python -m pip install --quiet "$(FLINK_PIN)"
	touch $@

test: install $(LINT_VENV)/.installed $(FLINK_VENV)/.installed
	$(VENV)/bin/ruff check helpers tests bench conftest.py
	$(PY) -m pytest

bench: install $(FLINK_VENV)/.installed
	$(PY) -m bench

# Loopback only; --allow-root where we run as root (a container, a CI box), which Jupyter otherwise refuses.
LAB_ARGS ?=
lab: install
	$(VENV)/bin/jupyter lab notebooks/ --ip=127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

clean:
	-MLOPS_STATE_DIR=$(abspath $(DEMO_STATE)) $(PY) -m helpers stop >/dev/null 2>&1
	rm -rf $(BUILD)
