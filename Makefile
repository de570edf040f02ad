# omnirelay — every target installs what it needs into .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 50051
PROFILE ?= development

.DEFAULT_GOAL := help
.PHONY: help setup protos protos-check run demo test test-python test-node lint typecheck bench docker clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv and install omnirelay with its dev tools

protos: $(STAMP) ## Regenerate the Python code from protos/ into clients/python/omnirelay_client/v1
	$(PY) scripts/gen_protos.py

protos-check: $(STAMP) ## Fail when the committed generated code differs from protos/
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PY) scripts/gen_protos.py "$$tmp/v1" >/dev/null && \
	if diff -r "$$tmp/v1" clients/python/omnirelay_client/v1 --exclude=__pycache__; then \
	  echo "generated code is up to date"; \
	else \
	  echo "generated code is stale: run 'make protos' and commit the result" >&2; exit 1; \
	fi

run: $(STAMP) ## Serve on 127.0.0.1:$(PORT) with the $(PROFILE) profile
	$(VENV)/bin/omnirelay serve --host 127.0.0.1 --port $(PORT) --profile $(PROFILE)

demo: $(STAMP) ## Run the provider simulator and omnirelay in front of it, and call every provider
	scripts/demo.sh

test: test-python test-node ## Run every test (Python, then the Node.js client)

test-python: $(STAMP)
	@set +e; $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest ran no test: that is a failure" >&2; exit 1; fi; exit $$rc

test-node: $(STAMP)
	cd clients/node && npm ci --no-audit --no-fund --loglevel=error && \
	  RELAY_SERVER_BIN=$(CURDIR)/$(VENV)/bin/omnirelay npm test

lint: $(STAMP) ## ruff (lint and format check) and mypy strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(MAKE) --no-print-directory typecheck

typecheck: $(STAMP) ## mypy strict on hand-written code
	$(VENV)/bin/mypy server/omnirelay clients/python/omnirelay_client tests bench scripts

bench: $(STAMP) ## Benchmark omnirelay vs a bare grpc.aio echo and vs calling the simulator directly
	$(PY) -m bench.run $(BENCH_ARGS)

docker: ## Build the container image
	docker build -t omnirelay:latest .

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache clients/node/node_modules
