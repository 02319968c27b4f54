#!/usr/bin/env bash
# Go modules and golangci-lint (installed from the Go module proxy into ./bin).
set -euo pipefail
go mod download
GOLANGCI_VERSION=v2.6.2
if [ ! -x bin/golangci-lint ] || ! bin/golangci-lint version 2>/dev/null | grep -q "${GOLANGCI_VERSION#v}"; then
  # make lint needs it (lint is policy): a failed install fails deps.
  if ! GOBIN="$PWD/bin" GOFLAGS= go install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@${GOLANGCI_VERSION}"; then
    echo "deps: golangci-lint ${GOLANGCI_VERSION} could not be installed into bin/ (make lint needs it)" >&2
    exit 1
  fi
fi
