#!/usr/bin/env bash
# upstream/scrape's tests scrape a real prometheus_client server (Debian's
# python3-prometheus-client for the system interpreter /usr/bin/python3) that registers
# the engines' metrics as vLLM and SGLang do (upstream/scrape/testdata/engine_metrics.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/apt.sh python3 python3-prometheus-client
