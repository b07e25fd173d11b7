# Both targets create the virtual environment on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kmim demo --out runs/demo

test: $(STAMP)
	$(BIN)/ruff format --check kmim tests benchmarks scripts
	$(BIN)/ruff check kmim tests benchmarks scripts
	$(BIN)/python scripts/typecheck.py
	$(BIN)/pytest -q -n auto --dist worksteal  # tests run one torch thread each: one worker per core

test-all: $(STAMP)
	$(BIN)/pytest -q -n auto --dist worksteal -m ''

lint: $(STAMP)
	$(BIN)/ruff format kmim tests benchmarks scripts
	$(BIN)/ruff check --fix kmim tests benchmarks scripts

clean:
	rm -rf $(VENV) runs .pytest_cache
