#!/bin/sh
# `make bench`: release build, then syncast-bench starts the release server itself (free port,
# temporary store) and drives it from its own process with epoll clients. Writes
# target/bench/results.json (or $CARGO_TARGET_DIR/bench/results.json). Extra arguments go to
# syncast-bench, e.g. `scripts/bench.sh --runs 1 --only idle`.
set -eu
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
# 10,000 streams need ~10,000 descriptors in the server and as many in the bench: raise the
# soft limit to the hard one (20,000 on the development machine).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "open files limit: $(ulimit -n)"
$CARGO build --release --bins
exec "${CARGO_TARGET_DIR:-target}/release/syncast-bench" "$@"
