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
# A Docker image standing in for a stock Debian cloud VM: systemd as PID 1 and
# cloud-init reading a NoCloud seed, no Docker installed. Built with
# debootstrap (the host's, installed with apt-get if missing; needs root or
# sudo and the Debian mirror) into .cache/debian/rootfs, then `docker import`.
# The tests must not reach the Internet, so the image's only apt source is a
# local repository holding the .debs that `apt-get install -y
# --no-install-recommends $(DEBIAN_REPO_PKGS)` needs, and nothing else.
# Each stage is redone only when missing or when an input changed:
# debootstrap and the downloads (base.stamp), the image's configuration from
# images/debian-cloud/ (rootfs.stamp), the import (skipped altogether when
# the tagged image carries the hash of its inputs, DEBIAN_INPUTS; `docker
# import` cannot set STOPSIGNAL, so a one-line `docker build` adds it and the
# labels). cloudapi/docker.MachineConfig boots it; on this cgroup v1 host
# (which lacks CAP_SYS_RESOURCE, so --privileged fails) that is
#   docker create --cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined
#     --security-opt apparmor=unconfined --security-opt systempaths=unconfined
#     --cgroupns=private --tmpfs /sys/fs/cgroup --tmpfs /run --tmpfs /run/lock
#     --tmpfs /tmp -v /var/lib/docker IMAGE
# then `docker cp` meta-data and user-data into /var/lib/cloud/seed/nocloud/
# and `docker start`.

DEBIAN_IMAGE     ?= micado/debian-cloud:bookworm
DEBIAN_SUITE     ?= bookworm
DEBIAN_MIRROR    ?= http://deb.debian.org/debian
DEBIAN_DIR       := .cache/debian
DEBIAN_ROOT      := $(DEBIAN_DIR)/rootfs
DEBIAN_PKGS      := systemd,systemd-sysv,dbus,cloud-init,python3-yaml,python3-cffi-backend,curl,ca-certificates,iproute2,iputils-ping,netbase,procps,apt-utils,sudo,less
DEBIAN_REPO_PKGS := docker.io
DEBIAN_REPO      := /var/local/micado-apt
# Units that make no sense in a container, or that would race the bootstrap
# for the dpkg lock (apt-daily) or touch the host's devices (udev).
DEBIAN_MASK      := getty.target console-getty.service systemd-networkd-wait-online.service \
	systemd-udevd.service systemd-udev-trigger.service systemd-udev-settle.service \
	apt-daily.timer apt-daily-upgrade.timer
AS_ROOT          := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: debootstrap
debootstrap: ## Install debootstrap with apt-get if missing
	@if command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ]; then \
		echo "debootstrap: debootstrap is installed"; \
	else \
		$(APT_GET) update && $(APT_GET) install -y --no-install-recommends debootstrap; \
	fi

$(DEBIAN_DIR)/base.stamp: | debootstrap
	$(AS_ROOT) rm -rf $(DEBIAN_ROOT) $(DEBIAN_ROOT).tmp
	@mkdir -p $(DEBIAN_DIR)
	$(AS_ROOT) debootstrap --variant=minbase --include=$(DEBIAN_PKGS) $(DEBIAN_SUITE) $(DEBIAN_ROOT).tmp $(DEBIAN_MIRROR)
	$(AS_ROOT) chroot $(DEBIAN_ROOT).tmp env DEBIAN_FRONTEND=noninteractive sh -ec '\
		apt-get clean; apt-get update; \
		apt-get install -y --no-install-recommends --download-only $(DEBIAN_REPO_PKGS); \
		mkdir -p $(DEBIAN_REPO); \
		mv /var/cache/apt/archives/*.deb $(DEBIAN_REPO)/; \
		cd $(DEBIAN_REPO) && apt-ftparchive packages . > Packages'
	$(AS_ROOT) mv $(DEBIAN_ROOT).tmp $(DEBIAN_ROOT)
	touch $@

