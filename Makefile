# One entry point for humans and CI. `make test` installs everything it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-8)
NODE_STAMP := tests/js/node_modules/.installed

.PHONY: install run test lint bench bench-micro clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $@

install: $(STAMP)

# The official JavaScript client, for the compatibility test (npm registry).
$(NODE_STAMP): tests/js/package.json
	cd tests/js && npm install --no-audit --no-fund --silent
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
