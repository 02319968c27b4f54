#!/usr/bin/env bash
# soak.sh runs kvroute demo (router + 4 simulated workers + streaming multi-turn chat
# users) for SOAK_MINUTES (default 30) with a side load of non-streaming completions,
# malformed JSON, unknown models and clients that hang up mid-stream, and samples the
# process's goroutines, heap, RSS and open files from its /metrics every minute.
# Output: $OUT/samples.tsv and a start/end summary on stdout. The demo process holds the
# router, the fleet and the chat users, so the figures are theirs together.
#
# Usage: SOAK_MINUTES=30 OUT=/tmp/soak scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MIN=${SOAK_MINUTES:-30}
OUT=${OUT:-/tmp/soak}
PORT=${PORT:-18080}
mkdir -p "$OUT"
go build -o "$OUT/kvroute" ./cmd/kvroute
"$OUT/kvroute" demo --listen "127.0.0.1:$PORT" --users 16 --report 60s --duration "$((MIN + 1))m" >"$OUT/demo.log" 2>&1 &
demo=$!
trap 'kill $demo 2>/dev/null || true; kill $(jobs -p) 2>/dev/null || true' EXIT
url="http://127.0.0.1:$PORT"
for _ in $(seq 100); do curl -fs "$url/ready" >/dev/null 2>&1 && break; sleep 0.2; done
model=$(curl -fs "$url/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
side() {
	local n=0
	while :; do
		n=$((n + 1))
		curl -s -o /dev/null "$url/v1/completions" -H 'Content-Type: application/json' \
			-d "{\"model\":\"$model\",\"prompt\":\"soak request $n about cache routing\",\"max_tokens\":16}" || true
		curl -s -o /dev/null "$url/v1/chat/completions" -H 'Content-Type: application/json' -d '{"model":' || true
		curl -s -o /dev/null "$url/v1/chat/completions" -H 'Content-Type: application/json' \
			-d '{"model":"no-such-model","messages":[{"role":"user","content":"hi"}]}' || true
		curl -s -o /dev/null --max-time 0.05 "$url/v1/chat/completions" -H 'Content-Type: application/json' \
			-d "{\"model\":\"$model\",\"stream\":true,\"max_tokens\":200,\"messages\":[{\"role\":\"user\",\"content\":\"hang up $n\"}]}" || true
		sleep 0.2
	done
}
side &
metric() { grep -E "^$1(\{[^}]*\})? " <<<"$2" | awk '{s+=$2} END {printf "%.0f", s}'; }
printf 'minute\tgoroutines\theap_inuse_bytes\trss_bytes\topen_fds\trequests\n' >"$OUT/samples.tsv"
for m in $(seq 0 "$MIN"); do
	[ "$m" -gt 0 ] && sleep 60
	body=$(curl -fs "$url/metrics")
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$m" "$(metric go_goroutines "$body")" "$(metric go_memstats_heap_inuse_bytes "$body")" \
		"$(metric process_resident_memory_bytes "$body")" "$(metric process_open_fds "$body")" \
		"$(metric kvroute_router_requests_total "$body")" | tee -a "$OUT/samples.tsv"
done
echo "start and end:"
sed -n '2p;$p' "$OUT/samples.tsv"
