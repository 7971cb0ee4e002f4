# Lineup. `make run` starts Lineup on the embedded store; `make test` runs every test.
CARGO ?= cargo
DATA_DIR ?= .lineup
LISTEN ?= 127.0.0.1:8080

.PHONY: build run test lint fmt clean

build:
	$(CARGO) build --workspace

# API + scheduler + releaser in one process; state in $(DATA_DIR)/lineup.db.
run:
	$(CARGO) run -q -p lineup-cli --bin lineup -- dev --data-dir $(DATA_DIR) --listen $(LISTEN)

# The black-box tests start the real `lineup` binary: build it first.
test:
	$(CARGO) build -p lineup-cli --bin lineup
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf $(DATA_DIR)
