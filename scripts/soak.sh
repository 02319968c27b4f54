#!/usr/bin/env bash
# soak.sh runs `kvroute serve` in front of a kvsim fleet (4 simulated vLLM workers with KV
# events) for SOAK_MINUTES (default 30) under a steady mixed load from `kvbench load`
# (streaming multi-turn conversations and shared-prefix prompts, replayed round after
# round with new prompts), plus a side load of non-streaming chat completions, malformed
# JSON, unknown models, oversized bodies and clients that hang up mid-stream. Every
# minute it samples the router process's goroutines, heap in use, RSS and open files
# (the router's /metrics: go_goroutines, go_memstats_heap_inuse_bytes,
# process_resident_memory_bytes, process_open_fds), its request count, kvsim's RSS and
# open files (/proc) and the host load average. The router's RSS is also split into
# anonymous memory (RssAnon: heap, stacks, runtime) and file-backed pages (RssFile: the
# binary's code and data as it touches them), next to the Go runtime's total
# (go_memstats_sys_bytes), so a slow RSS creep can be told apart from a leak; the GC's
# next target (go_memstats_next_gc_bytes, 1+GOGC/100 times the heap live after the last
# collection) follows the live heap without the sawtooth of heap in use; the engine-mode
# /tokenize cache's entries (kvroute_tokenize_cache_entries) grow with the side load's
# new chat texts up to their bound. Router, fleet and load are separate
# processes, so the router's figures are its own.
#
# Output in $OUT: samples.tsv, load.log (kvbench load), kvroute.log, kvsim.log,
# metrics.end.txt (the router's last /metrics) and a start/end summary on stdout.
#
# Usage: SOAK_MINUTES=30 OUT=/tmp/soak scripts/soak.sh   (NICE=19 runs everything niced;
# TOKENIZE_CACHE=N sets the router's tokenize.cache_entries, so that the cache reaches its
# bound within the run and the heap after that shows whether anything else grows;
# DATA_PLANE=event_loop serves on the event-loop data plane)
set -euo pipefail
cd "$(dirname "$0")/.."
MIN=${SOAK_MINUTES:-30}
OUT=${OUT:-/tmp/soak}
PORT=${PORT:-18080}
SIMPORT=${SIMPORT:-19100}
NICE=${NICE:-0}
TOKENIZE_CACHE=${TOKENIZE_CACHE:-}
DATA_PLANE=${DATA_PLANE:-}
mkdir -p "$OUT"
go build -o "$OUT/kvroute" ./cmd/kvroute
go build -o "$OUT/kvsim" ./cmd/kvsim
go build -o "$OUT/kvbench" ./cmd/kvbench
model=soak-llama-3.1-8b
n=4
{
	echo "listen: 127.0.0.1:$PORT"
	echo "policy: cache_aware"
	echo "max_body_bytes: 1048576" # the side load's 2 MB bodies get 413
	if [ -n "$DATA_PLANE" ]; then
		echo "data_plane: $DATA_PLANE"
	fi
	if [ -n "$TOKENIZE_CACHE" ]; then
		echo "tokenize: {cache_entries: $TOKENIZE_CACHE}"
	fi
	echo "workers:"
	for i in $(seq 0 $((n - 1))); do
		p=$((SIMPORT + 3 * i))
		echo "  - id: w$i"
		echo "    url: http://127.0.0.1:$p"
		echo "    models: [$model]"
		echo "    events: tcp://127.0.0.1:$((p + 1))"
		echo "    replay: tcp://127.0.0.1:$((p + 2))"
	done
} >"$OUT/kvroute.yaml"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
nice -n "$NICE" "$OUT/kvsim" --workers "$n" --base-port "$SIMPORT" --model "$model" --time-scale 0.1 \
	--stream-chunk-tokens 4 >"$OUT/kvsim.log" 2>&1 &
sim=$!
pids+=("$sim")
url="http://127.0.0.1:$PORT"
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$SIMPORT/health" >/dev/null 2>&1 && break; sleep 0.2; done
nice -n "$NICE" "$OUT/kvroute" serve --config "$OUT/kvroute.yaml" --log-level warn >"$OUT/kvroute.log" 2>&1 &
router=$!
pids+=("$router")
for _ in $(seq 100); do curl -fs "$url/ready" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fs "$url/ready" >/dev/null
nice -n "$NICE" "$OUT/kvbench" load --url "$url" --model "$model" --duration "$((MIN + 1))m" --report 60s \
	>"$OUT/load.log" 2>&1 &
pids+=("$!")
big=$(head -c 2000000 /dev/zero | tr '\0' a)
side() {
	local n=0
	while :; do
		n=$((n + 1))
		curl -s -o /dev/null "$url/v1/chat/completions" -H 'Content-Type: application/json' \
			-d "{\"model\":\"$model\",\"max_tokens\":16,\"messages\":[{\"role\":\"user\",\"content\":\"soak request $n about cache routing\"}]}" || true
		curl -s -o /dev/null "$url/v1/chat/completions" -H 'Content-Type: application/json' -d '{"model":' || true
		curl -s -o /dev/null "$url/v1/chat/completions" -H 'Content-Type: application/json' \
			-d '{"model":"no-such-model","messages":[{"role":"user","content":"hi"}]}' || true
		curl -s -o /dev/null --max-time 0.05 "$url/v1/chat/completions" -H 'Content-Type: application/json' \
			-d "{\"model\":\"$model\",\"stream\":true,\"max_tokens\":200,\"messages\":[{\"role\":\"user\",\"content\":\"hang up $n\"}]}" || true
		if [ $((n % 10)) -eq 0 ]; then
			printf '{"model":"%s","prompt":"%s"}' "$model" "$big" |
				curl -s -o /dev/null "$url/v1/completions" -H 'Content-Type: application/json' --data-binary @- || true
		fi
		sleep 0.2
	done
}
side &
pids+=("$!")
metric() { grep -E "^$1(\{[^}]*\})? " <<<"$2" | awk '{s+=$2} END {printf "%.0f", s}'; }
printf 'minute\tgoroutines\theap_inuse_bytes\trss_bytes\topen_fds\trequests\tkvsim_rss_bytes\tkvsim_fds\tload1\tgo_sys_bytes\trss_anon_bytes\trss_file_bytes\tindex_blocks\tnext_gc_bytes\ttokenize_cache_entries\n' >"$OUT/samples.tsv"
for m in $(seq 0 "$MIN"); do
	[ "$m" -gt 0 ] && sleep 60
	body=$(curl -fs "$url/metrics")
	simrss=$(awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$sim/status")
	simfds=$(ls "/proc/$sim/fd" | wc -l)
	kb() { awk -v k="$1:" '$1 == k {print $2 * 1024}' "/proc/$router/status"; }
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$m" "$(metric go_goroutines "$body")" "$(metric go_memstats_heap_inuse_bytes "$body")" \
		"$(metric process_resident_memory_bytes "$body")" "$(metric process_open_fds "$body")" \
		"$(metric kvroute_router_requests_total "$body")" "$simrss" "$simfds" "$(cut -d' ' -f1 /proc/loadavg)" \
		"$(metric go_memstats_sys_bytes "$body")" "$(kb RssAnon)" "$(kb RssFile)" "$(metric kvroute_indexer_blocks "$body")" \
		"$(metric go_memstats_next_gc_bytes "$body")" "$(metric kvroute_tokenize_cache_entries "$body")" | tee -a "$OUT/samples.tsv"
done
curl -fs "$url/metrics" >"$OUT/metrics.end.txt" || true
echo "start and end:"
sed -n '2p;$p' "$OUT/samples.tsv"
