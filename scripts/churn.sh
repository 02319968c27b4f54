#!/usr/bin/env bash
# churn.sh runs the fleet-churn scenarios of bench/churn at full length (a rolling
# restart of 4 workers, a scale-up 2 -> 6, a scale-down 6 -> 2, under 30 req/s of
# multi-turn chat) and prints their table for bench/RESULTS.md; the table is also
# written to $KVROUTE_CHURN_TABLE (default bench/out/churn-table.md). No race detector:
# the table holds timings. Extra arguments go to `go test`.
set -euo pipefail
cd "$(dirname "$0")/.."
table=${KVROUTE_CHURN_TABLE:-bench/out/churn-table.md}
mkdir -p "$(dirname "$table")"
case $table in /*) ;; *) table=$PWD/$table ;; esac
go test -count=1 -timeout 30m -v -run TestChurnReport "$@" ./bench/churn/ -churn.report="$table"
echo
cat "$table"
