# Set-up and everyday commands. Everything runs from the repository root with the local .venv;
# the packages (models, datasets, engines, utils) are imported from here, never installed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
export OMP_NUM_THREADS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install install-dev test demo bench clean

install: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $@

install-dev: $(DEV_STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

test: $(DEV_STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	bash exp/demo/run_demo.sh

bench: $(DEV_STAMP)
	$(PY) benchmarks/scan.py
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/loader.py

clean:
	rm -rf $(VENV) .pytest_cache
