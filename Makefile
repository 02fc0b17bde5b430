# Set-up and common tasks. Every target creates the virtual environment on first use:
# torch 2.13.0 first (so that pip keeps that build), then flowext with all its extras.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo docs bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

# Uniform against variational dequantization on the digits: two trainings side by side, then a
# table of test bits per dimension (about 1 to 2 minutes on 2 CPU cores).
demo: $(STAMP)
	$(BIN)/python examples/compare_dequantization.py --out runs/demo

# Build the documentation site into site/, MathJax included, failing on any warning.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Time flowext's layers against hand-written formulas, torch and nflows; prints Markdown tables.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench_layers

clean:
	rm -rf $(VENV) site build *.egg-info .pytest_cache .hypothesis
