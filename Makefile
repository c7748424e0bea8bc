# Two commands: `make test` and `make demo`. Each bootstraps .venv by itself.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.DEFAULT_GOAL := help
.PHONY: help test demo venv lint images benchmarks clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

venv: $(STAMP) ## Create .venv with every extra installed

test: $(STAMP) ## Install the dev extra and run the whole test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP) ## Train a real model end to end on this machine (embedded Postgres, local bucket)
	$(BIN)/training-agent demo

benchmarks: $(STAMP) ## Run the benchmarks (prints tables; not part of the tests)
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/api_load.py
	$(BIN)/python benchmarks/operator_throughput.py

clean: ## Remove the venv and local state
	rm -rf $(VENV) .local .pytest_cache
