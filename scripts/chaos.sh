#!/usr/bin/env bash
# chaos.sh runs kvroute's full chaos suite (bench/chaos, KVROUTE_CHAOS=full) with the
# race detector and prints the table of outcomes for bench/RESULTS.md; the table is
# also written to $KVROUTE_CHAOS_TABLE (default bench/out/chaos-table.md).
# Extra arguments go to `go test`, e.g. scripts/chaos.sh -run NATS.
set -euo pipefail
cd "$(dirname "$0")/.."
table=${KVROUTE_CHAOS_TABLE:-bench/out/chaos-table.md}
mkdir -p "$(dirname "$table")"
case $table in /*) ;; *) table=$PWD/$table ;; esac
KVROUTE_CHAOS=full KVROUTE_CHAOS_TABLE=$table go test -race -count=1 -timeout 30m -v "$@" ./bench/chaos/
echo
cat "$table"
