#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian machine. Idempotent: each step
# checks before it installs. Runs every scripts/deps.d/*.sh in name order, so each part
# of the repo owns the dependencies of its own tests.
set -euo pipefail
cd "$(dirname "$0")/.."
for f in scripts/deps.d/*.sh; do
  [ -e "$f" ] || continue
  echo "deps: $f"
  bash "$f"
done
