# One task runner for people and CI. `make help` lists the targets.
CARGO ?= cargo

.PHONY: help demo build test check fmt lint deps unit bench
help:
	@echo "make demo    run the demo mesh (control plane, 3 services with sidecars, traffic)"
	@echo "make test    everything CI runs: format, lints, dependency policy, all tests"
	@echo "make unit    the tests only (cargo nextest run --workspace)"
	@echo "make bench   benchmarks side by side with direct traffic, Envoy, nginx, haproxy"

demo:
	$(CARGO) run -p trellis-cli -- demo

build:
	$(CARGO) build --workspace --all-targets --locked

fmt:
	$(CARGO) fmt --all --check

lint:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

deps:
	python3 scripts/check-deps.py

unit: build
	$(CARGO) nextest run --workspace --locked --profile ci --no-tests=fail

check: fmt lint deps

test: check unit

bench:
	bash bench/run.sh
