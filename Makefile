# tp-rag developer commands. `make help` lists them.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
INTEGRATIONS := $(wildcard integrations/*/pyproject.toml)
STAMP := $(VENV)/.tp-rag-installed

.DEFAULT_GOAL := help
.PHONY: help install test test-all lint format demo bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml $(INTEGRATIONS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	for p in $(dir $(INTEGRATIONS)); do $(PY) -m pip install -q -e "$$p[test]" || exit 1; done
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install tp-rag, its extras and the integrations (editable)

test: $(STAMP)  ## run the test suites (core, integrations) on CPU
	$(PY) -m pytest tests
	for p in $(dir $(INTEGRATIONS)); do (cd $$p && $(abspath $(PY)) -m pytest tests) || exit 1; done

test-all: $(STAMP)  ## also run slow tests
	$(PY) -m pytest tests -m "slow or not slow"

lint: $(STAMP)  ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)  ## ruff format and autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: $(STAMP)  ## open the web demo on 127.0.0.1:7860 (MODEL=/path/to/local/model to run offline)
	$(VENV)/bin/tp-rag demo $(if $(MODEL),--model $(MODEL))

bench: $(STAMP)  ## run the benchmarks on CPU (prints tables; see docs/benchmarks.md)
	$(PY) benchmarks/bench_encoder.py
	$(PY) benchmarks/bench_vs_sentence_transformers.py
	$(PY) benchmarks/bench_throughput.py
	$(PY) benchmarks/bench_ingest.py
	$(PY) benchmarks/bench_fingerprint.py

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache
