# Two entry points: `make up` runs the local stack, `make test` runs the test suite.
# Both create the virtual environment in .venv on first use, with the pinned versions
# from constraints.txt.

PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: up test bench lint

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet --constraint constraints.txt --editable '.[dev]'
	touch $(STAMP)

# Extra options go in ARGS, for example: make up ARGS="--port 8080"
up: $(STAMP)
	$(VENV)/bin/smartflow up $(ARGS)

test: $(STAMP)
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(VENV)/bin/python bench/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
