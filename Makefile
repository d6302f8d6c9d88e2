# The only entry point. Every target bootstraps what it needs; `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT := $(shell infra/find-python.sh)
VENV        := .venv
TOOLS       := .venv-tools
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
TOOLS_STAMP := $(TOOLS)/.installed
CHECKOV_VENV := $(TOOLS)/checkov
export PYTHONPATH := functions:infra:.
export AWS_DEFAULT_REGION ?= eu-central-1
ENV         ?= dev

.PHONY: help venv tools format lint typecheck lint-template test test-unit test-integration test-e2e \
        pr demo serve bench bench-smoke build deploy put-secret clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): requirements-dev.txt functions/requirements.txt
	@echo "==> virtualenv $(VENV) with $(PYTHON_BOOT)"
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@

# checkov pins a boto3 that aws-sam-cli cannot share, so it gets its own virtualenv inside $(TOOLS).
# pip here prints harmless "Location ... is ignored" lines; filter them, keep pip's exit status.
$(TOOLS_STAMP): requirements-tools.txt requirements-checkov.txt
	@echo "==> virtualenvs $(TOOLS) (cfn-lint, sam) and $(CHECKOV_VENV) (checkov)"
	@test -x $(TOOLS)/bin/python || $(PYTHON_BOOT) -m venv $(TOOLS)
	@set -o pipefail; $(TOOLS)/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v 'is ignored: it is neither' || test $${PIPESTATUS[0]} -eq 0
	@set -o pipefail; $(TOOLS)/bin/python -m pip install -q -r requirements-tools.txt 2>&1 | grep -v 'is ignored: it is neither' || test $${PIPESTATUS[0]} -eq 0
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON_BOOT) -m venv $(CHECKOV_VENV)
	@set -o pipefail; $(CHECKOV_VENV)/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v 'is ignored: it is neither' || test $${PIPESTATUS[0]} -eq 0
	@set -o pipefail; $(CHECKOV_VENV)/bin/python -m pip install -q -r requirements-checkov.txt 2>&1 | grep -v 'is ignored: it is neither' || test $${PIPESTATUS[0]} -eq 0
	@touch $@

venv: $(STAMP) ## create the dev virtualenv
tools: $(TOOLS_STAMP) ## create the template-checkers virtualenv

format: $(STAMP) ## format and autofix
	$(VENV)/bin/ruff format functions infra tests
	$(VENV)/bin/ruff check --fix functions infra tests

lint: $(STAMP) ## ruff + mypy
	$(VENV)/bin/ruff check functions infra tests
	$(VENV)/bin/ruff format --check functions infra tests
	$(VENV)/bin/mypy

lint-template: $(TOOLS_STAMP) ## cfn-lint, checkov and sam validate on template.yaml
	$(TOOLS)/bin/cfn-lint template.yaml
	$(TOOLS)/bin/checkov --quiet --compact --config-file .checkov.yaml
	$(TOOLS)/bin/sam validate --lint --template template.yaml --region $(AWS_DEFAULT_REGION)

test: lint lint-template ## everything CI runs: lint, template checks, all tests
	$(PY) -m pytest tests/unit tests/integration tests/e2e

test-unit: $(STAMP) ## unit tests only (no sockets)
	$(PY) -m pytest tests/unit

test-integration: $(STAMP) ## integration tests (moto, emulator)
	$(PY) -m pytest tests/integration

test-e2e: $(STAMP) ## end-to-end tests (local stack, headless Chromium)
	$(PY) -m pytest tests/e2e

pr: format test ## format, lint, test

serve: $(STAMP) ## run the whole stack locally without Docker (Ctrl-C stops it)
	$(PY) -m local_stack serve

demo: $(STAMP) ## the whole journey on the local stack; exits 0 only if every step held
	$(PY) -m local_stack demo

bench: $(STAMP) ## benchmarks against fast_bitrix24 and b24pysdk (writes tests/bench/results.*)
	$(PY) -m tests.bench

bench-smoke: $(STAMP) ## a 30-second smoke run of the benchmarks
	$(PY) -m tests.bench --smoke

build: $(TOOLS_STAMP) ## sam build (python3.13, arm64)
	PATH="$(dir $(PYTHON_BOOT)):$$PATH" $(TOOLS)/bin/sam build --template template.yaml

deploy: build ## sam deploy with samconfig.toml's $(ENV) profile
	$(TOOLS)/bin/sam deploy --config-env $(ENV)

put-secret: $(STAMP) ## store the Bitrix24 client secret in Secrets Manager (prompts, never echoes)
	$(PY) -m operator_tools.put_secret --env $(ENV)

clean: ## remove virtualenvs, caches and local state
	rm -rf $(VENV) $(TOOLS) .local .aws-sam .pytest_cache .mypy_cache .ruff_cache
