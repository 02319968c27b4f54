# make test is the one test command (README); .ci/run calls it on a clean machine.
GO ?= go
PKGS := ./...
export PATH := $(CURDIR)/bin:$(PATH)

.PHONY: all build test deps fmt-check vet lint unit chaos bench-proxy clean

all: build

build:
	$(GO) build -o bin/ ./cmd/...

deps:
	scripts/deps.sh

test: deps fmt-check vet lint unit

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

# Lint is policy (layer rules included): a missing linter fails, it is never skipped.
lint:
	@if [ ! -x bin/golangci-lint ]; then \
		echo "lint: bin/golangci-lint is missing: run scripts/deps.sh (make deps) to install it" >&2; exit 1; fi
	bin/golangci-lint run --allow-parallel-runners $(PKGS)

# The router's tests and the quick chaos suite run twice: with the default data plane
# and with the event loop.
unit:
	$(GO) test -race -timeout 30m $(PKGS)
	KVROUTE_TEST_DATA_PLANE=event_loop $(GO) test -race -timeout 10m ./router/ ./bench/chaos/

# The full chaos suite (a quick subset runs in make test) and the proxy-overhead
# benchmark against nginx; both print their tables for bench/RESULTS.md.
chaos:
	scripts/chaos.sh

bench-proxy:
	scripts/bench-proxy.sh

clean:
	rm -rf bin bench/out
