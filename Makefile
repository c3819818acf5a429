# One entry point for humans and CI. `make run` and `make test` install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Re-install when pyproject.toml changes.
STAMP := $(VENV)/.installed-$(shell md5sum pyproject.toml | cut -c1-8)
NODE_STAMP := tests/js/node_modules/.installed
# Debian packages the tests need: prometheus and promtool (tests/test_observability.py).
DEB_STAMP := $(VENV)/.debian-packages
# Debian packages of the browser tests: nginx and chromium (tests/test_nginx.py, tests/test_browser.py).
WEB_STAMP := $(VENV)/.debian-nginx-chromium
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -y -q

.PHONY: install run test lint bench bench-micro clean

$(STAMP): pyproject.toml
	@# Debian's python3 needs python3-venv for `-m venv`; install it only when missing.
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || \
		{ $(APT_GET) update && $(APT_GET) install python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $@

install: $(STAMP)

# Massive's official JavaScript client for the compatibility test, from the npm registry.
$(NODE_STAMP): tests/js/package.json tests/js/package-lock.json
	command -v npm >/dev/null || { $(APT_GET) update && $(APT_GET) install nodejs npm; }
	cd tests/js && npm ci --no-audit --no-fund --silent
	touch $@

# Debian's prometheus package, only when prometheus or promtool is missing. Without
# recommends (node-exporter and its collectors); the tests start their own
# prometheus on 127.0.0.1, never the packaged service.
$(DEB_STAMP):
	@mkdir -p $(@D)
	{ command -v prometheus && command -v promtool; } >/dev/null || \
		{ $(APT_GET) update && $(APT_GET) install --no-install-recommends prometheus; }
	touch $@

# Debian's nginx and chromium, only when missing. The tests start their own nginx
# (-p PREFIX, pid file in the prefix), never the packaged service: while installing, a
# policy-rc.d that denies (exit 101) keeps package scripts from starting services, unless
# the machine has one already (Docker images do). /usr/sbin is not on every user's PATH.
$(WEB_STAMP):
	@mkdir -p $(@D)
	{ { command -v nginx || test -x /usr/sbin/nginx; } && command -v chromium; } >/dev/null || { \
		guard=; [ -e /usr/sbin/policy-rc.d ] || { guard=/usr/sbin/policy-rc.d; \
			printf '#!/bin/sh\nexit 101\n' >$$guard && chmod +x $$guard; }; \
		$(APT_GET) update && $(APT_GET) install nginx chromium; status=$$?; \
		[ -z "$$guard" ] || rm -f $$guard; exit $$status; }
	touch $@

run: install
	$(VENV)/bin/fastrelay run

test: install $(NODE_STAMP) $(DEB_STAMP) $(WEB_STAMP)
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check fastrelay tests bench
	$(VENV)/bin/ruff format --check fastrelay tests bench
	$(VENV)/bin/mypy

bench: install
	$(PY) -m bench.run

bench-micro: install
	$(PY) -m pytest -q bench/micro --benchmark-only --benchmark-enable

clean:
	rm -rf $(VENV) tests/js/node_modules .pytest_cache .benchmarks
