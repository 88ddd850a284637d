# vodflow: `make run` starts the whole stack, `make test` passes the tests.
# Both set up everything they need on a fresh machine first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = "0" ] || echo sudo)
# Debian packages: runtime (ffmpeg; nginx, which `vodflow up` puts in front of the web app) and
# test-only (browser, database, load tools).
RUNTIME_PKGS := ffmpeg nginx-light
TEST_PKGS := ffmpeg chromium postgresql nginx-light wrk curl

.PHONY: run test setup setup-test system-runtime system-test clean bench lock upgrade lock-check

run: setup
	$(BIN)/vodflow up

# Two pytest-xdist workers, the machine's two cores (tests/conftest.py shares the modules out);
# `make test PYTEST_WORKERS=0` runs everything in one process.
PYTEST_WORKERS ?= 2

test: setup-test
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

setup: system-runtime $(VENV)/.installed streaming_app/static/vendor/.installed

setup-test: system-test $(VENV)/.installed-test streaming_app/static/vendor/.installed

# Install missing Debian packages with apt-get (root or sudo); say what is missing otherwise.
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && { [ "$$(id -u)" = "0" ] || command -v sudo >/dev/null 2>&1; }; then \
	    echo "installing system packages:$$missing"; \
	    $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "vodflow needs these system packages:$$missing (install them with your package manager)"; exit 1; \
	  fi; \
	fi
endef

system-runtime:
	$(call apt_install,$(RUNTIME_PKGS))

system-test:
	$(call apt_install,$(TEST_PKGS))

# Python packages come from the committed lock (uv.lock, hashes included), never from whatever
# the registry serves today: `uv sync --locked` installs exactly it and refuses a lock that no
# longer matches pyproject.toml. uv itself lives in its own small venv (.tools), because a sync
# removes from .venv everything the lock does not list.
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
UV_SYNC := $(UV) sync --locked --python $(PYTHON)

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q uv==$(UV_VERSION)

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV_SYNC)
	rm -f $(VENV)/.installed-test
	touch $@

$(VENV)/.installed-test: $(UV) pyproject.toml uv.lock
	$(UV_SYNC) --extra test
	touch $(VENV)/.installed $@

# Refresh the lock on purpose: `make lock` after editing pyproject.toml keeps every other pin;
# `make upgrade` (or `make upgrade PACKAGE=prefect`) moves pins to newer releases.
lock: $(UV)
	$(UV) lock --python $(PYTHON)

upgrade: $(UV)
	$(UV) lock --python $(PYTHON) $(if $(PACKAGE),--upgrade-package $(PACKAGE),--upgrade)

# Fails when pyproject.toml and uv.lock disagree (CI runs it before the tests).
lock-check: $(UV)
	$(UV) lock --check --python $(PYTHON)
	npm ci --dry-run --no-audit --no-fund --silent >/dev/null

# Front-end libraries come from npm and are served by the app itself (no CDN).
# `npm ci` installs exactly package-lock.json (and fails when it does not match package.json).
streaming_app/static/vendor/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	mkdir -p streaming_app/static/vendor
	cp node_modules/hls.js/dist/hls.min.js streaming_app/static/vendor/
	cp node_modules/tus-js-client/dist/tus.min.js streaming_app/static/vendor/
	touch $@

bench: setup-test
	$(BIN)/vodflow bench transcode

clean:
	rm -rf $(VENV) $(TOOLS) node_modules streaming_app/static/vendor var .pytest_cache
