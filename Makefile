# Two commands on a fresh machine: `make run` (install, get the data, run the pipeline) and `make test`.
# Everything runs offline: no weights or data are downloaded at run time.

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export PATH := $(CURDIR)/$(BIN):$(PATH)

# Accelerate's configuration for every training stage (processes, devices, mixed precision): a runtime choice,
# never science. Default: accelerate/cpu.yaml (one CPU process, bf16) where no GPU is found; elsewhere empty, so
# that `accelerate config`'s file or Accelerate's defaults (every GPU found) apply. Any file works:
#   make run PROFILE=paper ACCELERATE_CONFIG=accelerate/4gpu.yaml
ACCELERATE_CONFIG ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,accelerate/cpu.yaml)
export ACCELERATE_ARGS ?= $(if $(ACCELERATE_CONFIG),--config_file $(ACCELERATE_CONFIG))

.PHONY: install data run test

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# Raw inputs into data/ (sha256-verified against data.sha256), then into DVC's cache (data.dvc).
data: install
	$(BIN)/python -m ehrbert.rawdata fetch
	$(BIN)/dvc add --quiet data

# `make run PROFILE=paper` runs the pipeline as a DVC experiment named after the profile, with
# profiles/paper.yaml applied; its champions are registered under their own alias (champion-paper).
PROFILE ?=
run: data
ifeq ($(PROFILE),)
	$(BIN)/dvc repro
else
	eval "$(BIN)/dvc exp run --name $(PROFILE) $$($(BIN)/python -m ehrbert.profiles $(PROFILE))"
endif

test: install
	$(BIN)/python -m pytest