$(DEBIAN_DIR)/rootfs.stamp: $(DEBIAN_DIR)/base.stamp images/debian-cloud/90-micado.cfg images/debian-cloud/micado-cgroup-v1.service
	$(AS_ROOT) install -m 0644 images/debian-cloud/90-micado.cfg $(DEBIAN_ROOT)/etc/cloud/cloud.cfg.d/90-micado.cfg
	$(AS_ROOT) install -m 0644 images/debian-cloud/micado-cgroup-v1.service $(DEBIAN_ROOT)/etc/systemd/system/micado-cgroup-v1.service
	$(AS_ROOT) ln -sfn ../micado-cgroup-v1.service $(DEBIAN_ROOT)/etc/systemd/system/sysinit.target.wants/micado-cgroup-v1.service
	echo 'deb [trusted=yes] file:$(DEBIAN_REPO) ./' | $(AS_ROOT) tee $(DEBIAN_ROOT)/etc/apt/sources.list >/dev/null
	$(AS_ROOT) rm -rf $(DEBIAN_ROOT)/etc/apt/sources.list.d/* $(DEBIAN_ROOT)/var/cache/apt/*.bin
	$(AS_ROOT) find $(DEBIAN_ROOT)/var/lib/apt/lists -type f ! -name lock -delete
	@for u in $(DEBIAN_MASK); do $(AS_ROOT) ln -sfn /dev/null $(DEBIAN_ROOT)/etc/systemd/system/$$u; done
	@# Like a cloud image: machine-id made on first boot, no leftover instance;
	@# an empty seed directory, so `docker cp` can put the seed files into it.
	$(AS_ROOT) sh -c ': > $(DEBIAN_ROOT)/etc/machine-id; rm -f $(DEBIAN_ROOT)/var/lib/dbus/machine-id; rm -rf $(DEBIAN_ROOT)/var/lib/cloud/*; mkdir -p $(DEBIAN_ROOT)/var/lib/cloud/seed/nocloud; echo localhost > $(DEBIAN_ROOT)/etc/hostname'
	touch $@

# The image carries the hash of everything it is made from; when the tagged
# image has it, nothing is rebuilt (a fresh clone does not debootstrap again).
DEBIAN_INPUTS := $(shell { echo '$(DEBIAN_SUITE) $(DEBIAN_MIRROR) $(DEBIAN_PKGS) $(DEBIAN_REPO_PKGS) $(DEBIAN_REPO) $(DEBIAN_MASK)'; cat images/debian-cloud/*; } | sha256sum | cut -c1-16)

.PHONY: image-debian
image-debian: ## Build the stock Debian cloud image (DEBIAN_IMAGE) with debootstrap, if its inputs changed (slow the first time)
	@if [ "$$($(DOCKER) image inspect -f '{{index .Config.Labels "io.micado.debian-inputs"}}' $(DEBIAN_IMAGE) 2>/dev/null)" = "$(DEBIAN_INPUTS)" ]; then \
		echo "image-debian: $(DEBIAN_IMAGE) is up to date"; \
	else \
		$(MAKE) --no-print-directory debian-import; \
	fi

.PHONY: debian-import
debian-import: $(DEBIAN_DIR)/rootfs.stamp
	@echo "image-debian: importing $(DEBIAN_ROOT) as $(DEBIAN_IMAGE)"
	$(AS_ROOT) tar -C $(DEBIAN_ROOT) --numeric-owner --xattrs --xattrs-include='*' -c . | \
		$(DOCKER) import --change 'CMD ["/sbin/init"]' --change 'ENV container=docker' - $(DEBIAN_IMAGE)
	printf 'FROM %s\nSTOPSIGNAL SIGRTMIN+3\n' $(DEBIAN_IMAGE) | \
		$(DOCKER) build -q --label $(IMAGE_LABEL) --label io.micado.debian-inputs=$(DEBIAN_INPUTS) -t $(DEBIAN_IMAGE) -

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
test: lint tools images image-debian ## Run every test: unit, property and end-to-end (needs Docker; installs the test tools, builds Consul and the images first)
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
