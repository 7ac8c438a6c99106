# Set-up and checks. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A CPU build where one lies on disk (pip's find-links); override for a CUDA machine,
# e.g. `make install TORCH_SPEC='torch>=2.4'`.
TORCH_SPEC ?= torch==2.13.0
# Tests run without network where the kernel lets us make a namespace.
OFFLINE := $(shell unshare -n true 2>/dev/null && echo "unshare -n")

.PHONY: install system-deps demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

system-deps:
	bash scripts/install-system-deps.sh

install: $(VENV)/.installed system-deps

demo: $(VENV)/.installed
	$(BIN)/fractalflow generate "ankle boot" "sneaker" "bag" "dress" --num-images 4 --seed 0 --upscale 4 -o demo.png
	@echo "demo image: $(CURDIR)/demo.png"

test: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(OFFLINE) $(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks scripts

bench: install
	$(BIN)/python benchmarks/foundation.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
