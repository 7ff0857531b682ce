# shoal: `make up` runs a local three-node cluster behind nginx on 8080,
# `make test` runs every test. `make help` lists the targets.

SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.PHONY: build-deps
build-deps: ## install protoc (Debian's protobuf-compiler) when missing: the containerd client needs it to build
	bash scripts/build-deps.sh

.PHONY: build
build: build-deps ## build the release binaries target/release/shoal and shoal-sim
	$(CARGO) build --release --locked -p shoal-cli -p shoal-sim

.PHONY: test-deps
test-deps: build-deps ## install and start what the tests need (protoc, dockerd, containerd, postgresql, the busybox test image, chromium and selenium)
	bash scripts/ensure-docker.sh
	bash scripts/browser-deps.sh >/dev/null
	bash scripts/ensure-containerd.sh
	bash scripts/ensure-postgres.sh
	bash scripts/test-image.sh
	bash scripts/oci-image.sh >/dev/null

.PHONY: test
test: test-deps ## run every test: unit, property, router, fleet, real-Docker, real-containerd, manifests, e2e, k8s-sim
	$(CARGO) test --workspace --locked -- --include-ignored
	bash scripts/fuzz.sh 20
	$(MAKE) k8s-validate
	$(MAKE) peers-dns
	$(MAKE) e2e
	$(MAKE) k8s-sim

.PHONY: lint
lint: build-deps ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

# Where no registry answers, the bases are built locally (deploy/base-image.sh);
# with one, set BASE_IMAGE=debian:bookworm-slim NGINX_BASE_IMAGE=debian:bookworm-slim POSTGRES_BASE_IMAGE=debian:bookworm-slim.
BASE_IMAGE ?= shoal/debian:bookworm-slim
NGINX_BASE_IMAGE ?= shoal/nginx-base:bookworm
POSTGRES_BASE_IMAGE ?= shoal/postgres-base:bookworm
COMPOSE ?= $(shell command -v docker-compose >/dev/null 2>&1 && echo docker-compose || echo docker compose)
export DOCKER_GID ?= $(shell stat -c %g /var/run/docker.sock 2>/dev/null || echo 0)

.PHONY: base-images
base-images:
	@if [ "$(BASE_IMAGE)" = shoal/debian:bookworm-slim ]; then bash deploy/base-image.sh; fi

.PHONY: images
images: build base-images ## build the images shoal/node, shoal/nginx and shoal/postgres
	docker build -q -f deploy/Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) -t shoal/node:latest .
	docker build -q -f deploy/nginx.Dockerfile --build-arg BASE_IMAGE=$(NGINX_BASE_IMAGE) -t shoal/nginx:latest .
	docker build -q -f deploy/postgres.Dockerfile --build-arg BASE_IMAGE=$(POSTGRES_BASE_IMAGE) -t shoal/postgres:latest .

.PHONY: up
up: images ## start three nodes, their PostgreSQL and nginx on :8080 with docker compose (API token in .shoal/api-token)
	bash scripts/ensure-docker.sh --with-compose
	bash scripts/cluster-secret.sh .shoal/cluster-secret "$(DOCKER_GID)"
	bash scripts/history-url.sh .shoal/postgres-password .shoal/history-url "$(DOCKER_GID)"
	bash scripts/api-token.sh .shoal/api-token "$(DOCKER_GID)"
	$(COMPOSE) -p shoal up -d
	bash scripts/wait-http.sh http://127.0.0.1:$${SHOAL_HTTP_PORT:-8080}/readyz 60
	@echo "stack up: node1 node2 node3 behind nginx on http://localhost:$${SHOAL_HTTP_PORT:-8080}"
	@echo "try: curl localhost:$${SHOAL_HTTP_PORT:-8080}/v1/containers/<name>   or   target/release/shoal get <name>"
	@echo "     target/release/shoal watch   (changes as they happen), or http://localhost:$${SHOAL_HTTP_PORT:-8080}/ in a browser"
	@echo "     target/release/shoal history <name>   (what happened to it),   shoal get <ip> --at <time>"
	@echo "jobs (containers the fleet creates) need the API token in .shoal/api-token:"
	@echo '     export SHOAL_API_TOKEN=$$(cat .shoal/api-token)'
	@echo '     curl -s localhost:'"$${SHOAL_HTTP_PORT:-8080}"'/jrpc -H "Authorization: Bearer $$SHOAL_API_TOKEN" -d \'
	@echo "       '{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ContainerService.Create\",\"params\":[{\"image\":\"$(BASE_IMAGE)\",\"arguments\":[\"sleep\",\"300\"]}]}'"
	@echo "     target/release/shoal run --wait $(BASE_IMAGE) sleep 300   (flags before the image; shoal job <id>, shoal jobs)"

