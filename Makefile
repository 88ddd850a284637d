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

.PHONY: run test setup setup-test system-runtime system-test clean bench

run: setup
	$(BIN)/vodflow up

test: setup-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

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

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/bin/python pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $(VENV)/.installed $@

# Front-end libraries come from npm and are served by the app itself (no CDN).
streaming_app/static/vendor/.installed: package.json
	npm install --no-audit --no-fund --silent
	mkdir -p streaming_app/static/vendor
	cp node_modules/hls.js/dist/hls.min.js streaming_app/static/vendor/
	cp node_modules/tus-js-client/dist/tus.min.js streaming_app/static/vendor/
	touch $@

bench: setup-test
	$(BIN)/vodflow bench transcode

clean:
	rm -rf $(VENV) node_modules streaming_app/static/vendor var .pytest_cache
