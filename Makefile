# Set-up and checks. `make demo` and `make test` each do the whole set-up on a fresh machine.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: setup quickstart demo test lint typecheck unit slow clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and exactly this version: any wider spec pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

quickstart: setup
	$(BIN)/pixelreasoner quickstart --out runs/quickstart

demo: setup
	$(BIN)/pixelreasoner demo --out runs/demo

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/python -m pytest -m "not slow and not gpu" -n 2

slow: setup
	$(BIN)/python -m pytest -m "slow" -n 2

test: lint typecheck unit

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache .hypothesis
