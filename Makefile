# teambot: `make run` starts it on the embedded defaults, `make test` runs the tests.
# Both create .venv and install what is missing first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned to its CPU build: an unpinned torch pulls a CUDA build of several GB.
# (On the project's machines pip finds torch 2.13.0 CPU on local disk; the Dockerfile sets
# TORCH_INDEX to PyTorch's CPU wheel index.)
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?=

.PHONY: install install-dev run index test bench clean

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	@echo "installing teambot (the first time, llama-cpp-python compiles llama.cpp: about 5 minutes)"
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

index: install
	$(BIN)/teambot index

run: index
	$(BIN)/teambot serve

test: install-dev
	$(BIN)/python -m pytest

bench: install-dev
	$(BIN)/python -m bench.indexing
	$(BIN)/python -m bench.retrieval
	$(BIN)/python -m bench.ttft

clean:
	rm -rf $(VENV) data .pytest_cache
