#!/usr/bin/env bash
# syncast's streams under a spec-following EventSource client: the npm `eventsource` package
# (tests/e2e/eventsource.test.mjs, node's own test runner), against the real binary. No browser:
# `npm ci` installs only the locked packages (playwright-core downloads no browser on install).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v node >/dev/null || { echo "eventsource: node (>= 20) and npm are required" >&2; exit 2; }
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || { echo "eventsource: node >= 20 needed, found $(node --version)" >&2; exit 2; }

CARGO="${CARGO:-cargo}"
TARGET="${CARGO_TARGET_DIR:-target}"
case "$TARGET" in /*) ;; *) TARGET="$PWD/$TARGET" ;; esac

(cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
"$CARGO" build --bin syncast
export SYNCAST_BIN="${SYNCAST_BIN:-$TARGET/debug/syncast}"
export E2E_OUT="${E2E_OUT:-$PWD/target/e2e}"
cd tests/e2e
node --test --test-concurrency=1 --test-reporter=spec eventsource.test.mjs
