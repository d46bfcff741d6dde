# Two commands for a new user: `make demo` and `make test`. Both set up everything first
# (a virtual environment, pinned dependencies, the Rust extension) and are fast the second time.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

VENV := .venv
AIRFLOW_VENV := .venv-airflow
BIN := $(VENV)/bin
DEPS := $(VENV)/.deps-stamp
NATIVE := $(VENV)/.native-stamp
RUST_SRC := Cargo.toml $(wildcard Cargo.lock) $(shell find rust -name '*.rs' 2>/dev/null)

.PHONY: setup demo test test-airflow lint fmt bench replicate replicate-quick clean

setup: $(NATIVE)

$(DEPS): requirements.lock pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.lock
	touch $@

# Editable install: Python sources are used in place; the extension is rebuilt when Rust changes.
$(NATIVE): $(DEPS) $(RUST_SRC)
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/maturin develop --release -q
	touch $@

demo: setup
	$(BIN)/grao-pipe run -c pipelines/demo.yaml --report-json runs/demo/report.json

test: setup
	cargo test -q --release
	$(BIN)/python -m pytest -q tests --ignore=tests/airflow
	$(MAKE) --no-print-directory test-airflow

# The Airflow DAG under a real Airflow, running the real CLI (own venv: its pins conflict with .venv)
test-airflow: setup
	pipelines/airflow/setup.sh
	$(AIRFLOW_VENV)/bin/python -m pytest -q tests/airflow

lint: setup
	$(BIN)/ruff check python tests benchmarks pipelines experiments
	$(BIN)/mypy
	cargo fmt --check
	cargo clippy -q --release --all-targets --all-features -- -D warnings

fmt: setup
	$(BIN)/ruff format python tests benchmarks pipelines experiments
	cargo fmt

bench: setup
	$(BIN)/python benchmarks/bench_advantages.py
	$(BIN)/python benchmarks/bench_learner.py
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_loader.py

# The paper's comparison at small scale on CPU (experiments/replicate.py; docs/replication.md)
replicate: setup
	$(BIN)/python experiments/replicate.py

# The same code paths in a few minutes (1 seed, 5 methods, no lr grid): a smoke run, not evidence
replicate-quick: setup
	$(BIN)/python experiments/replicate.py --quick

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) target runs
