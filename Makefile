# lpr_sweep: `make sweep` runs the default sweep, `make test` runs the tests; both set up first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DATA_ROOT ?= $(or $(LPR_DATA_ROOT),../shared/data/lprnet)
export LPR_DATA_ROOT := $(abspath $(DATA_ROOT))
# A default sweep whose speeds differ: dense fp32, structured pruning, int8 and distillation (the
# distillation runs once; kd and kd_quant share it through the stage cache).
SWEEP ?= optimization=baseline,prune_structured,prune_structured_quant,prune_structured_kd,prune_structured_kd_quant
REPORT ?=
BENCH ?=
# compile.target of each ISA family's records `make records` tunes: auto is this CPU; an AVX-512 host
# can also tune the AVX2 family's (RECORDS_TARGETS="auto znver3"), since AVX2 code runs on it.
RECORDS_TARGETS ?= auto
TORCH_INDEX ?=

.PHONY: help setup data browser sweep results test test-fast bench bench-sweep records ui clean

help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: anything that asks for plain torch would pull a newer CUDA build. Where pip
	# finds no local CPU wheel (this lab keeps one), PyPI's 2.13.0 is a CUDA build of several GB;
	# TORCH_INDEX=https://download.pytorch.org/whl/cpu takes the CPU build instead.
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup: $(VENV)/.installed ## create .venv with the pinned packages

data: setup ## verify the data root's SHA256SUMS (LPR_DATA_ROOT, default ../shared/data/lprnet)
	@$(PY) -m lpr_sweep.download --check

sweep: data ## run the default sweep, then its report, final and registration (SWEEP="key=a,b ...", REPORT="--no-final ...")
	$(PY) -m lpr_sweep -m $(SWEEP)
	$(PY) -m lpr_sweep.report $(REPORT)

# One pytest worker per core (pytest-xdist), a test file per worker: most tests run sweeps in a
# subprocess that keeps one core busy, so two at a time cut CI's suite from 31 to 20 minutes on
# 2 cores. No test asserts a speed, so sharing the cores changes no outcome.
# The UI test drives Debian's Chromium (Playwright's own browser download is not reachable here).
browser: ## install Debian's chromium for tests/test_ui.py (needs root or sudo)
	@command -v chromium >/dev/null || { $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -q && $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -q chromium; }

test: data browser ## run the whole test suite (what CI runs)
	$(PY) -m pytest -q -n auto --dist loadfile --durations=25

test-fast: data ## the inner loop: every test not marked slow (about 3 minutes on 2 cores)
	$(PY) -m pytest -q -n auto --dist loadfile -m "not slow"

results: setup ## write the latest reported sweep to docs/results/<experiment>-<cpu>.md and README's results table (after make sweep)
	$(PY) -m lpr_sweep.results

bench: data ## every runtime, optimization and hand-built peer side by side in one process (BENCH="--profile --rows ...")
	$(PY) -m lpr_sweep.bench $(BENCH)

bench-sweep: data ## wall time of a 6-trial sweep: serial vs 2-way parallel, cold vs warm stage cache
	$(PY) -m lpr_sweep.bench_sweep

records: data ## re-tune the shipped TVM records (every TVM preset's graph; ~15 min per target) into lpr_sweep/compile_records
	rm -rf .records-cache
	for target in $(RECORDS_TARGETS); do \
	  $(PY) -m lpr_sweep -m optimization=mlc,prune_structured_mlc compile.records=none compile.cache_dir=$(CURDIR)/.records-cache \
	    compile.target=$$target || exit 1; \
	done
	$(PY) -m lpr_sweep.records ship .records-cache

ui: setup ## serve the MLflow UI on http://127.0.0.1:5000 and print the addresses of its runs table and registry
	@$(PY) -c "from lpr_sweep import tracking; print('open the runs table at', tracking.ui_url(tracking.TrackingConfig()))"
	@echo "the model registry (champion alias) is at http://127.0.0.1:5000/#/models/lpr_sweep; if the UI opens on GenAI ('Traces'), click Model training once in the sidebar"
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --default-artifact-root ./mlruns --host 127.0.0.1 --port 5000

clean: ## remove run outputs (keeps .venv)
	rm -rf multirun outputs mlruns mlflow.db
