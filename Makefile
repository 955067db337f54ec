# Quick start: `make demo` (whole pipeline on the built-in demo pack), `make test` (lint + all tests),
# `make test-fast` (everyday: the tests not marked slow), `make lint` (ruff).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo lint test test-fast install clean

$(STAMP): requirements-cpu.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements-cpu.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m capture.demo

lint: $(STAMP)
	$(BIN)/ruff check .

# The whole suite, after the linter (what CI runs), one pytest worker per core (tests/conftest.py: each module
# runs on one worker, torch one thread per worker). `make test-fast` leaves out the tests marked slow.
PYTEST := $(BIN)/python -m pytest -q -n auto --dist loadgroup

test: lint
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache
