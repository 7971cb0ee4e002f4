# Lineup. `make run` starts Lineup on the embedded store; `make test` runs every test.
CARGO ?= cargo
PYTHON ?= python3
DATA_DIR ?= .lineup
LISTEN ?= 127.0.0.1:8080
VENV := .venv
# moto: DynamoDB + SQS (+ CloudFormation, for the template test) on loopback for the AWS
# backend's tests; cfn-lint for the template (versions measured in ../shared/AWS-LOCAL.md).
# The stamp file re-installs when this line changes.
PY_PACKAGES := 'moto[dynamodb,sqs,cloudformation]==5.2.5' flask flask-cors cfn-lint==1.58.0
VENV_STAMP := $(VENV)/.installed-$(shell echo "$(PY_PACKAGES)" | cksum | cut -d' ' -f1)

.PHONY: build run test lint fmt clean venv

$(VENV_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(PY_PACKAGES)
	touch $@

venv: $(VENV_STAMP)

build:
	$(CARGO) build --workspace

# API + scheduler + releaser in one process; state in $(DATA_DIR)/lineup.db.
run:
	$(CARGO) run -q -p lineup-cli --bin lineup -- dev --data-dir $(DATA_DIR) --listen $(LISTEN)

# The black-box tests start the real binaries: build them first, with the very commands
# the tests use (tests/util/mod.rs), so those find nothing left to build.
test: $(VENV_STAMP)
	$(CARGO) build -q -p lineup-cli --bin lineup
	$(CARGO) build -q -p lineup-fn-dispatch
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf $(DATA_DIR) $(VENV)
