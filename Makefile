# Set-up and entry points. `make demo` runs the pipeline on generated demo data;
# `make test` installs everything into .venv and runs lint and the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/.dagster_home
DATA ?= data

.PHONY: install test lint demo dev bench bench-peer bench-floor bench-engines bench-memory \
  bench-scale clean browser postgres screenshot

# pip -qq: errors only. Without it a machine whose pip config names absent index folders
# prints a warning per package (about 20 KB on every fresh install); failures still show.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	$(BIN)/pip install -qq -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check volara_assets tests examples benchmarks

test: $(STAMP) lint browser postgres
	$(BIN)/python -m pytest

# Debian's headless Chromium for tests/test_browser.py (apt, as root; no downloaded builds).
CHROMIUM := /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

# Debian's PostgreSQL server binaries for the `postgres` tests (apt, as root). The tests
# start their own throw-away server from them (tests/conftest.py), never a system service.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb > /dev/null 2>&1 || \
	  (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql)

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
# Runs go through `dg launch` (the CLI Dagster supersedes `dagster asset materialize` and
# `dagster job execute` with). Quiet by default: the run config sets Dagster's console
# logger to INFO (our progress lines and step summaries); `make demo VERBOSE=1` shows
# Dagster's DEBUG event stream too.
LOG_LEVEL := $(if $(VERBOSE),DEBUG,INFO)
RUN_CONFIG := {"loggers": {"console": {"config": {"log_level": "$(LOG_LEVEL)"}}}}
# dg warns unless the project's venv is the active one; the Makefile runs .venv's dg.
DG := VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg
demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml data/demo.zarr/.complete
	@start=$$(date +%s); \
	range=$$($(BIN)/python -m volara_assets.orchestration.report range $(PIPELINE)); \
	$(DG) launch --job demo__observe_affinities --config-json '$(RUN_CONFIG)' && \
	$(DG) launch --assets 'demo/fragments,demo/fragment_nodes,demo/edges,demo/lut,demo/segments' \
	  --partition-range "$$range" --config-json '$(RUN_CONFIG)' && \
	$(BIN)/python -m volara_assets.orchestration.report summary $(PIPELINE) && \
	echo "make demo: $$(( $$(date +%s) - start )) s"

# The neuroglancer view of the pipeline (raw, affinities, fragments, segments), served on
# http://127.0.0.1:$(VIEW_PORT)/v/demo/ until Ctrl-C. The `viewer` links in the UI's
# segments partitions point at port 9015 and open while this runs.
.PHONY: view
VIEW_PORT ?= 9015
view: $(STAMP) data/demo.zarr/.complete
	$(BIN)/python -m volara_assets.viewer $(PIPELINE) --port $(VIEW_PORT)

# The Dagster UI (webserver + daemon) on http://$(HOST):$(PORT), through `dg dev` (which
# Dagster supersedes `dagster dev` with); it loads the project's code location, the
# module workspace.yaml names.
dev: $(STAMP) $(DAGSTER_HOME)/dagster.yaml data/demo.zarr/.complete
	$(DG) dev -h $(HOST) -p $(PORT)

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
	$(PEER_VENV)/bin/pip install -qq --upgrade pip
	$(PEER_VENV)/bin/pip install -qq volara==1.0.5
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

# Issue 13: Dagster bookkeeping on 8,000 and 64,000 tiny blocks (code location load,
# snapshot size, run seconds per block, sensor ticks, observation, GraphQL) with the
# default partitions (auto bricks) and explicit bricks; load and run with one block per
# partition (the old default; its observation takes minutes, so it is not measured);
# then the LUT step's bytes per edge at 10^6 and 10^7 edges.
# SCALE_DAGSTER_YAML: the instance config to copy (e.g. a PostgreSQL one).
SCALE_DAGSTER_YAML ?= dagster.yaml
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/scale.py volumes --blocks 8000 --run-blocks 200 \
	  --configs default bricks --bricks 2 2 2 --dagster-yaml $(SCALE_DAGSTER_YAML)
	$(BIN)/python benchmarks/scale.py volumes --blocks 64000 --run-partitions 20 \
	  --configs default --dagster-yaml $(SCALE_DAGSTER_YAML)
	$(BIN)/python benchmarks/scale.py volumes --blocks 8000 64000 --run-partitions 20 \
	  --configs single --steps load run --dagster-yaml $(SCALE_DAGSTER_YAML)
	$(BIN)/python benchmarks/scale.py lut --edges 1000000 10000000
