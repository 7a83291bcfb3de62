# Tributary — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
# mold links the large test/CLI binaries much faster; used only where installed, and the same
# flags are used by every target so no target invalidates another's build cache.
RUSTFLAGS ?= $(if $(shell command -v mold 2>/dev/null),-C link-arg=-fuse-ld=mold,)
export RUSTFLAGS
CACHE := $(CURDIR)/.cache
VENV := $(CACHE)/venv
PYTHON := $(VENV)/bin/python
TANSU_VERSION ?= 0.6.0
TANSU_ROOT ?= $(HOME)/.cache/tributary/tansu-$(TANSU_VERSION)
TANSU := $(TANSU_ROOT)/bin/tansu
# tansu with its object-store engine too (`memory://` storage): the bench's faster broker setup
TANSU_MEM_ROOT ?= $(HOME)/.cache/tributary/tansu-$(TANSU_VERSION)-dyn
TANSU_MEM := $(TANSU_MEM_ROOT)/bin/tansu
DEMO_DATA ?= data/demo
DEMO_REGIONS ?= us-east-1,eu-west-1,ap-south-1
DEMO_EVENTS ?= 2000
CARGO_FUZZ := $(CACHE)/cargo-fuzz/bin/cargo-fuzz
# CRD schemas for the chart check (scripts/validate_crds.mjs), pinned
NPM_PREFIX := $(CACHE)/npm
NPM_MODELS := kubernetes-models@5.1.0 @kubernetes-models/keda@0.4.2 @kubernetes-models/prometheus-operator@6.0.0 @kubernetes-models/argo-rollouts@0.3.2
NPM_MODELS_HASH := $(shell echo '$(NPM_MODELS)' | cksum | cut -d' ' -f1)
FUZZ_SECONDS ?= 60

.PHONY: help
help: ## List targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

.PHONY: tools
tools: ## Install build tools (mold linker) when root and missing
	@if ! command -v mold >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq mold) >/dev/null 2>&1 || echo "note: could not install mold; using the default linker"; \
	  else echo "note: mold not installed; using the default linker"; fi; \
	fi

.PHONY: test-deps
test-deps: tools tansu ## Install what the tests need (tansu broker, Prometheus, Python deltalake reader and chart tools in .cache/venv, CRD schemas in .cache/npm)
	@if ! command -v prometheus >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >/dev/null 2>&1 \
	      || echo "note: could not install prometheus (the kafka2prom test needs it)"; \
	  else echo "note: prometheus not installed (the kafka2prom test needs it: apt-get install prometheus)"; fi; \
	fi
	@if [ ! -x $(PYTHON) ] || ! $(PYTHON) -c 'import deltalake, pyarrow, helm_python, kubernetes_validate, yaml, moto.server' 2>/dev/null \
	    || [ ! -x $(VENV)/bin/hadolint ]; then \
	  python3 -m venv $(VENV) && $(PYTHON) -m pip install -q --disable-pip-version-check -r integration-tests/python/requirements.txt; \
	fi
	@if ! command -v node >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm) >/dev/null 2>&1 \
	      || echo "note: could not install node (the chart check needs it)"; \
	  else echo "note: node not installed (the chart check needs it: apt-get install nodejs npm)"; fi; \
	fi
	@if [ ! -f $(NPM_PREFIX)/.installed-$(NPM_MODELS_HASH) ]; then \
	  mkdir -p $(NPM_PREFIX) && npm install --silent --no-audit --no-fund --prefix $(NPM_PREFIX) $(NPM_MODELS) \
	    && touch $(NPM_PREFIX)/.installed-$(NPM_MODELS_HASH); \
	fi

.PHONY: tansu
tansu: ## Install the tansu Kafka-compatible broker once (cached in ~/.cache/tributary)
	@if [ ! -x $(TANSU) ]; then \
	  echo "installing tansu $(TANSU_VERSION) into $(TANSU_ROOT) (one-off, ~15 min)"; \
	  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_LTO=false \
	    $(CARGO) install tansu --version $(TANSU_VERSION) --locked --features libsql --root $(TANSU_ROOT); \
	fi

.PHONY: tansu-memory
tansu-memory: ## Install tansu with its dynostore engine (memory:// storage) for the Kafka bench (one-off, ~15 min)
	@if [ ! -x $(TANSU_MEM) ]; then \
	  echo "installing tansu $(TANSU_VERSION) with dynostore into $(TANSU_MEM_ROOT) (one-off, ~15 min)"; \
	  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_LTO=false \
	    $(CARGO) install tansu --version $(TANSU_VERSION) --locked --features libsql,dynostore --root $(TANSU_MEM_ROOT); \
	fi

.PHONY: build
build: ## Build every crate (dev profile)
	$(CARGO) build --workspace --bins

.PHONY: run
run: tools ## Build and run the embedded demo: 3 regions through every layer on local files
	@$(MAKE) --no-print-directory _run

