# Makefile for micado. Run `make help` for the list of targets.

GO     ?= go
DOCKER ?= docker

VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

MICADO_IMAGE ?= micado/micado:dev
CONSUL_IMAGE ?= micado/consul:1.20.1
DEMO_IMAGE   ?= micado/demo-web:latest
PROXY_IMAGE  ?= micado/demo-proxy:latest
# Label put on every image built here so that tests can find them.
IMAGE_LABEL  ?= io.micado.project=micado

BIN_DIR    := bin
BUILD_DIR  := .build
CTX_DIR    := $(BUILD_DIR)/ctx
CONSUL_BIN := .cache/bin/consul

# Static binaries: no cgo, reproducible paths.
GO_BUILD := CGO_ENABLED=0 $(GO) build -trimpath

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_.\/-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# ---------------------------------------------------------------------------
# Binaries. The Go targets always run `go build`, which is incremental and
# decides itself whether anything changed.

.PHONY: FORCE
FORCE:

.PHONY: build
build: $(BIN_DIR)/micado ## Build the static micado binary into bin/micado

$(BIN_DIR)/micado: FORCE
	$(GO_BUILD) -ldflags "-X main.version=$(VERSION)" -o $@ ./cmd/micado

$(BIN_DIR)/demo-web: FORCE
	$(GO_BUILD) -o $@ ./images/demo-web

$(BIN_DIR)/demo-proxy: FORCE
	$(GO_BUILD) -o $@ ./images/demo-proxy

.PHONY: consul
consul: $(CONSUL_BIN) ## Build the Consul agent into .cache/bin/consul (only if missing or its module changed)

$(CONSUL_BIN): images/consul/go.mod images/consul/go.sum
	@mkdir -p $(@D)
	cd images/consul && CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(CURDIR)/$@ github.com/hashicorp/consul

# ---------------------------------------------------------------------------
# Container images. Every image is FROM scratch and built with the legacy
# builder from a small context under .build/ctx/<name>/ holding only the
# binary, the Dockerfile and, if the image needs empty directories such as
# /tmp, a rootfs/ tree with them (scratch has no shell, so they cannot be made
# with RUN; `COPY rootfs/ /` keeps their modes, e.g. 1777 for /tmp).

# ctx-dirs: create empty directories $(2) with mode $(3) in context $(1).
ctx-dirs = for d in $(2); do mkdir -p $(1)/$$d && chmod $(3) $(1)/$$d; done

# ctx-file: put file $(2) into context $(1); hard-link when possible so the
# large Consul binary is not copied on every build.
ctx-file = mkdir -p $(1) && { ln -f $(2) $(1)/ 2>/dev/null || cp -f $(2) $(1)/; }

# docker-build: build context $(1) and tag it $(2).
docker-build = $(DOCKER) build --label $(IMAGE_LABEL) -t $(2) $(1)

.PHONY: images
images: image-micado image-consul image-demo-web image-demo-proxy ## Build all container images

.PHONY: image-micado
image-micado: $(BIN_DIR)/micado ## Build the micado image (MICADO_IMAGE)
	@$(call ctx-dirs,$(CTX_DIR)/micado/rootfs,tmp,1777)
	@$(call ctx-file,$(CTX_DIR)/micado,$(BIN_DIR)/micado)
	@$(call ctx-file,$(CTX_DIR)/micado,images/micado/Dockerfile)
	$(call docker-build,$(CTX_DIR)/micado,$(MICADO_IMAGE))

.PHONY: image-consul
image-consul: $(CONSUL_BIN) ## Build the Consul image (CONSUL_IMAGE)
	@$(call ctx-dirs,$(CTX_DIR)/consul/rootfs,tmp,1777)
	@$(call ctx-dirs,$(CTX_DIR)/consul/rootfs,consul consul/data consul/config,0755)
	@$(call ctx-file,$(CTX_DIR)/consul,$(CONSUL_BIN))
	@$(call ctx-file,$(CTX_DIR)/consul,images/consul/Dockerfile)
	$(call docker-build,$(CTX_DIR)/consul,$(CONSUL_IMAGE))

