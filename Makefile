# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv if missing, installs protege, runs the MNIST-1D quickstart
#   make test   the same set-up, then the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install demo test lint clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install -q -e '.[dev,ray]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/protege run experiments/mnist1d.yaml

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check protege spaces distill estimators search experiments tests
	$(BIN)/mypy protege spaces distill estimators search experiments

clean:
	rm -rf runs .pytest_cache
