# teambot: `make run` starts it on the embedded defaults, `make test` runs the tests.
# Both create .venv and install what is missing first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned to its CPU build: an unpinned torch pulls a CUDA build of several GB.
# (On the project's machines pip finds torch 2.13.0 CPU on local disk; elsewhere, e.g. in the
# Dockerfile, TORCH_INDEX points pip at PyTorch's CPU wheel index.)
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?=
STAMP  := $(VENV)/.installed

.PHONY: install run test index bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	@echo "installing teambot (llama-cpp-python compiles llama.cpp the first time: about 5 minutes)"
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

index: install
	$(BIN)/teambot index

run: index
	$(BIN)/teambot serve

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) data .pytest_cache
