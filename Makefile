# The two Quick start commands live here: `make demo` and `make test`.
# Both create ./.venv and install the project into it first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,watch]'
	touch $@

install: $(VENV)/.installed

## The pool processing sample documents end to end (local Redis + PostgreSQL + Gemini emulator).
demo: $(VENV)/.installed
	$(PY) scheduler.py demo

## The whole test suite: unit, integration (real Redis, real PostgreSQL), end to end, faults.
test: $(VENV)/.installed
	$(PY) -m pytest

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "unit or integration"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy control_plane

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