.PHONY: _run
_run: build
	rm -rf $(DEMO_DATA)
	./target/debug/tributary standalone --data $(DEMO_DATA) --regions $(DEMO_REGIONS) \
	  --generate --events-per-source $(DEMO_EVENTS) --exit-when-idle --timeout-secs 900

.PHONY: run-kafka
run-kafka: tools tansu ## The demo through a real Kafka-protocol broker (tansu on loopback)
	@$(MAKE) --no-print-directory build
	TANSU=$(TANSU) ./scripts/run-kafka.sh

.PHONY: test
test: test-deps ## Install what the tests need, then run the whole suite
	@$(MAKE) --no-print-directory _test

.PHONY: _test
_test:
	$(CARGO) build --workspace --bins
	TRIBUTARY_PYTHON=$(PYTHON) TRIBUTARY_TANSU=$(TANSU) $(CARGO) test --workspace --no-fail-fast -- --test-threads 2
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$${FUZZ_SECONDS:-30}

.PHONY: fuzz
fuzz: ## Fuzz the event decoder, the exact-decimal parser, the line splitter, the metrics parser and the certificate subject reader (cargo-fuzz, nightly), FUZZ_SECONDS each (default 60)
	@if [ ! -x $(CARGO_FUZZ) ]; then $(CARGO) install cargo-fuzz --version 0.13.2 --locked --root $(CACHE)/cargo-fuzz; fi
	cd fuzz && mkdir -p corpus-work && PATH=$(CACHE)/cargo-fuzz/bin:$$PATH RUSTFLAGS= cargo +nightly fuzz run decode_event corpus-work corpus/decode_event -- \
	  -max_total_time=$(FUZZ_SECONDS) -max_len=8192 -print_final_stats=1
	@for t in decimal lines promtext der_subject; do \
	  (cd fuzz && mkdir -p corpus-work-$$t && PATH=$(CACHE)/cargo-fuzz/bin:$$PATH RUSTFLAGS= cargo +nightly fuzz run $$t corpus-work-$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=512 -print_final_stats=1) || exit 1; \
	done

.PHONY: bench
bench: test-deps tansu-memory ## Release load harness: files vs polars baseline, per-stage cost, e2e, Kafka vs broker ceiling (sqlite and memory storage), dedup, kafka2prom vs pushgateway
	$(CARGO) build --release -p tributary
	$(PYTHON) scripts/bench.py --bin ./target/release/tributary --python $(PYTHON) --events $${BENCH_EVENTS:-25000}
	$(PYTHON) scripts/bench.py --bin ./target/release/tributary --kafka --events $${BENCH_EVENTS:-25000} --tansu $(TANSU)
	$(PYTHON) scripts/bench.py --bin ./target/release/tributary --kafka --events $${BENCH_EVENTS:-25000} --tansu $(TANSU_MEM) --storage memory://tansu/
	$(PYTHON) scripts/freshness.py --bin ./target/release/tributary --rate $${FRESHNESS_RATE:-10000} --secs $${FRESHNESS_SECS:-120}
	./target/release/tributary bench-dedup --dir .cache/bench-dedup --keys $${DEDUP_KEYS:-10000000}
	./target/release/tributary bench-discovery --dir .cache/bench-discovery --files $${DISCOVERY_FILES:-1000000}
	./target/release/tributary bench-commits --dir .cache/bench-commits --versions $${COMMIT_VERSIONS:-1000}
	./target/release/tributary bench-bloom --keys $${BLOOM_KEYS:-100000000} --mb 32
	rm -rf .cache/bench-central && ./target/release/tributary bench-central --data .cache/bench-central --bench-regions $${CENTRAL_REGIONS:-50} --commits 4 --rows $${CENTRAL_ROWS:-2000}
	@if ! command -v prometheus-pushgateway >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-pushgateway) >/dev/null 2>&1 \
	    || echo "note: could not install prometheus-pushgateway (the bridge baseline)"; \
	  (systemctl stop prometheus-pushgateway || pkill -f /usr/bin/prometheus-pushgateway) >/dev/null 2>&1 || true; fi
	$(PYTHON) scripts/bench_bridge.py --bin ./target/release/tributary --tansu $(TANSU) --instances 100 --series $${BRIDGE_SERIES:-10000} --rounds 3

.PHONY: freshness
freshness: ## Freshness soak alone (release): FRESHNESS_RATE events/s for FRESHNESS_SECS through every layer, p50/p99 staleness per layer
	$(CARGO) build --release -p tributary
	$(PYTHON) scripts/freshness.py --bin ./target/release/tributary --rate $${FRESHNESS_RATE:-10000} --secs $${FRESHNESS_SECS:-120}

.PHONY: lint
lint: ## rustfmt check and clippy with warnings denied
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all

.PHONY: clean-data
clean-data: ## Remove generated demo data
	rm -rf data
