#!/usr/bin/env bash
# The Valkey index backend (indexer/valkeyindex) is tested and benchmarked against a real
# server started on a loopback port (indexer/valkeyindex/valkeytest); Debian ships Redis,
# which speaks the same protocol (valkey-server is not in Debian 12).
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/apt.sh redis-server
