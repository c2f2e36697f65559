#!/usr/bin/env bash
# End-to-end test of the page at `/` in Debian's headless Chromium (tests/e2e/).
# Needs /usr/bin/chromium (Debian package `chromium`); never downloads a browser. Under CI=true it
# installs the package with apt-get when missing; elsewhere it says how and exits non-zero.
# Screenshots and the server log land in target/e2e/.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/apt.sh

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
    if [ "${CI:-}" = "true" ]; then
        echo "e2e: $CHROMIUM missing"
        apt_install e2e chromium
        [ -x "$CHROMIUM" ] || { echo "e2e: chromium installed but $CHROMIUM is still missing" >&2; exit 2; }
    else
        echo "e2e: no Chromium at $CHROMIUM." >&2
        echo "e2e: install Debian's browser with:  sudo apt-get update && sudo apt-get install -y chromium" >&2
        echo "e2e: (or set CHROMIUM=/path/to/chromium). The test never downloads a browser." >&2
        exit 2
    fi
fi
command -v node >/dev/null || { echo "e2e: node (>= 20) and npm are required" >&2; exit 2; }

CARGO="${CARGO:-cargo}"
TARGET="${CARGO_TARGET_DIR:-target}"
case "$TARGET" in /*) ;; *) TARGET="$PWD/$TARGET" ;; esac

(cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
"$CARGO" build --bin syncast
export SYNCAST_BIN="${SYNCAST_BIN:-$TARGET/debug/syncast}"
export CHROMIUM
export E2E_OUT="${E2E_OUT:-$PWD/target/e2e}"
cd tests/e2e
node --test --test-concurrency=1 --test-reporter=spec page.test.mjs
echo "e2e: screenshots in $E2E_OUT"
