# Two commands: `make test` and `make demo`. Each bootstraps .venv by itself.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
# Deployment: `make images` tags images as $(IMAGE_REGISTRY)/training-agent-<part>:$(IMAGE_TAG).
IMAGE_REGISTRY ?= training-agent
IMAGE_TAG      ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$$/\1/p' $(CHART)/Chart.yaml)
CHART          := deploy/helm/training-agent
# Go programs the tests run (helm; the Kubernetes control plane), built once per version into
# a cache outside the clone: ~/.cache/training-agent/tools, or $TRAINING_AGENT_TOOLS_DIR.
GO_TOOLS       := $(PYTHON) tools/go_tools.py

.DEFAULT_GOAL := help
.PHONY: help test demo venv tools browser lint images benchmarks clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

venv: $(STAMP) ## Create .venv with every extra installed

tools: ## Build the Go tools the tests use, where the cache lacks them (needs Go)
	$(GO_TOOLS) build

# The web page's tests drive Debian's headless Chromium (through Playwright, no browser download).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser: ## Install Debian's chromium for the web page's tests, where it is missing
	@command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y --no-install-recommends chromium)

lint: $(STAMP) ## Check that imports point one way (the contracts in pyproject.toml)
	$(BIN)/lint-imports

test: $(STAMP) tools browser lint ## Install the dev extra, the Go tools and chromium; check the import layers; run every test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP) ## Train a real model end to end on this machine (embedded Postgres, local bucket)
	$(BIN)/training-agent demo

benchmarks: $(STAMP) ## Run the benchmarks (prints tables; not part of the tests)
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/api_load.py
	$(BIN)/python benchmarks/operator_throughput.py
	$(BIN)/python benchmarks/intake.py
	$(BIN)/python benchmarks/preemption.py
	$(BIN)/python benchmarks/chaos.py

# --- deployment: container images and the Helm chart ---------------------------------------
.PHONY: chart-crds

chart-crds: ## Copy the operator's TrainingRun CRD into the chart (one source of truth)
	cp operator/training_operator/crd.yaml $(CHART)/crds/trainingruns.training.automl.dev.yaml

images: ## Build the api, operator and trainer images (needs a Docker engine)
	docker build -f api/Dockerfile -t $(IMAGE_REGISTRY)/training-agent-api:$(IMAGE_TAG) .
	docker build -f operator/Dockerfile -t $(IMAGE_REGISTRY)/training-agent-operator:$(IMAGE_TAG) .
	docker build -f trainer_image/Dockerfile -t $(IMAGE_REGISTRY)/training-agent-trainer:$(IMAGE_TAG) .

clean: ## Remove the venv and local state
	rm -rf $(VENV) .local .pytest_cache
