# Every target bootstraps its own virtual environment (.venv) on a fresh machine.
# torch is pinned to the CPU build 2.13.0 that these machines install from local disk;
# on a GPU machine install the torch you need first (PYTHON=... make setup uses it).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-all lint bench rl-compare recipe-runs tiny-model eval clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# The main job: GDPO on the embedded tiny model (offline, CPU): the reward curve and the held-out
# accuracy before/after training (outputs/gdpo_tiny/report.{json,png}). Extra recipe flags:
#   make demo DEMO_ARGS="--train_minutes 2 --eval_samples 50"
DEMO_ARGS ?=
demo: $(STAMP)
	$(BIN)/python recipes/gdpo_llada.py $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

test-all: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check dlm_trl plugins rewards recipes tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/estimator_variance.py
	$(BIN)/python benchmarks/reward_throughput.py

# The three trainers under one wall-clock budget, 3 seeds, 2 runs at a time (~55 min on 2 CPU cores).
rl-compare: $(STAMP)
	$(BIN)/python benchmarks/rl_compare.py

# The three recipes with no arguments, 3 seeds each, one run at a time (~70 min on 2 CPU cores).
recipe-runs: $(STAMP)
	$(BIN)/python benchmarks/recipe_runs.py

# Rebuild the embedded model (fixed seed; ~20-30 minutes on 2 CPU cores).
tiny-model: $(STAMP)
	$(BIN)/python -m dlm_trl.models.tiny.train

eval: $(STAMP)
	$(BIN)/dlm-trl eval --model tiny --task countdown --num-samples 200 --seed 0

clean:
	rm -rf $(VENV) .pytest_cache outputs
