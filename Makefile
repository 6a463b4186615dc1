# Set-up and entry points. `make demo` runs the pipeline on generated demo data;
# `make test` installs everything into .venv and runs lint and the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/.dagster_home
DATA ?= data

.PHONY: install test lint demo dev bench bench-peer bench-floor bench-engines bench-memory clean \
	browser screenshot

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check volara_assets tests examples benchmarks

test: $(STAMP) lint browser
	$(BIN)/python -m pytest

# Debian's headless Chromium for tests/test_browser.py (apt, as root; no downloaded builds).
CHROMIUM := /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

# Refresh docs/asset_graph.png (the README's picture of the asset graph).
screenshot: $(STAMP) browser
	VOLARA_SCREENSHOT=docs/asset_graph.png $(BIN)/python -m pytest tests/test_browser.py

clean:
	rm -rf $(DATA) .dagster_home

PIPELINE ?= pipelines/demo.yaml
HOST ?= 127.0.0.1
PORT ?= 3000
DAGSTER := $(BIN)/dagster

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

data/demo.zarr/.complete: $(STAMP)
	$(BIN)/python -m volara_assets.demo --path data/demo.zarr
	touch $@

# The whole pipeline on the demo volume, from the command line, then a summary. The input
# is observed first, so that the sensors of `make dev` find nothing new to recompute.
demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml data/demo.zarr/.complete
	@start=$$(date +%s); \
	range=$$($(BIN)/python -m volara_assets.report range $(PIPELINE)); \
	$(DAGSTER) job execute -m volara_assets.definitions -j demo__observe_affinities \
	  > /dev/null && \
	$(DAGSTER) asset materialize -m volara_assets.definitions \
	  --select 'demo/fragments,demo/fragment_nodes,demo/edges,demo/lut,demo/segments' \
	  --partition-range "$$range" && \
	$(BIN)/python -m volara_assets.report summary $(PIPELINE) && \
	echo "make demo: $$(( $$(date +%s) - start )) s"

# The Dagster UI (webserver + daemon) on http://$(HOST):$(PORT).
dev: $(STAMP) $(DAGSTER_HOME)/dagster.yaml data/demo.zarr/.complete
	$(DAGSTER) dev -w workspace.yaml -h $(HOST) -p $(PORT)

# Benchmarks (issue 6) on the (128, 512, 512) noisy demo volume, data/bench.zarr.
# `make bench`: ours through `dagster asset materialize`, 1 and 2 workers, median of 3.
# `make bench-peer`: volara 1.0.5 in its own venv (.venv-peer), A B A B with ours, at 1
# worker (volara serial and multiprocessing, the faster counts) and 2 workers.
# `make bench-engines`: VOI/ARE of the pipeline with each fragments engine.
BENCH_REPEATS ?= 3
PEER_VENV := .venv-peer
PEER_STAMP := $(PEER_VENV)/.installed

$(PEER_STAMP):
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install --quiet --upgrade pip
	$(PEER_VENV)/bin/pip install --quiet volara==1.0.5
	touch $@

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py ours --workers 1 2 --repeats $(BENCH_REPEATS)
	$(BIN)/python benchmarks/floor.py

bench-peer: $(STAMP) $(PEER_STAMP)
	$(BIN)/python benchmarks/bench.py pair --repeats $(BENCH_REPEATS) --workers 1 2 \
	  --peer-python $(PEER_VENV)/bin/python

bench-floor: $(STAMP)
	$(BIN)/python benchmarks/floor.py

bench-engines: $(STAMP)
	$(BIN)/python benchmarks/engines.py

bench-memory: $(STAMP)
	$(BIN)/python benchmarks/memory.py
