# Two commands: `make run` (the default pipeline) and `make test`. Both create/update .venv from this repo.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lmforge-installed
PYTEST_ARGS ?= -q
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: run test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.13.0 is pinned in pyproject.toml: it takes the CPU wheel, not a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/lmforge run $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) artifacts/runs artifacts/prepared artifacts/cache artifacts/mlflow.db
