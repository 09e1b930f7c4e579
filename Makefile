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

# llama.cpp is compiled for AVX2, not for the build machine (-march=native): on CPUs with AMX
# (Sapphire Rapids and later) llama.cpp 0.3.36's AMX kernels crash in the first matrix product
# (seen here: SIGSEGV in ggml_backend_amx_mul_mat), and a wheel built natively on one machine can
# fail on another. The wheel is kept in LLAMA_WHEELS, so later installs take a minute.
LLAMA_VERSION    := 0.3.36
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
LLAMA_WHEELS     ?= $(HOME)/.cache/teambot/llama-cpp-python-$(LLAMA_VERSION)-avx2

# The admin console's browser test drives Debian's chromium (Playwright's own browser download
# needs the internet); `make test` installs it when it is missing.
CHROMIUM ?= /usr/bin/chromium
# The PostgreSQL tests start a throwaway server from Debian's postgresql binaries (tests/postgres.py);
# `make test` installs the package when they are missing.
POSTGRES_INITDB := /usr/lib/postgresql/*/bin/initdb

.PHONY: install install-dev run index postgresql test bench clean

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	@ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || { \
	  echo "compiling llama.cpp for llama-cpp-python $(LLAMA_VERSION) (the first time on this machine: about 5 minutes)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --quiet --no-deps --no-cache-dir -w $(LLAMA_WHEELS) llama-cpp-python==$(LLAMA_VERSION); }
	$(BIN)/pip install --quiet --find-links $(LLAMA_WHEELS) 'llama-cpp-python[server]==$(LLAMA_VERSION)'
	@echo "installing teambot"
	$(BIN)/pip install --quiet --find-links $(LLAMA_WHEELS) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

index: install
	$(BIN)/teambot index

# MODEL: a model short name (`teambot models list`) to pull once and serve instead of the shipped SmolLM2;
# a model that can answer also restates each question as search queries (bot.rewrite_question) and
# judges the passages below the relevance bar (rag.model_floor).
MODEL ?=
MODEL_FLOOR ?= 0.2
REWRITE ?= true

run: index
ifneq ($(MODEL),)
	$(BIN)/teambot models pull $(MODEL)
	TEAMBOT_INFERENCE__MODEL_PATH=$(MODEL) TEAMBOT_RAG__MODEL_FLOOR=$(MODEL_FLOOR) TEAMBOT_BOT__REWRITE_QUESTION=$(REWRITE) $(BIN)/teambot serve
else
	$(BIN)/teambot serve
endif

$(CHROMIUM):
	@echo "installing Debian's chromium for the admin console's browser test"
	@SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -qq chromium >/dev/null 2>&1 || { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }
	@test -x $(CHROMIUM) || { echo "chromium is still missing at $(CHROMIUM): install Debian's chromium package"; exit 1; }

postgresql:
	@ls $(POSTGRES_INITDB) >/dev/null 2>&1 || { \
	  echo "installing Debian's postgresql for the tests' PostgreSQL server"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -qq postgresql >/dev/null 2>&1 || { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq postgresql; }; }
	@ls $(POSTGRES_INITDB) >/dev/null 2>&1 || { echo "PostgreSQL's initdb is still missing at $(POSTGRES_INITDB): install Debian's postgresql package"; exit 1; }

test: install-dev $(CHROMIUM) postgresql
	$(BIN)/python -m pytest

# LMDEPLOY_CLONE=path/to/a/clone/of/InternLM/lmdeploy adds the second question set.
LMDEPLOY_CLONE ?=
# BEFORE=path/to/another/checkout measures the hostile-input and recovery benchmarks beside it.
BEFORE ?=

bench: install-dev
	$(BIN)/python -m bench.eval --set knowledge --calibrate
	$(if $(LMDEPLOY_CLONE),$(BIN)/python -m bench.eval --set lmdeploy-docs --corpus $(LMDEPLOY_CLONE) --calibrate)
	$(BIN)/python -m bench.eval --set knowledge --variants --label variants
	$(BIN)/python -m bench.embedders
	$(BIN)/python -m bench.indexing
	$(BIN)/python -m bench.retrieval
	$(BIN)/python -m bench.large_collection
	$(BIN)/python -m bench.ttft
	$(BIN)/python -m bench.reindex
	$(BIN)/python -m bench.shared_state
	$(BIN)/python -m bench.hostile_http $(if $(BEFORE),--before $(BEFORE))
	$(BIN)/python -m bench.llm_recovery $(if $(BEFORE),--before $(BEFORE))
	$(if $(BEFORE),$(BIN)/python -m bench.hostile_files --before $(BEFORE))

clean:
	rm -rf $(VENV) data .pytest_cache
