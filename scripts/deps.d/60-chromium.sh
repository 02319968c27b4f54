#!/usr/bin/env bash
# router/admin's browser test drives Debian's headless Chromium (/usr/bin/chromium) with
# chromedp. Fonts so the dashboard screenshot has readable text.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/apt.sh chromium fonts-dejavu-core
