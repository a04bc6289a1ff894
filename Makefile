# Quick start: `make run` (stack + demo), `make test` (whole suite), `make stop`.
# `make run-distributed`: the same stack on Celery (two schedulers, triggerers, workers); `make chaos`, `make bench-saga`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt constraints.txt | sha1sum | cut -c1-12)

.PHONY: run run-distributed chaos bench-saga stop status test test-unit lint manifests bench bench-saga-latency venv dsn

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt -c constraints.txt
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

manifests: venv ## build every dbt project's manifest with `dbt parse`
	$(PY) -m include.dbt_platform.transformations.manifests

run: manifests ## PostgreSQL + Airflow on 127.0.0.1, then the demo through the REST API
	$(PY) -m devstack up
	$(PY) -m devstack demo

run-distributed: manifests ## the same, on Celery + Redis: 2 schedulers, 2 triggerers, 2 workers, dag-processor, api-server
	$(PY) -m devstack up-distributed
	$(PY) -m devstack demo

chaos: manifests ## crash drills on a distributed stack of their own (CHAOS_ARGS="--drill scheduler")
	$(PY) -m devstack.chaos $(CHAOS_ARGS)

bench-saga: manifests ## 50 project creations at once on a distributed stack, beside a bare DAG (BENCH_ARGS="--sagas 50")
	$(PY) -m devstack.bench.saga_load $(BENCH_ARGS)

stop: ## stop Airflow, Redis, OpenBao, the git server, the metrics exporter and PostgreSQL, either profile (data is kept under .local/)
	@test -x $(PY) && $(PY) -m devstack down || true

status:
	$(PY) -m devstack status

bench: manifests ## dbt build vs the Cosmos DAG on the real scheduler (BENCH_ARGS="--models 500 --runs 1")
	$(PY) -m devstack pg-up
	$(PY) -m devstack.bench.transformations_bench $(BENCH_ARGS)

bench-saga-latency: manifests ## the saga end to end vs a bare chain of as many tasks (BENCH_ARGS="--runs 5")
	$(PY) -m devstack pg-up
	$(PY) -m devstack.bench.saga_latency $(BENCH_ARGS)

dsn: ## print the PostgreSQL administrator DSN
	@$(PY) -m devstack dsn

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/sqlfluff lint --processes 2 dbt_projects

test-unit: venv ## the fast tier: no database server, no Airflow metadata database (< 30 s)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test: manifests lint ## every tier against a real PostgreSQL, dbt and Airflow (what CI runs)
	$(PY) -m devstack pg-up
	$(PY) -m devstack.test_tiers $(PYTEST_ARGS)
