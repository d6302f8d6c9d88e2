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
export PYTHONPATH := functions:client/src:infra:.
export AWS_DEFAULT_REGION ?= eu-central-1
ENV         ?= dev
# pip prints harmless "Location ... is ignored" lines in some sandboxes; drop them, keep pip's status.
PIP_FILTER  := 2>&1 | grep -v 'is ignored: it is neither'; test $${PIPESTATUS[0]} -eq 0
# SAM CLI: no usage telemetry from CI or operators' machines.
SAM         := SAM_CLI_TELEMETRY=0 $(TOOLS)/bin/sam

.PHONY: help venv tools format lint typecheck lint-template test test-unit test-integration test-e2e \
        iam-check pr demo serve bench bench-smoke build client preflight deploy deploy-rehearsal put-secret clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): requirements-dev.txt functions/requirements.txt
	@echo "==> virtualenv $(VENV) with $(PYTHON_BOOT)"
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip $(PIP_FILTER)
	@$(PY) -m pip install -q -r requirements-dev.txt $(PIP_FILTER)
	@touch $@

# checkov pins a boto3 that aws-sam-cli cannot share, so it gets its own virtualenv inside $(TOOLS).
$(TOOLS_STAMP): requirements-tools.txt requirements-checkov.txt
	@echo "==> virtualenvs $(TOOLS) (cfn-lint, sam) and $(CHECKOV_VENV) (checkov)"
	@test -x $(TOOLS)/bin/python || $(PYTHON_BOOT) -m venv $(TOOLS)
	@$(TOOLS)/bin/python -m pip install -q --upgrade pip $(PIP_FILTER)
	@$(TOOLS)/bin/python -m pip install -q -r requirements-tools.txt $(PIP_FILTER)
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON_BOOT) -m venv $(CHECKOV_VENV)
	@$(CHECKOV_VENV)/bin/python -m pip install -q --upgrade pip $(PIP_FILTER)
	@$(CHECKOV_VENV)/bin/python -m pip install -q -r requirements-checkov.txt $(PIP_FILTER)
	@touch $@

venv: $(STAMP) ## create the dev virtualenv
tools: $(TOOLS_STAMP) ## create the template-checkers virtualenv

format: $(STAMP) ## format and autofix
	$(VENV)/bin/ruff format functions client infra tests
	$(VENV)/bin/ruff check --fix functions client infra tests

# The layer contract (import-linter, [tool.importlinter] in pyproject.toml) and the dead-code check
# (vulture with the reviewed vulture_whitelist.py) run from the tools virtualenv.
lint: $(STAMP) $(TOOLS_STAMP) ## ruff (incl. complexity <= 12) + mypy + layer contract + dead code
	$(VENV)/bin/ruff check functions client infra tests
	$(VENV)/bin/ruff format --check functions client infra tests
	$(VENV)/bin/mypy
	$(TOOLS)/bin/lint-imports --no-cache
	$(TOOLS)/bin/vulture functions client/src vulture_whitelist.py

# All three run offline: checkov with skip-download (.checkov.yaml) and no update check; sam validate
# needs a region but no credentials.
lint-template: $(TOOLS_STAMP) ## cfn-lint, checkov and sam validate on template.yaml
	$(TOOLS)/bin/cfn-lint template.yaml
	CKV_SKIP_PACKAGE_UPDATE_CHECK=true $(CHECKOV_VENV)/bin/checkov --config-file .checkov.yaml
	$(SAM) validate --lint --template template.yaml --region $(AWS_DEFAULT_REGION)

# The suites record every AWS call each function makes (--aws-call-log); the IAM check then evaluates
# them, plus the calls AWS services make for the roles, against the SAM-transformed template.
IAM_CALLS := .local/iam-calls.jsonl

