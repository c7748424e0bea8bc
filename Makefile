# Two commands: `make test` and `make demo`. Each bootstraps .venv by itself.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
# Deployment: `make images` tags images as $(IMAGE_REGISTRY)/training-agent-<part>:$(IMAGE_TAG).
IMAGE_REGISTRY ?= training-agent
IMAGE_TAG      ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$$/\1/p' $(CHART)/Chart.yaml)
CHART          := deploy/helm/training-agent
# helm-sdkpy (Helm as a library, used by the chart tests) needs Python >= 3.12: a venv of its
# own. A pyenv shim answers `command -v` even when it cannot run, so each candidate is tried.
HELM_VENV      := $(VENV)/helm-sdk
HELM_STAMP     := $(HELM_VENV)/.installed
PYTHON_HELM    ?= $(shell for p in python3.14 python3.13 python3.12 $$(ls -dr $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.1[2-9]*/bin/python3 $$(pyenv root 2>/dev/null)/versions/3.1[2-9]*/bin/python3 2>/dev/null); do "$$p" -c 'import sys; assert sys.version_info >= (3, 12); print(sys.executable)' 2>/dev/null && break; done)

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

test: $(STAMP) $(HELM_STAMP) ## Install the dev extra and run the whole test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP) ## Train a real model end to end on this machine (embedded Postgres, local bucket)
	$(BIN)/training-agent demo

benchmarks: $(STAMP) ## Run the benchmarks (prints tables; not part of the tests)
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/api_load.py
	$(BIN)/python benchmarks/operator_throughput.py
	$(BIN)/python benchmarks/intake.py

# --- deployment: container images and the Helm chart ---------------------------------------
.PHONY: helm-venv chart-crds

$(HELM_STAMP):
	@test -n "$(PYTHON_HELM)" || { echo "the chart tests need Python >= 3.12 for helm-sdkpy: install one or set PYTHON_HELM=/path/to/python3.12" >&2; exit 1; }
	$(PYTHON_HELM) -m venv $(HELM_VENV)
	$(HELM_VENV)/bin/pip install --quiet --disable-pip-version-check "helm-sdkpy>=0.1.32,<0.2"
	touch $@

helm-venv: $(HELM_STAMP) ## Create the Python 3.12 venv with helm-sdkpy (the chart tests use it)

chart-crds: ## Copy the operator's TrainingRun CRD into the chart (one source of truth)
	cp operator/training_operator/crd.yaml $(CHART)/crds/trainingruns.training.automl.dev.yaml

images: ## Build the api, operator and trainer images (needs a Docker engine)
	docker build -f api/Dockerfile -t $(IMAGE_REGISTRY)/training-agent-api:$(IMAGE_TAG) .
	docker build -f operator/Dockerfile -t $(IMAGE_REGISTRY)/training-agent-operator:$(IMAGE_TAG) .
	docker build -f trainer_image/Dockerfile -t $(IMAGE_REGISTRY)/training-agent-trainer:$(IMAGE_TAG) .

clean: ## Remove the venv and local state
	rm -rf $(VENV) .local .pytest_cache
