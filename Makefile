# The two commands of the README (make demo, make test) and a few more.
# Each sets up what it needs: a virtualenv in .venv with the project installed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench services clean

$(BIN)/.installed: pyproject.toml
	@echo "installing into $(VENV) (log: $(VENV)/install.log)"
	$(PYTHON) -m venv $(VENV)
	@{ $(BIN)/python -m pip install --upgrade pip && $(BIN)/python -m pip install -e '.[dev]'; } \
		> $(VENV)/install.log 2>&1 || { tail -n 30 $(VENV)/install.log; exit 1; }
	touch $@

demo: $(BIN)/.installed  ## the whole path on the embedded defaults: no server needed
	$(BIN)/notify demo

test: $(BIN)/.installed services  ## every test; Redis, PostgreSQL and RabbitMQ are started if installed
	$(BIN)/python -m pytest

services:
	scripts/start-services

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Every benchmark of benchmarks/README.md, each run even if one before it failed (~12 min on 2 cores).
bench: $(BIN)/.installed services  ## notify against hand-rolled Celery, bare apply_async and raw clients
	@status=0; \
	$(BIN)/python -m benchmarks.email_throughput || status=1; \
	$(BIN)/python -m benchmarks.send_latency || status=1; \
	$(BIN)/python -m benchmarks.priority_isolation || status=1; \
	$(BIN)/python -m benchmarks.provider_throughput --count 500 || status=1; \
	$(BIN)/python -m benchmarks.provider_throughput --count 300 --rounds 1 --latency-ms 50 || status=1; \
	exit $$status

.PHONY: bench-memory
bench-memory: $(BIN)/.installed services  ## one worker's RSS over 100,000 deliveries (~15 min)
	$(BIN)/python -m benchmarks.memory

clean:
	rm -rf $(VENV) .notify .pytest_cache .mypy_cache .ruff_cache
