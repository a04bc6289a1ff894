# Quick start: `make run` (stack + demo), `make test` (whole suite), `make stop`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt constraints.txt | sha1sum | cut -c1-12)

.PHONY: run stop status test lint manifests bench venv dsn

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt -c constraints.txt
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

manifests: venv ## build every dbt project's manifest with `dbt parse`
	$(PY) -m include.dbt_platform.manifests

run: manifests ## PostgreSQL + Airflow on 127.0.0.1, then the demo through the REST API
	$(PY) -m include.dbt_platform.devstack up
	$(PY) -m include.dbt_platform.devstack demo

stop: ## stop Airflow and PostgreSQL (data is kept under .local/)
	@test -x $(PY) && $(PY) -m include.dbt_platform.devstack down || true

status:
	$(PY) -m include.dbt_platform.devstack status

bench: manifests ## dbt build vs the Cosmos DAG on the real scheduler (BENCH_ARGS="--models 500 --runs 1")
	$(PY) -m include.dbt_platform.devstack pg-up
	$(PY) bench/transformations_bench.py $(BENCH_ARGS)

dsn: ## print the PostgreSQL administrator DSN
	@$(PY) -m include.dbt_platform.devstack dsn

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/sqlfluff lint --processes 2 dbt_projects

test: manifests lint ## the whole suite against a real PostgreSQL, dbt and Airflow metadata DB
	$(PY) -m include.dbt_platform.devstack pg-up
	$(PY) -m pytest $(PYTEST_ARGS)
