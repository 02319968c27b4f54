#!/usr/bin/env bash
# Go modules and golangci-lint (installed from the Go module proxy into ./bin).
set -euo pipefail
go mod download
GOLANGCI_VERSION=v2.6.2
if [ ! -x bin/golangci-lint ] || ! bin/golangci-lint version 2>/dev/null | grep -q "${GOLANGCI_VERSION#v}"; then
  GOBIN="$PWD/bin" GOFLAGS= go install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@${GOLANGCI_VERSION}" \
    || echo "deps: golangci-lint could not be installed; make lint will be skipped" >&2
fi
