# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# torch is installed first and pinned: any looser spec pulls the newest CUDA build (gigabytes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "squiggles needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/squiggles demo

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

$(VENV)/.installed-bench: $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m pip install --quiet --no-deps torchattacks==3.5.1
	touch $@

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/bench_attacks.py --repeats 3 > bench-attacks.json

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) demo-out .pytest_cache
