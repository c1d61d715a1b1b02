# DR Panel: `make demo` runs the panel with demo data, `make test` runs every test, `make check` the fast tier.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
AXE := tests/browser/axe/node_modules/axe-core/axe.min.js

.PHONY: demo test check chaos bench audit-deps lint chromium clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[embedded,dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) manage.py serve --demo

# Tests run on JOBS pytest-xdist workers, each with its own test database and Redis database
# (drpanel/testing.py). The suite mostly waits on PostgreSQL, worker processes and the browser,
# so more workers than cores pays off: on two cores 6 measured faster than 4 and 8.
JOBS ?= 6
PYTEST_PARALLEL := -n $(JOBS) --dist loadgroup

# The slowest tests are listed at the end of each run (CI's log included): where the next minute is.
test: $(STAMP) chromium $(AXE)
	$(PY) -m pytest $(PYTEST_PARALLEL) --durations=25

# The fast tier before a commit: ruff, then every test that starts no real process, service or browser.
check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_PARALLEL) -m "not slow and not browser and not chaos"

# The fault campaign alone (it also runs in `make test`): real processes killed, Redis dropped, a full disk, S3 down.
chaos: $(STAMP)
	$(PY) -m pytest -m chaos

# Every benchmark in one run, side by side with the raw tools: a table of ratios against the goals,
# also written to bench-results/<timestamp>.md and .json. SCALE=full for the issue's full sizes.
SCALE ?= default
bench: $(STAMP)
	$(PY) bench/run.py --scale $(SCALE)

# Known vulnerabilities in the installed dependencies (needs the PyPI JSON API or OSV; --strict
# fails when a package could not be checked, rather than reporting it clean).
audit-deps: $(STAMP)
	$(VENV)/bin/pip-audit --skip-editable --strict --progress-spinner off

# ruff, then the layers of DESIGN.md (the import-linter contracts in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# The accessibility check of the browser tests reads axe-core (version pinned in tests/browser/axe/package.json
# and its lock file) from node_modules: npm fetches it here, never at test time.
$(AXE): tests/browser/axe/package.json tests/browser/axe/package-lock.json
	npm ci --prefix tests/browser/axe --no-audit --no-fund --loglevel=error
	@touch $(AXE)

# Browser tests drive Debian's Chromium; Playwright never downloads a browser.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "make test needs /usr/bin/chromium: install Debian's 'chromium' package (sudo apt-get install chromium)"; \
	    exit 1; \
	  fi; \
	fi

clean:
	rm -rf $(VENV) var .pytest_cache tests/browser/axe/node_modules
