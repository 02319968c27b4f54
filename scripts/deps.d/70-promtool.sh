#!/usr/bin/env bash
# configs/prometheus's alert rules are checked with promtool (configs/prometheus_test.go),
# which Debian ships in its prometheus package.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/apt.sh prometheus