test: lint lint-template ## everything CI runs: lint, template checks, all tests, the IAM check, the deploy rehearsal
	@rm -f $(IAM_CALLS)
	$(PY) -m pytest tests --ignore=tests/bench --aws-call-log $(IAM_CALLS)
	$(PY) -m iam_check --calls $(IAM_CALLS) --json .local/iam-report.json
	$(MAKE) --no-print-directory deploy-rehearsal

iam-check: $(STAMP) $(TOOLS_STAMP) ## the IAM check on the last recording (make test writes it)
	$(PY) -m iam_check --calls $(IAM_CALLS) --json .local/iam-report.json

test-unit: $(STAMP) ## unit tests only (no sockets: every test not marked integration)
	$(PY) -m pytest tests --ignore=tests/bench -m "not integration"

test-integration: $(STAMP) ## integration tests (moto, emulator, the security suite), without the browser ones
	$(PY) -m pytest tests --ignore=tests/bench --ignore=tests/e2e -m integration

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

# The caller's client (client/): a wheel built offline with the dev virtualenv's setuptools.
CLIENT_VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' client/src/b24connector_client/__init__.py)
export CLIENT_WHEEL := $(CURDIR)/dist/b24connector_client-$(CLIENT_VERSION)-py3-none-any.whl

client: $(STAMP) ## build the installable client: dist/b24connector_client-<version>-py3-none-any.whl
	@rm -rf client/build client/src/b24connector_client.egg-info
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation --no-index --wheel-dir dist ./client
	@rm -rf client/build client/src/b24connector_client.egg-info
	@test -f $(CLIENT_WHEEL) && echo "client: $(CLIENT_WHEEL)"

# sam build ships no bytecode and Lambda's /var/task is read-only: operator_tools.bytecode compiles
# unchecked-hash .pyc for every function and layer of the build with the runtime's Python (3.13).
build: $(TOOLS_STAMP) $(STAMP) client ## sam build (python3.13, arm64) + bytecode; prints each artifact's size
	PATH="$(dir $(PYTHON_BOOT)):$$PATH" $(SAM) build --template template.yaml
	$(PY) -m operator_tools.bytecode --build-dir .aws-sam/build --sizes

# SAM replaces samconfig's parameter_overrides when given any on the command line, so deploy_params
# writes samconfig's plus the Bitrix24 client id (BITRIX24_CLIENT_ID on the first deploy, then the
# stack's current value) and sam reads that file. It is YAML: SAM CLI reads file:// overrides only as
# .yaml/.yml/.toml. `deploy` and `deploy-rehearsal` run these same two commands (DEPLOY_STEPS).
DEPLOY_PARAMS := .aws-sam/deploy-parameters-$(ENV).yaml
define DEPLOY_STEPS
$(PY) -m operator_tools.deploy_params --env $(ENV) --output $(DEPLOY_PARAMS)
$(SAM) deploy --config-env $(ENV) --parameter-overrides file://$(DEPLOY_PARAMS)
endef

preflight: $(STAMP) ## check the account can take the stack (concurrency quota, runtime, client secret)
	$(PY) -m operator_tools.preflight --env $(ENV)

deploy: build $(STAMP) ## sam deploy with samconfig.toml's $(ENV) profile (first time: BITRIX24_CLIENT_ID=...)
	$(DEPLOY_STEPS)

# The rehearsal starts a moto server and runs `make deploy ENV=dev` (twice) and `ENV=prod` against it
# through AWS_ENDPOINT_URL; its moto-only workarounds are printed and listed in the README.
deploy-rehearsal: $(STAMP) $(TOOLS_STAMP) ## the whole deploy path (dev create+update, prod) against moto
	$(PY) -m deploy_rehearsal

put-secret: $(STAMP) ## store the Bitrix24 client secret in Secrets Manager (prompts, never echoes)
	$(PY) -m operator_tools.put_secret --env $(ENV)

clean: ## remove virtualenvs, caches and local state
	rm -rf $(VENV) $(TOOLS) .local .aws-sam dist .pytest_cache .mypy_cache .ruff_cache
