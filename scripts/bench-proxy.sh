#!/usr/bin/env bash
# Proxy-overhead benchmark of issue 2 (bench/RESULTS.md, "Proxy overhead"): direct vs
# kvroute vs nginx on loopback. Installs Debian's nginx if missing, builds kvroute and
# kvbench into bench/out/proxy/bin, and runs `kvbench proxy` with any extra flags given
# (see `kvbench proxy --help`). Results: bench/out/proxy/results.{md,json}.
#
#   scripts/bench-proxy.sh                      # 3 rounds x 20 s, perf profiles (about 4 minutes)
#   REV=HEAD scripts/bench-proxy.sh             # build from a commit, not the work tree
#   scripts/bench-proxy.sh --rounds 1 --duration 5s
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/out/proxy
mkdir -p "$out/bin"
scripts/apt.sh nginx || echo "bench-proxy: nginx could not be installed; measuring without it" >&2
src=.
version=$(git describe --always --dirty 2>/dev/null || echo dev)
if [ -n "${REV:-}" ]; then
  src="$out/src"
  rm -rf "$src" && mkdir -p "$src"
  git archive "$REV" | tar -x -C "$src"
  version=$(git rev-parse --short "$REV")
fi
(cd "$src" && go build -ldflags "-X main.version=$version" -o "$OLDPWD/$out/bin/" ./cmd/kvroute ./cmd/kvbench)
perf=none
command -v perf >/dev/null && perf=auto
set -x
"$out/bin/kvbench" proxy --kvroute "$out/bin/kvroute" --nginx auto --perf "$perf" --out "$out" "$@"
