# shoal: `make up` runs a local three-node cluster behind nginx on 8080,
# `make test` runs every test. `make help` lists the targets.

SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.PHONY: build
build: ## build the release binary target/release/shoal
	$(CARGO) build --release --locked -p shoal-cli

.PHONY: test-deps
test-deps: ## install and start what the tests need (dockerd, the busybox test image)
	bash scripts/ensure-docker.sh
	bash scripts/test-image.sh

.PHONY: test
test: test-deps ## run every test: unit, property, router, process and real-Docker tests
	$(CARGO) test --workspace --locked -- --include-ignored

.PHONY: lint
lint: ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

.PHONY: up
up: build ## start three nodes watching the local Docker engine, nginx in front on :8080
	bash scripts/local-stack.sh up

.PHONY: down
down: ## stop what `make up` started
	bash scripts/local-stack.sh down

.PHONY: logs
logs: ## follow the logs of what `make up` started
	bash scripts/local-stack.sh logs

.PHONY: clean
clean: down ## stop the stack and remove build output
	$(CARGO) clean
