# Two entry points for a fresh machine: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
CLI    := $(VENV)/bin/unembargo
# The checkout is the package `unembargo` (temporal-dev/ is unembargo.devstack): tools that
# read imports from files (mypy, import-linter) see it through this tree of links.
TYPING := $(VENV)/typing

.PHONY: setup demo test test-unit test-stack check down

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

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
test-stack: setup
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
