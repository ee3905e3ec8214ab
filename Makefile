# Two entry points (see README.md): `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export SIMDEX_DATA ?= $(abspath ../shared/data)

.PHONY: run test bench bench-startup bench-crash demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[server,embed]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[bench,test]'
	touch $@

# Serves ./simdex-data (created on first use, with the WordNet demo collection) and prints the console URL.
run: $(VENV)/.installed-run
	$(BIN)/simdex serve --path ./simdex-data --demo

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed-bench
	$(BIN)/python -m simdex.bench ann

bench-startup: $(VENV)/.installed-bench
	$(BIN)/python -m simdex.bench startup

bench-crash: $(VENV)/.installed-test
	$(BIN)/python -m simdex.bench crash --kills 200

# The ANN demo: index WordNet, run its queries, print recall and latency.
demo: $(VENV)/.installed-run
	$(BIN)/simdex demo

clean:
	rm -rf $(VENV) bench-results build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
