# Two commands do all the set-up on a fresh machine with Python 3.11+:
#   make demo   — creates .venv, installs the project, runs the system on its embedded default
#   make test   — creates .venv, installs the project with its dev tools, runs the test suite
# `make lint` runs ruff and mypy --strict; `.ci/run` runs `make lint` and `make test`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11 or newer is needed" if sys.version_info < (3, 11) else 0)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstalling regenerates crm.v1 from proto/ (the build hook) whenever a .proto file changes.
$(STAMP): pyproject.toml hatch_build.py $(wildcard proto/crm/v1/*.proto) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/crm demo $(DEMO_ARGS)

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .crm-data .mypy_cache .ruff_cache .pytest_cache
