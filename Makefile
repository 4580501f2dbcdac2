# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first (pinned, offline-safe).
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A real Milvus standalone server for tests (PyPI `milvus`, which pins an old pymilvus: hence its own venv)
MILVUS_VENV := .venv-milvus
MILVUS_STAMP := $(MILVUS_VENV)/.installed
MILVUS_PORT ?= 19530
export MMR_HOME ?= $(CURDIR)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := False
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-unit test-milvus-server milvus-server-venv milvus-server browser cluster-deps cluster \
	test-cluster lint clean-state help

help:
	@echo "make demo   - set up .venv, run the whole pipeline on the bundled sample through Airflow, search it"
	@echo "make test   - set up .venv and .venv-milvus, run all tests (unit + integration, a real Milvus server included)"
	@echo "make test-unit          - the fast tests only (no servers, pipelines or training; under 2 minutes)"
	@echo "make test-milvus-server - only the tests against a real Milvus server"
	@echo "make milvus-server      - run a Milvus server on 127.0.0.1:$(MILVUS_PORT) (data in var/milvus-server)"
	@echo "make cluster - run the scale-out cluster on 127.0.0.1 (Postgres, Redis, S3, MLflow, Milvus, Airflow Celery"
	@echo "               with two workers) until Ctrl-C; see docs/cluster.md"
	@echo "make cluster-deps - install Debian's postgresql and redis-server (the cluster; needs root or sudo)"
	@echo "make browser - install Debian's chromium and chromium-driver (the search page test; needs root or sudo)"
	@echo "make lint   - ruff, and lint-imports (the layer contracts in pyproject.toml)"

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@$(PY) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, found {sys.version}"'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -r requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

setup: $(STAMP)

$(MILVUS_STAMP): constraints-milvus.txt
	@$(PY) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, found {sys.version}"'
	$(PY) -m venv $(MILVUS_VENV)
	$(MILVUS_VENV)/bin/pip install -q -c constraints-milvus.txt milvus==2.3.5 'setuptools<81' 'marshmallow<4'
	@touch $(MILVUS_STAMP)

milvus-server-venv: $(MILVUS_STAMP)

milvus-server: milvus-server-venv
	$(MILVUS_VENV)/bin/python scripts/milvus_server.py --base-dir var/milvus-server --port $(MILVUS_PORT)

demo: setup
	bash scripts/demo.sh

# The search page test drives Debian's Chromium through its chromedriver (never a downloaded browser); idempotent.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then echo "chromium and chromedriver present"; \
	else SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; fi

# The cluster's servers come from Debian (PostgreSQL 15, Redis), never a downloaded build; idempotent.
cluster-deps:
	@if [ -x /usr/lib/postgresql/15/bin/postgres ] && [ -x /usr/bin/redis-server ]; then \
		echo "postgresql 15 and redis-server present"; \
	else SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
			postgresql-15 redis-server; fi

# Everything scripts/cluster.py starts, on free loopback ports under a temporary folder, until Ctrl-C
cluster: setup milvus-server-venv cluster-deps
	$(BIN)/python scripts/cluster.py $(CLUSTER_ARGS)

test: setup milvus-server-venv browser cluster-deps
	MMR_REQUIRE_MILVUS_SERVER=1 MMR_REQUIRE_BROWSER=1 $(BIN)/pytest -q -m "not cluster" tests
	MMR_REQUIRE_CLUSTER=1 $(BIN)/pytest -q -m cluster tests/integration/test_cluster.py

test-cluster: setup milvus-server-venv cluster-deps
	MMR_REQUIRE_CLUSTER=1 $(BIN)/pytest -q -s -m cluster tests/integration/test_cluster.py

test-milvus-server: setup milvus-server-venv
	MMR_REQUIRE_MILVUS_SERVER=1 $(BIN)/pytest -q -m milvus_server tests/integration/test_milvus_server.py

# Everything but the tests marked `integration` (servers, subprocess pipelines, training): under 2 minutes on 2 cores
test-unit: setup
	$(BIN)/pytest -q -m "not integration" tests

lint: setup
	$(BIN)/ruff check mmretrieval dags plugins tests bench scripts
	$(BIN)/lint-imports

clean-state:
	rm -rf var data/validated data/clean data/augmented data/embeddings data/reports build
