# Two commands: `make run` (the default pipeline) and `make test`. Both create/update .venv from this repo.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lmforge-installed
# onnxruntime-web for `lmforge web` and tests/test_web.py, pinned by lmforge/web/package-lock.json
WEB := lmforge/web
WEB_STAMP := $(WEB)/node_modules/.lmforge-installed
PYTEST_ARGS ?= -q
LLAMA_CPP_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: run test install web clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.13.0 is pinned in pyproject.toml: it takes the CPU wheel, not a multi-GB CUDA build.
	# llama-cpp-python (test extra) has no binary wheel on PyPI: pip compiles llama.cpp; LLAMA_CPP_CMAKE_ARGS
	# leaves out what the tests do not load (the multimodal library, OpenMP), ~520 CPU-seconds on this machine.
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# without npm the browser tests skip (they say why); with it, `npm ci` installs exactly the lock file's versions
web: $(WEB_STAMP)

$(WEB_STAMP): $(WEB)/package.json $(WEB)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(WEB) --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: skipping onnxruntime-web (tests/test_web.py will skip)"; fi

run: $(STAMP)
	$(BIN)/lmforge run $(ARGS)

test: $(STAMP) $(WEB_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(WEB)/node_modules artifacts/runs artifacts/prepared artifacts/cache artifacts/mlflow.db
