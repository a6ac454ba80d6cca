# Set-up and checks. `make test` works on a fresh machine with Python 3.11 and
# the package registries only.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch; installed before the project so that the project's
# torch range is already satisfied and pip does not fetch a CUDA build.
TORCH_CPU ?= torch==2.13.0

.PHONY: install system-packages run test-model bench test lint typecheck unit clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH_CPU)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Debian packages the tests need: PostgreSQL's server programs, for the task store's tests
# on a throwaway server on loopback (tests/pgserver.py). Skipped where they are installed.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-packages:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v pg_config >/dev/null || \
		{ $(SUDO) apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql; }

# The service on 127.0.0.1:8000 with the embedded defaults (configs/local.yaml), its task
# database first brought to the schema's head (replicas never create tables). The
# variable makes Serve's HTTP proxy install serve_app/http/proxyguard.py as it starts: header
# timeout, connection bounds, bounded request bodies (STEMSPLIT_PROXY_* set the limits).
run: install
	$(BIN)/python -m serve_app migrate configs/local.yaml
	RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.http.proxyguard:install \
		$(BIN)/serve run configs/local.yaml

# A small random-weight htdemucs_6s in data/models, to try the API offline. Its
# stems are noise: it only shows that the service works end to end.
test-model: install
	$(BIN)/python -m models make-test-model data/models --like htdemucs_6s --small

# Issue 17's scenarios against their baselines, one table (benchmarks/suite.py; about 15
# minutes on 2 cores). BENCH_ARGS="--profile full" runs the sizes the issue names.
bench: install
	$(BIN)/python -m benchmarks.suite $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install system-packages
	$(BIN)/pytest

test: lint typecheck unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