.PHONY: down
down: ## stop and remove what `make up` started (containers, network); the history volume stays
	-$(COMPOSE) -p shoal down --remove-orphans

.PHONY: down-all
down-all: ## `make down`, and remove the history volume too
	-$(COMPOSE) -p shoal down --remove-orphans -v

.PHONY: logs
logs: ## follow the stack's logs
	$(COMPOSE) -p shoal logs -f --tail 50

.PHONY: up-local
up-local: build ## the same cluster as plain processes, nginx from Debian, no images
	bash scripts/local-stack.sh up

.PHONY: down-local
down-local: ## stop what `make up-local` started
	bash scripts/local-stack.sh down

.PHONY: e2e
e2e: images ## the compose stack end to end through nginx on :8080 (with a containerd node), then torn down
	bash scripts/ensure-docker.sh --with-compose
	bash scripts/ensure-containerd.sh
	bash scripts/test-image.sh
	bash scripts/e2e.sh

.PHONY: k8s-sim
k8s-sim: images test-deps ## run k8s/ and deploy/k8s-containerd as a kubelet would, as Docker containers (8 and 4 simulated nodes)
	bash scripts/k8s-sim.sh

.PHONY: peers-dns
peers-dns: build ## --peers-dns against a real dnsmasq in a network namespace
	bash scripts/peers-dns-test.sh

.PHONY: bench
bench: build ## run the benchmark scenarios and write BENCHMARKS.md (about 15 minutes)
	bash scripts/bench.sh

.PHONY: bench-front
bench-front: build ## only make bench's front-door part: shoal vs groupcache through nginx with wrk (about 1 minute, no Docker; BENCHMARKS.md untouched)
	bash scripts/bench.sh --only front

.PHONY: bench-node
bench-node: build ## only make bench's lookups sent to one node (about 2 minutes; BENCH_SHOAL=path measures another build; BENCHMARKS.md untouched)
	bash scripts/bench.sh --only node

.PHONY: bench-watch
bench-watch: build test-deps ## 1,000 /v1/watch streams at one node against none, under the same Docker churn; writes BENCHMARKS.md's Watchers section (about 1 minute)
	bash scripts/bench-watch.sh

.PHONY: bench-history
bench-history: build ## history writes/s on SQLite and PostgreSQL, ?at= on a million changes, freshness with history on against off; writes BENCHMARKS.md's History section (a few minutes)
	bash scripts/bench-history.sh

.PHONY: bench-jobs
bench-jobs: build test-deps ## 100 and 500 jobs over 30 s on three extra dockerds, against the same create+start calls sent to the engines directly; writes BENCHMARKS.md's Jobs section (about 6 minutes)
	bash scripts/bench-jobs.sh

SOAK_SECONDS ?= 1800
.PHONY: soak
soak: build test-deps ## five real nodes under container churn and lookups for SOAK_SECONDS (default 1800): anonymous memory and fds must stay flat
	SOAK_SECONDS=$(SOAK_SECONDS) bash scripts/soak.sh

SEEDS ?= 10000
.PHONY: sim
sim: ## the protocol simulator over SEEDS seeds (default 10000), release build; SHOAL_SIM_SEED=S replays one
	SHOAL_SIM_SEEDS=$(SEEDS) $(CARGO) test --release --locked -p shoal-core --test sim -- --nocapture

FUZZ_SECONDS ?= 600
.PHONY: fuzz
fuzz: ## fuzz the peer decoder and the directory, FUZZ_SECONDS each (default 600); finds join fuzz/corpus/
	bash scripts/fuzz.sh --keep $(FUZZ_SECONDS)

.PHONY: fuzz-seeds
fuzz-seeds: ## write the fuzz corpus's seeds anew after a change of the wire format
	SHOAL_FUZZ_WRITE_SEEDS=1 $(CARGO) test --locked -p shoal-core --test fuzz_corpus

.PHONY: k8s-validate
k8s-validate: ## validate k8s/ offline against a pinned Kubernetes schema
	bash scripts/k8s-validate.sh

.PHONY: minikube
minikube: build base-images ## build the images into minikube, deploy k8s/ (or deploy/k8s-containerd on containerd), port-forward :8080
	bash scripts/minikube.sh up

.PHONY: minikube-down
minikube-down: ## remove the minikube deployment
	bash scripts/minikube.sh down

.PHONY: clean
clean: down down-local ## stop the stacks and remove build output
	$(CARGO) clean
