# `make run`: set up .venv and reproduce the default pipeline end to end.
# `make test`: set up .venv and run the tests.
# `make docs`: set up .venv and build the documentation site into site/ (mkdocs build --strict).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test test-all docs zoo bench clean

$(STAMP): pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q -e '.[dev,pipeline]'
	touch $(STAMP)

setup: $(STAMP)

# dvc.yaml's commands call `python`: put the venv first on PATH so they get its packages.
run: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro

test: setup
	$(PY) -m pytest -q -n 2 -m "not slow" tests

test-all: setup
	$(PY) -m pytest -q -n 2 tests

docs: setup
	$(PY) -m mkdocs build --strict --site-dir site

zoo: setup
	$(PY) -m benchmarks.zoo

bench: setup
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV)
