# One place for the commands the README gives. PYTHON picks the interpreter that creates the venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup app test test-fast lint format train bench bench-quick bench-store

setup: $(STAMP)

$(STAMP): requirements.txt requirements-embedded.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-embedded.txt
	touch $(STAMP)

app: setup
	GRADIO_ANALYTICS_ENABLED=False $(BIN)/python app.py $(ARGS)

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not browser"

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

train: setup
	$(BIN)/python -m rlhf train --preset offline --steps 20 --out runs/offline-$$(date +%Y%m%d-%H%M%S)

bench: setup
	$(BIN)/python -m bench --out BENCHMARKS.md $(ARGS)

bench-quick: setup
	$(BIN)/python -m bench --quick --out runs/BENCHMARKS-quick.md $(ARGS)

bench-store: setup
	$(BIN)/python -m bench.feedback_store $(ARGS)
