# Two entry points for a fresh machine: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
CLI    := $(VENV)/bin/unembargo
# The checkout is the package `unembargo` (temporal-dev/ is unembargo.devstack): tools that
# read imports from files (mypy, import-linter) see it through this tree of links.
TYPING := $(VENV)/typing

.PHONY: setup browser demo test test-unit test-stack check down

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# Debian's chromium and chromium-driver, for the web page's browser test (tests/stack/test_web.py).
CHROMEDRIVER := /usr/bin/chromedriver
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT  := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get
$(CHROMEDRIVER):
	$(APT) install -y -q chromium chromium-driver || { $(APT) update -q && $(APT) install -y -q chromium chromium-driver; }

browser: $(CHROMEDRIVER)

# Bring the local stack up, seed synthetic exposures, unembargo what is eligible.
demo: setup
	$(CLI) dev up
	$(CLI) dev seed
	$(CLI) start --window 80h

# Both test layers: unit (no services, seconds) then stack (the real services).
test: test-unit test-stack

# A unit test takes seconds: one that hangs fails after two minutes, not the stack's fifteen.
test-unit: setup
	$(PY) -m pytest tests/unit -o timeout=120

# Two sessions side by side on one shared stack (each isolated, see tests/stack/conftest.py):
# most of a stack test is waiting on timers and services, so two overlap well on two cores.
test-stack: setup browser
	$(PY) -m pytest tests/stack -n 2 --dist loadfile

$(TYPING)/unembargo: | setup
	mkdir -p $@
	for d in __init__.py models workflows activities adapters engine workers client cli web; do \
		ln -sfn $(CURDIR)/$$d $@/$$d; done
	ln -sfn $(CURDIR)/temporal-dev $@/devstack

# Lint, format, types and the import rules of docs/architecture.md.
check: setup $(TYPING)/unembargo
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	cd $(TYPING) && $(CURDIR)/$(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml -p unembargo
	PYTHONPATH=$(TYPING) $(VENV)/bin/lint-imports --config pyproject.toml

down:
	$(CLI) dev down
