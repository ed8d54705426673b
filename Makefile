# Thin targets; CI (.ci/run) calls `make test`, exactly as a developer does.
PYTHON ?= python3
VENV   ?= .venv
ifeq ($(OS),Windows_NT)
  BIN := $(VENV)/Scripts
else
  BIN := $(VENV)/bin
endif
PY    := $(BIN)/python
STAMP := $(VENV)/.installed

.PHONY: run test run-producer psql migrate status bench chaos lint typecheck env clean

# The environment is created (or refreshed when pyproject.toml changes) on demand.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

env: $(STAMP)

run: $(STAMP)             ## the whole pipeline on the embedded defaults, until Ctrl+C
	$(PY) -m brokersync up

test: $(STAMP)            ## the whole suite
	$(PY) -m pytest $(PYTEST_ARGS)

run-producer: $(STAMP)    ## the producer alone, restarted when code changes
	$(BIN)/watchfiles --filter python '$(PY) -m brokersync producer' producer brokersync schema

psql: $(STAMP)
	$(PY) -m brokersync psql $(ARGS)

migrate: $(STAMP)
	$(PY) -m brokersync migrate

status: $(STAMP)
	$(PY) -m brokersync status

bench: $(STAMP)
	$(PY) -m bench

chaos: $(STAMP)           ## many trials of faults; prints mismatches (must be 0)
	$(PY) -m bench.chaos $(CHAOS_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy brokersync consumers producer schema

clean:
	rm -rf $(VENV) .pytest_cache
