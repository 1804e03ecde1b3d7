# Two commands matter: `make demo` and `make test`. Both create .venv first when it is missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# Extra pip arguments for torch, e.g. an index that serves CPU-only wheels on your machine.
TORCH_PIP_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: setup test lint demo dbt airflow bench clean-demo

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(shell command -v $(PYTHON) || echo python3) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned to the CPU build: an unpinned resolve would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .

demo: setup
	$(PY) demo.py

dbt: setup
	$(PY) -m dbt_runner build

airflow: setup
	$(PY) -m airflow_runner

bench: setup
	for script in bench/bench_*.py; do $(PY) $$script || exit 1; done
