# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first (pinned, offline-safe).
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MMR_HOME ?= $(CURDIR)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := False
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-unit lint clean-state help

help:
	@echo "make demo   - set up .venv, run the whole pipeline on the bundled sample through Airflow, search it"
	@echo "make test   - set up .venv and run all tests (unit + integration)"
	@echo "make lint   - ruff"

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@$(PY) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, found {sys.version}"'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -r requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	bash scripts/demo.sh

test: setup
	$(BIN)/pytest -q tests

test-unit: setup
	$(BIN)/pytest -q tests/unit

lint: setup
	$(BIN)/ruff check mmretrieval dags plugins tests

clean-state:
	rm -rf var data/validated data/clean data/augmented data/embeddings data/reports build
