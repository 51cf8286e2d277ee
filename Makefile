# The two newcomer commands: `make demo` and `make test`. Both build .venv from the lock files.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DB ?= timeline.db

.PHONY: demo test lint bench clean docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.runtime: requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev: requirements-dev.lock pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@ $(VENV)/.runtime

demo: $(VENV)/.runtime
	$(BIN)/python -m examples.demo --db $(DB)

test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(VENV)/.dev
	$(BIN)/python -m benchmarks.ingest
	$(BIN)/python -m benchmarks.projections
	$(BIN)/python -m benchmarks.alerts
	$(BIN)/python -m benchmarks.http_load

clean:
	rm -rf $(VENV) $(DB) alerts.jsonl .pytest_cache

docs: $(VENV)/.runtime
	$(BIN)/python -m projections.docs
