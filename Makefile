# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
INTEROP := .venv-interop
CONFORMANCE := .venv-conformance
HOST ?= 127.0.0.1
PORT ?= 8000
DEMO_ARGS ?=

TLS_DIR ?= .demo-tls
TLS_PORT ?= 8443

.PHONY: demo demo-tls test lint typecheck unit interop bench soak clean tools conformance fuzz

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

## The demo over HTTPS with client certificates (throwaway trustme CA in $(TLS_DIR)).
demo-tls: $(BIN)/.installed-all
	$(BIN)/python -m aduib_asgi.demo.certs $(TLS_DIR) --host $(HOST) --port $(TLS_PORT)
	$(BIN)/aduib-asgi demo --host $(HOST) --port $(TLS_PORT) \
		--tls-cert $(TLS_DIR)/server.pem --tls-key $(TLS_DIR)/server.key \
		--tls-client-ca $(TLS_DIR)/ca.pem --mtls-role spiffe://demo.aduib/admin=admin $(DEMO_ARGS)

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

$(CONFORMANCE)/.installed: pyproject.toml conformance/requirements.txt
	$(PY) -m venv $(CONFORMANCE)
	$(CONFORMANCE)/bin/pip install -q -e . -r conformance/requirements.txt
	touch $@

## The peers' compression suites (Starlette, starlette-compress; downloaded now) against ours.
conformance: $(CONFORMANCE)/.installed
	$(CONFORMANCE)/bin/python conformance/run.py

## Long fuzzing runs (docs/fuzzing.md): schemathesis against the demo, atheris per decoder.
fuzz: $(BIN)/.installed-test
	ADUIB_FUZZ=long $(BIN)/pytest tests/fuzz -s --timeout=0

bench: $(BIN)/.installed-test
	$(BIN)/aduib-asgi bench

## Soak: a demo process under 100,000 mixed requests, then 1,000 held streams (docs/reliability.md).
soak: $(BIN)/.installed-test
	$(BIN)/python benchmarks/soak.py --plot soak.png --json soak.json

clean:
	rm -rf $(VENV) $(INTEROP) $(CONFORMANCE) .mypy_cache .ruff_cache
