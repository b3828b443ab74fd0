# tp-rag developer commands. `make help` lists them.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
INTEGRATIONS := $(wildcard integrations/*/pyproject.toml)
STAMP := $(VENV)/.tp-rag-installed
DIST ?= dist

# Which torch build `make install` puts into .venv (before tp-rag, so pip keeps it). On Linux
# without an NVIDIA GPU (no nvidia-smi on PATH) it is the CPU build from PyTorch's CPU index: the
# default wheels there bundle CUDA (about 20 nvidia-* packages, several GB). Elsewhere (a GPU
# machine, macOS, Windows) it is pip's default index. Override either, e.g.
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cu126   (a given CUDA build)
#   make install TORCH_INDEX=                                         (pip's default index)
#   make install TORCH="torch==2.6.0"                                 (a given version)
#   make install TORCH_PIP_OPTIONS="--retries 1 --timeout 15"         (pip options, torch step)
# A torch already in .venv is kept; `make print-torch` shows the choice without installing.
TORCH ?= torch
TORCH_PIP_OPTIONS ?=
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
NVIDIA_SMI := $(shell command -v nvidia-smi 2>/dev/null)
ifeq ($(shell uname -s)$(NVIDIA_SMI),Linux)
TORCH_MACHINE := Linux without nvidia-smi
TORCH_INDEX ?= $(TORCH_CPU_INDEX)
else
TORCH_MACHINE := $(if $(NVIDIA_SMI),nvidia-smi found,not Linux)
TORCH_INDEX ?=
endif
TORCH_WHY := $(if $(filter file,$(origin TORCH_INDEX)),$(TORCH_MACHINE),TORCH_INDEX given)
TORCH_FROM := $(if $(TORCH_INDEX),from $(TORCH_INDEX),from pip's default index)

.DEFAULT_GOAL := help
.PHONY: help install print-torch test test-all lint format demo serve bench dist clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml $(INTEGRATIONS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "torch is already in $(VENV): kept (make clean first to change the build)"; \
	else \
		echo "installing $(TORCH) $(TORCH_FROM) ($(TORCH_WHY))"; \
		$(PY) -m pip install -q $(TORCH_PIP_OPTIONS) "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) || exit 1; \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	for p in $(dir $(INTEGRATIONS)); do $(PY) -m pip install -q -e "$$p[test]" || exit 1; done
	# A client the serve tests use (HuggingFaceEndpointEmbeddings), outside the extras: it pins
	# huggingface-hub<2, which transformers 5 cannot use, so without its pins (the client runs
	# on the huggingface-hub already installed).
	$(PY) -m pip install -q --no-deps "langchain-huggingface>=1.2"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install torch (CPU build without a GPU), tp-rag and the integrations

print-torch:  ## say which torch build `make install` would install, and why
	@echo "$(TORCH) $(TORCH_FROM) ($(TORCH_WHY)); set TORCH_INDEX=... or TORCH=... to change"

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
	TP_RAG_MODEL_HINT='make demo MODEL={path}' $(VENV)/bin/tp-rag demo $(if $(MODEL),--model $(MODEL))

serve: $(STAMP)  ## serve embeddings (TEI + OpenAI APIs) on 127.0.0.1:8080 (MODEL=..., ARGS="--port 9000 ...")
	TP_RAG_MODEL_HINT='make serve MODEL={path}' $(VENV)/bin/tp-rag serve $(if $(MODEL),--model $(MODEL)) $(ARGS)

bench: $(STAMP)  ## run the benchmarks on CPU (prints tables; see docs/benchmarks.md)
	$(PY) benchmarks/bench_encoder.py
	$(PY) benchmarks/bench_vs_sentence_transformers.py
	$(PY) benchmarks/bench_throughput.py
	$(PY) benchmarks/bench_ingest.py
	$(PY) benchmarks/bench_fingerprint.py
	$(PY) benchmarks/bench_ray_ingest.py
	$(PY) benchmarks/bench_cpu_dtype.py

dist: $(STAMP)  ## build sdists and wheels of tp-rag and the integrations into dist/, twine-checked
	rm -rf $(DIST)
	$(PY) -m build --outdir $(DIST) .
	for p in $(dir $(INTEGRATIONS)); do $(PY) -m build --outdir $(DIST) $$p || exit 1; done
	$(PY) -m twine check --strict $(DIST)/*

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache
