# One entry point for humans and CI. `make run` and `make test` install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Re-install when pyproject.toml changes.
STAMP := $(VENV)/.installed-$(shell md5sum pyproject.toml | cut -c1-8)
NODE_STAMP := tests/js/node_modules/.installed
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

run: install
	$(VENV)/bin/fastrelay run

test: install $(NODE_STAMP)
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
