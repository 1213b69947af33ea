# Two entry points for a fresh machine: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
CLI    := $(VENV)/bin/unembargo

.PHONY: setup demo test down

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

test: setup
	$(PY) -m pytest

down:
	$(CLI) dev down
