#!/usr/bin/env bash
# Dependency guard (issue 18), run by `make lint` and so by `make test` and `make check`:
# - no async runtime anywhere in the tree (normal, build and dev dependencies, every target,
#   with the default features and with all of them):
#   syncast is thread-per-client by design, and a dependency that pulls a runtime in (the
#   tiny_http_fork changelog announces async internals) must fail CI, not slip in;
# - tiny_http is exactly 0.12.0, the version whose behaviour src/http/ works around line by line
#   (see docs/architecture.md, Dependencies).
set -euo pipefail
CARGO=${CARGO:-cargo}
RUNTIMES='tokio|tokio-uring|async-std|async-global-executor|async-executor|async-task|async-io|smol|futures-executor|actix-rt|glommio|monoio|embassy-executor|bastion|tokio-util'

# Every feature on too (redis-tls: the redis crate's TLS), so an optional dependency cannot bring
# a runtime in unseen.
names=$( { "$CARGO" tree --locked -e all --prefix none --format '{p}'
           "$CARGO" tree --locked -e all --prefix none --format '{p}' --all-features; } |
         awk '{print $1}' | sort -u)
found=$(printf '%s\n' "$names" | grep -Ex "($RUNTIMES)" || true)
if [ -n "$found" ]; then
    echo "deps-check: async runtime in the dependency tree: $(echo $found)" >&2
    for crate in $found; do
        "$CARGO" tree --locked -e all --all-features -i "$crate" >&2 || true
    done
    exit 1
fi

tiny=$("$CARGO" tree --locked -e normal -i tiny_http --prefix none --depth 0 --format '{p}')
if [ "$tiny" != "tiny_http v0.12.0" ]; then
    echo "deps-check: expected tiny_http v0.12.0, found: $tiny" >&2
    exit 1
fi
echo "deps-check: no async runtime; $tiny"
