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
# never science. Default where no GPU is found: accelerate/cpu.yaml (one CPU process, bf16); elsewhere empty, so
# that `accelerate config`'s file or Accelerate's defaults (every GPU found) apply. Any file works:
#   make run PROFILE=paper ACCELERATE_CONFIG=accelerate/4gpu.yaml
# Where no GPU is found and the CPU lacks bf16 in hardware (neither AVX512-BF16 nor AMX in /proc/cpuinfo), every
# file's training runs in fp32 (--mixed_precision no): an emulated bf16 is several times slower than fp32.
GPU := $(shell command -v nvidia-smi 2>/dev/null)
CPU_BF16 := $(shell grep -qswE 'avx512_bf16|amx_bf16' /proc/cpuinfo && echo yes)
ACCELERATE_CONFIG ?= $(if $(GPU),,accelerate/cpu.yaml)
export ACCELERATE_ARGS ?= $(strip $(if $(ACCELERATE_CONFIG),--config_file $(ACCELERATE_CONFIG)) \
	$(if $(GPU)$(CPU_BF16),,--mixed_precision no))

.PHONY: install data run test lint bench checkpoints lock server

install: $(VENV)/.installed

# Every package at the version requirements.lock names (made from pyproject.toml by `make lock`), then this
# project on top of them without resolving again.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# Refresh requirements.lock after a change to pyproject.toml's dependencies. torch is locked without its local
# build label (2.13.0, not 2.13.0+cpu), so the same lock installs the CPU build here and a CUDA build elsewhere.
lock: install
	$(BIN)/pip install --quiet --disable-pip-version-check pip-tools==7.6.2
	$(BIN)/pip-compile --quiet --extra test --strip-extras --no-emit-find-links --no-emit-index-url \
		--output-file requirements.lock pyproject.toml
	sed -i 's/^torch==\(.*\)+cpu$$/torch==\1/' requirements.lock

# Raw inputs into data/ (sha256-verified against data.sha256), then into DVC's cache (data.dvc).
data: install
	$(BIN)/python -m ehrbert.rawdata fetch
	$(BIN)/dvc add --quiet data

# `make run PROFILE=paper` runs the pipeline as a DVC experiment with profiles/paper.yaml applied; its
# champions are registered under the profile's own alias (champion-paper).
PROFILE ?=
run: data
ifeq ($(PROFILE),)
	$(BIN)/dvc repro
else
	$(BIN)/python -m ehrbert.hub check $(PROFILE)
	eval "$(BIN)/dvc exp run $$($(BIN)/python -m ehrbert.profiles $(PROFILE))"
endif

# Once, on a machine that reaches the Hugging Face hub: the checkpoints a profile names under hub/ (the paper
# profile: BERT-base, BioBERT), into DVC (hub.dvc; `dvc push` shares them). Runs stay offline.
checkpoints: install
	HF_HUB_OFFLINE=0 $(BIN)/python -m ehrbert.hub fetch $(PROFILE)
	$(BIN)/dvc add hub

# The team's tracking server and registry (README, "Scaling out"): `mlflow server` on a PostgreSQL database, with
# artifacts proxied from a shared folder. Every clone then sets MLFLOW_TRACKING_URI=http://<host>:<port>.
SERVER_DB ?= postgresql://mlflow@127.0.0.1:5432/mlflow
SERVER_ARTIFACTS ?= $(CURDIR)/mlartifacts
SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 5000
server: install
	$(BIN)/mlflow server --backend-store-uri $(SERVER_DB) --artifacts-destination $(SERVER_ARTIFACTS) \
		--host $(SERVER_HOST) --port $(SERVER_PORT)

# Lint and format check (settings in pyproject.toml), then the tests.
test: install lint
	$(BIN)/python -m pytest

# Speed, memory and soak of the registered champion after `make run` (reports/benchmark.json and .md), and raw
# notes through it on Spark local[2] beside one process (reports/benchmark_spark.json and .md); the second stage's
# cost (reports/rerank_cost.md) and the gate on it that dev chooses (reports/rerank_gate.md), and what document
# consistency adds to each variant (reports/document_consistency.md).
bench: install
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/rerank_cost.py
	$(BIN)/python benchmarks/rerank_gate.py
	$(BIN)/python benchmarks/spark_batch.py
	$(BIN)/python benchmarks/document_consistency.py

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
