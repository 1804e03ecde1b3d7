# Two commands matter: `make demo` and `make test`. Both create .venv first when it is missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# Extra pip arguments for torch, e.g. an index that serves CPU-only wheels on your machine.
TORCH_PIP_ARGS ?=
STAMP := $(VENV)/.installed

# Extra pytest arguments, e.g. PYTEST_ARGS="-m synthetic_fallback" (.ci/run's no-shared-data pass).
PYTEST_ARGS ?=

.PHONY: setup test lint demo dbt airflow bench clean-demo db-stop

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(shell command -v $(PYTHON) || echo python3) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned to the CPU build: an unpinned resolve would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

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

# The demo's trained run, logs and database (on the embedded PostgreSQL); `make demo` starts afresh.
clean-demo: setup
	$(PY) demo.py --clean

# Stop the embedded PostgreSQL (.pgdata/) when a command left it running for later ones.
db-stop: setup
	$(PY) db.py stop

# Paper-trading try-out: a fake Binance with an account replays PAPER_DATA candles from PAPER_START
# at PAPER_SPEED x real time; trade.py paper-trades PAPER_RUN against it, one cycle per bar, until Ctrl-C.
PAPER_RUN ?= saved_models/demo
PAPER_DATA ?= ../shared/data/binance_spot_1h_2017_2022
PAPER_START ?= 2021-11-01
PAPER_SPEED ?= 1800
PAPER_PORT ?= 8799
.PHONY: paper
paper: setup
	$(PY) -m binance.fake_orders --data-dir $(PAPER_DATA) --start $(PAPER_START) --speed $(PAPER_SPEED) \
		--port $(PAPER_PORT) & fake=$$!; trap 'kill $$fake' EXIT INT TERM; sleep 3; \
	BINANCE_BASE_URL=http://127.0.0.1:$(PAPER_PORT) $(PY) trade.py --run $(PAPER_RUN) \
		--config configs/paper_tryout.yaml --account paper-tryout-$$(date +%s)
