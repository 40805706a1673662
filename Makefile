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

# The main job: GDPO on the embedded tiny model (offline, CPU), a shorter budget than the recipe's
# 30-minute default: 20 optimizer steps (~27 s each on 2 idle cores) with validation on 200 validation
# prompts at steps 0, 5, ..., 20, and the test accuracy (400 prompts) before training, of the final model
# and of the best-on-validation one — about 13 minutes on 2 idle cores, under 15. Writes the reward and
# validation curves and the test accuracies to outputs/gdpo_demo/report.{json,png}. Other budgets:
#   make demo DEMO_ARGS="--max_steps 5 --val_samples 50 --eval_samples 100"
DEMO_ARGS ?= --max_steps 20 --eval_every_steps 5 --val_samples 200 --eval_samples 400 --output_dir outputs/gdpo_demo
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

# The protocol of record: the three recipes with no arguments, 3 seeds each, one run at a time, each ~30 min
# (fixed max_steps), step chosen on validation only; test accuracy final and best-on-validation, validation
# curves (9 runs, ~4.5 h on 2 CPU cores). Tabulate finished runs only: ... --summarize_only --out_dir DIR.
recipe-runs: $(STAMP)
	$(BIN)/python benchmarks/recipe_runs.py --docs docs/recipe_runs

# Rebuild the embedded model (fixed seed; ~20-30 minutes on 2 CPU cores).
tiny-model: $(STAMP)
	$(BIN)/python -m dlm_trl.models.tiny.train

eval: $(STAMP)
	$(BIN)/dlm-trl eval --model tiny --task countdown --num-samples 200 --seed 0

clean:
	rm -rf $(VENV) .pytest_cache outputs
