# Two commands do everything: `make demo` and `make test`. Both create and reuse .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch, installed only when the venv has no torch yet (a GPU user's torch is kept).
TORCH_CPU ?= torch==2.13.0

.PHONY: setup demo test test-slow test-all lint clean bench

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_CPU)"
	$(BIN)/pip install -q -e ".[dev,tensorboard,parquet]"
	@touch $@

setup: $(VENV)/.installed

# The tests also check lmrl against the libraries users come from: TRL's reward functions
# (.[bench]), W&B offline and MLflow (their extras), and LoRA through peft (.[lora]).
$(VENV)/.test-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev,tensorboard,parquet,wandb,mlflow,bench,lora]"
	@touch $@

demo: setup
	$(BIN)/lmrl train --run-dir runs/demo --overwrite

# Tests run in parallel processes (pytest-xdist), one per core up to 4; `make test WORKERS=0` runs
# them in this process. `make test` is the fast tier; the slow tier (`-m slow`: learning targets,
# torch.compile, killed subprocesses) runs in `make test-slow`, and both in `make test-all` and CI.
WORKERS ?= auto
XDIST = $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --maxprocesses 4)

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest -q -m "not slow" $(XDIST)

test-slow: $(VENV)/.test-installed
	$(BIN)/python -m pytest -q -m slow $(XDIST)

test-all: $(VENV)/.test-installed
	$(BIN)/python -m pytest -q $(XDIST)

# lmrl vs TRL's GRPOTrainer and the matmul ceiling (bench/README.md), then the same on long
# rollouts (64-token prompts, 256-token completions, ~20M and ~100M models); about two hours on
# 2 cores. Each runs alone too: bench/vs_trl.py, bench/long_rollouts.py.
$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[bench]"
	@touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python bench/vs_trl.py --lmrl-compile
	$(BIN)/python bench/long_rollouts.py

lint: setup
	$(BIN)/ruff check src tests experiments bench

clean:
	rm -rf $(VENV) runs