.PHONY: image-demo-web
image-demo-web: $(BIN_DIR)/demo-web ## Build the demo web server image (DEMO_IMAGE)
	@$(call ctx-file,$(CTX_DIR)/demo-web,$(BIN_DIR)/demo-web)
	@$(call ctx-file,$(CTX_DIR)/demo-web,images/demo-web/Dockerfile)
	$(call docker-build,$(CTX_DIR)/demo-web,$(DEMO_IMAGE))

.PHONY: image-demo-proxy
image-demo-proxy: $(BIN_DIR)/demo-proxy ## Build the demo reverse proxy image (PROXY_IMAGE)
	@$(call ctx-file,$(CTX_DIR)/demo-proxy,$(BIN_DIR)/demo-proxy)
	@$(call ctx-file,$(CTX_DIR)/demo-proxy,images/demo-proxy/Dockerfile)
	$(call docker-build,$(CTX_DIR)/demo-proxy,$(PROXY_IMAGE))

# ---------------------------------------------------------------------------
# Test tools from Debian: Prometheus (and promtool) scrape a running cluster
# in the metrics test and serve the scaling queries in the manager's tests
# (internal/testprom starts its own prometheus on loopback; the systemd
# service the package may install is never used); headless Chromium opens
# the dashboard in its test. Installed only when missing; needs root or sudo
# for apt-get.

APT_GET := $(shell [ "$$(id -u)" = 0 ] || echo sudo) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: prometheus
prometheus: ## Install prometheus and promtool (Debian package prometheus) with apt-get if missing
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null; then \
		echo "prometheus: prometheus and promtool are installed"; \
	else \
		$(APT_GET) update && $(APT_GET) install -y --no-install-recommends prometheus; \
	fi

.PHONY: tools
tools: prometheus ## Install the test tools (prometheus, promtool, chromium) with apt-get if missing
	@if command -v chromium >/dev/null; then \
		echo "tools: chromium is installed"; \
	else \
		$(APT_GET) update && $(APT_GET) install -y --no-install-recommends chromium; \
	fi

# ---------------------------------------------------------------------------
# Running and testing.

.PHONY: up
up: build images ## Build everything and start a local cluster (micado up)
	$(BIN_DIR)/micado up

.PHONY: down
down: build ## Remove the local cluster (micado down)
	$(BIN_DIR)/micado down

.PHONY: lint
lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './.cache/*' -not -path './.build/*')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

.PHONY: test
test: lint tools images ## Run every test: unit, property and end-to-end (needs Docker; installs the test tools, builds Consul and the images first)
	$(GO) test -count=1 -timeout 45m ./...

BENCH_OUT := $(BUILD_DIR)/bench.txt

.PHONY: bench
bench: consul images ## Run the benchmarks and print one table of figures against targets (not part of pass/fail)
	@mkdir -p $(BUILD_DIR)
	@: > $(BENCH_OUT)
	$(GO) test -run '^$$' -bench 'Place1000x100k$$|Place5000x1M$$|ConsolidationDay$$|ConsolidationDayPriced$$|Repack|PlanConsolidation5000x100k|AutoscaleStability|SimulatedDay$$' -benchtime 1x ./coordinator | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench 'UnplaceableToCreateCall|Gossip100$$|Gossip500$$|DecideRepairs100k' -benchtime 1x -timeout 30m ./manager | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench 'Throughput100kOn5000|ManagerMemory5000x100k|IdleConsulRequests' -benchtime 1x -timeout 60m ./manager/daemon | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench 'HeldLaunchDocker|WorkerLossRecovery|LaunchVsDockerRun|Failover|AutoscaleReaction' -benchtime 5x -timeout 60m ./cmd/micado | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench 'AutoscaleSteady' -benchtime 1x -timeout 30m ./cmd/micado | tee -a $(BENCH_OUT)
	@echo
	@$(GO) run ./internal/benchtable $(BENCH_OUT)

.PHONY: clean
clean: ## Remove build outputs (bin/, .build/); keeps the .cache/ Consul binary
	rm -rf $(BIN_DIR) $(BUILD_DIR)
