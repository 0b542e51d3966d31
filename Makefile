# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
INTEROP := .venv-interop
HOST ?= 127.0.0.1
PORT ?= 8000
DEMO_ARGS ?=

.PHONY: demo test lint typecheck unit interop bench clean tools fuzz

$(BIN)/.installed-all: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[all]'
	touch $@

$(BIN)/.installed-test: pyproject.toml $(BIN)/.installed-all
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(INTEROP)/.installed: tests/interop/requirements.txt
	$(PY) -m venv $(INTEROP)
	PIP_CONSTRAINT= $(INTEROP)/bin/pip install -q -r tests/interop/requirements.txt
	touch $@

## Start the demo server (all middlewares, in-memory backends).
demo: $(BIN)/.installed-all
	$(BIN)/aduib-asgi demo --host $(HOST) --port $(PORT) $(DEMO_ARGS)

tools:
	bash .ci/ensure-tools

lint: $(BIN)/.installed-test
	$(BIN)/ruff check aduib_asgi tests benchmarks
	$(BIN)/mypy

unit: $(BIN)/.installed-test tools
	$(BIN)/pytest

## Lint, type-check and run the whole suite (starts redis-server itself).
test: $(BIN)/.installed-test $(INTEROP)/.installed tools lint
	$(BIN)/pytest

## Long fuzzing runs (docs/fuzzing.md): schemathesis against the demo, atheris per decoder.
fuzz: $(BIN)/.installed-test
	ADUIB_FUZZ=long $(BIN)/pytest tests/fuzz -s --timeout=0

bench: $(BIN)/.installed-test
	$(BIN)/aduib-asgi bench

clean:
	rm -rf $(VENV) $(INTEROP) .mypy_cache .ruff_cache
