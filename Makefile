# Lineup. `make run` starts Lineup on the embedded store; `make test` runs every test.
CARGO ?= cargo
PYTHON ?= python3
DATA_DIR ?= .lineup
LISTEN ?= 127.0.0.1:8080
VENV := .venv
# moto: DynamoDB + SQS (+ CloudFormation, for the template test) on loopback for the AWS
# backend's tests; cfn-lint for the template (versions measured in ../shared/AWS-LOCAL.md);
# schemathesis for the OpenAPI contract (tests/tests/openapi.rs).
# The stamp file re-installs when this line changes.
PY_PACKAGES := 'moto[dynamodb,sqs,cloudformation]==5.2.5' flask flask-cors cfn-lint==1.58.0 schemathesis==4.32.5
VENV_STAMP := $(VENV)/.installed-$(shell echo "$(PY_PACKAGES)" | cksum | cut -d' ' -f1)

.PHONY: build run test test-all e2e bench lint fmt clean venv lambda soak browser screenshot
CARGO_LAMBDA_VERSION := 1.9.2

$(VENV_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(PY_PACKAGES)
	touch $@

venv: $(VENV_STAMP)

# The status page's browser test (tests/tests/ui.rs) drives Debian's chromium through
# chromedriver; installed here when missing (CI runs as root on a bare machine).
browser:
	@command -v chromedriver >/dev/null && command -v chromium >/dev/null || { \
		echo "installing chromium and chromium-driver"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

# The status page as the README shows it: the browser test, saving what it saw.
screenshot: browser
	$(CARGO) build -q -p lineup-cli --bin lineup
	LINEUP_SCREENSHOT=docs/status-page.png $(CARGO) test -p lineup-tests --test ui -- --nocapture

build:
	$(CARGO) build --workspace

# API + scheduler + releaser in one process; state in $(DATA_DIR)/lineup.db.
run:
	$(CARGO) run -q -p lineup-cli --bin lineup -- dev --data-dir $(DATA_DIR) --listen $(LISTEN)

# The black-box tests start the real binaries: build them first, with the very commands
# the tests use (tests/util/mod.rs), so those find nothing left to build.
# The deployed shape (tests/tests/deployed.rs, `make e2e`) runs with the rest.
test: $(VENV_STAMP) browser
	@df -h . | tail -1 | awk '{print "disk free before the build: " $$4}'
	$(CARGO) build -q -p lineup-cli --bin lineup
	$(CARGO) build -q -p lineup-fn-dispatch -p lineup-fn-schedule -p lineup-fn-release -p lineup-fn-gateway
	$(CARGO) test --workspace

# Lambda zips: target/lambda/{schedule,release,gateway,dispatch}/bootstrap.zip.
# cargo-lambda from PyPI without its 400 MB zig (the workspace metadata selects plain
# cargo). --disable-optimizations keeps our own release profile: cargo-lambda's would set
# panic = "abort", and a panic should be one failed invocation, not a dead instance.
$(VENV)/bin/cargo-lambda: $(VENV_STAMP)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps cargo-lambda==$(CARGO_LAMBDA_VERSION)

lambda: $(VENV)/bin/cargo-lambda
	PATH="$(abspath $(VENV))/bin:$$PATH" $(CARGO) lambda build --release --disable-optimizations \
		--output-format zip --bin schedule --bin release --bin gateway --bin dispatch
	ls -l target/lambda/*/bootstrap.zip

# The deployed shape on one machine: the template's stack in moto, the bootstrap
# binaries under a Lambda Runtime API on loopback, configured as the template
# configures them; the whole story through API Gateway events.
e2e: $(VENV_STAMP)
	$(CARGO) build -q -p lineup-fn-dispatch -p lineup-fn-schedule -p lineup-fn-release -p lineup-fn-gateway
	$(CARGO) test -p lineup-tests --test deployed

# `make test` already runs the e2e tests; kept for habit.
test-all: test

# Longer fault-injected runs than make test's: the overlapping schedulers and releasers
# with SOAK_EVALS evals, and the whole conformance suite, under moto's fault mode, once
# per seed in SOAK_SEEDS (docs/RELIABILITY.md has the last results).
SOAK_SEEDS ?= 1 2 3 4 5
SOAK_EVALS ?= 500
soak: $(VENV_STAMP)
	for seed in $(SOAK_SEEDS); do \
		echo "== seed $$seed"; \
		LINEUP_FAULT_SEED=$$seed $(CARGO) test -q -p lineup-aws --test faults --test crash || exit 1; \
		LINEUP_FAULT_SEED=$$seed LINEUP_SOAK_EVALS=$(SOAK_EVALS) $(CARGO) test -q -p lineup-aws \
			--test races -- --nocapture injected || exit 1; \
	done

# Figures, not assertions: the release `lineup dev` driven over HTTP, and the AWS call
# counts over moto (docs/BENCHMARKS.md). BENCH_ARGS: e.g. --only drain,latency.
bench: $(VENV_STAMP)
	$(CARGO) build --release -q -p lineup-cli --bin lineup
	$(CARGO) build --release -q -p lineup-bench
	target/release/lineup-bench $(BENCH_ARGS)

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf $(DATA_DIR) $(VENV)
