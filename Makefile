# The two user-facing commands (see README):
#   make demo   - set up .venv if needed, run the whole pipeline on the embedded demo corpus
#   make test   - set up .venv if needed, run the linters (make lint) and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ssrl-installed
CORES ?= all

.PHONY: demo test lint test-slurm venv clean-demo

venv: $(STAMP)

# Reinstall when the dependency list changes. The package is installed editable,
# so source edits need no reinstall.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

demo: $(STAMP)
	$(BIN)/snakemake --profile profiles/demo --cores $(CORES)
	@echo
	@cat results/demo/tables/main.md
	@echo
	@echo "Results are under results/demo/: all tables in results/demo/tables/summary.md, plots in results/demo/plots/."

# SSRL_TEST_SLURM=auto: the real-SLURM test runs where SLURM can be started (root, apt-get), else it is skipped.
test: lint
	SSRL_TEST_SLURM=$${SSRL_TEST_SLURM:-auto} $(BIN)/python -m pytest

# ruff (lint + format) and snakefmt as configured in pyproject.toml; the venv rule installs them ('.[dev]').
# To fix: .venv/bin/ruff check --fix . && .venv/bin/ruff format . && .venv/bin/snakefmt Snakefile rules
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile rules

# The real-SLURM test alone (root, apt-get): installs a one-node SLURM, runs the tiny config's DINO stage
# through it, purges it; fails (instead of skipping) where SLURM cannot be started.
test-slurm: $(STAMP)
	SSRL_TEST_SLURM=1 $(BIN)/python -m pytest tests/test_slurm_real.py

clean-demo:
	rm -rf results/demo .snakemake
