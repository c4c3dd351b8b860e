# tcptrace build, code generation and tests. The real-kernel tests need root.
GO ?= go
# Pinned compiler for the committed eBPF objects (Debian package clang-19).
CLANG ?= clang-19
LLVM_STRIP ?= llvm-strip-19
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

export BPF2GO_CC := $(CLANG)
export BPF2GO_STRIP := $(LLVM_STRIP)

.PHONY: all build generate test docs check-docs vet check-generated soak bench bigleak vmtest clean image

all: build

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/tcptrace ./cmd/tcptrace

# Rebuild the bpf2go bindings and objects from bpf/*.c. Through a fixed
# path: clang's BTF for some objects (destroy.bpf.c) depends on the
# directory they are compiled in, and a checkout can be anywhere. LLVM and
# Go take the working directory from $$PWD when it names the same place.
GENERATE_DIR ?= /tmp/tcptrace-generate
generate:
	ln -sfn $(CURDIR) $(GENERATE_DIR)
	cd $(GENERATE_DIR)/tracer && PWD=$(GENERATE_DIR)/tracer $(GO) generate .

# Unit tests run anywhere; real-kernel tests skip without root unless
# TCPTRACE_REQUIRE_PRIVILEGED=1, which turns the skip into a failure.
# With the race detector (TEST_RACE=0 turns it off; the kernel matrix's
# static test binaries run without it). A generous timeout: cmd/tcptrace takes minutes on a loaded
# machine, more under qemu TCG; no test relies on it.
TEST_RACE ?= 1
TEST_TIMEOUT ?= 45m
test:
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(if $(filter 1,$(TEST_RACE)),-race) $(GOTESTFLAGS) ./...

# The generated reference pages (docs/cli.md, docs/events.md,
# docs/metrics.md), from the CLI, the event schema and the metrics catalog.
docs:
	TCPTRACE_UPDATE_DOCS=1 $(GO) test -count=1 -run '^TestGeneratedDocs$$' ./cmd/tcptrace

# Fails when a generated page is stale or a relative link of the README or
# docs/ is broken.
check-docs:
	$(GO) test -count=1 -run '^(TestGeneratedDocs|TestDocLinks)$$' ./cmd/tcptrace
	$(GO) test -count=1 ./internal/docgen

vet:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi

# Fails when the committed generated files differ from a fresh generate.
check-generated: generate
	scripts/checkgen.sh

# Not in CI: 1,000,000 connections (SOAK_N) under closewait and trace; prints
# emitted/lost/unaccounted, peak RSS and goroutines. With SOAK_DURATION (1h):
# the quiet closewait that long under churn with 1,000 stuck sockets coming
# and going; slopes of RSS, goroutines and fds per hour (docs/soak.md).
# Needs root.
soak:
	scripts/soak.sh

# Not in CI: connection churn with no tracer, tcptrace closewait (quiet and
# --all) and trace, and libbpf-tools tcpstates and bpftrace when they
# install; medians of alternating rounds (BENCH_ROUNDS, BENCH_N), for each
# workload shape (BENCH_SHAPES). Needs root.
bench:
	scripts/bench.sh

# Not in CI: LEAK_N (100,000) sockets held in CLOSE-WAIT under closewait:
# time to report them all, CPU then and idle, peak RSS, table scan cost.
bigleak:
	scripts/bigleak.sh

# The kernel matrix: the tests, real-kernel ones included, on Debian's
# kernels under qemu (downloaded with apt, cached). KERNELS picks the series.
KERNELS ?= 5.10 6.1 6.12 7.2
vmtest:
	scripts/vmtest.sh $(KERNELS)

# The container image (Dockerfile; needs Docker with BuildKit).
IMAGE ?= ghcr.io/tcptrace/tcptrace:$(VERSION)
image:
	docker build -t $(IMAGE) --build-arg VERSION=$(VERSION) .

clean:
	rm -rf bin
