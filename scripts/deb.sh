#!/usr/bin/env bash
# `make deb`: the Debian package ([package.metadata.deb] in Cargo.toml): the release binary as
# /usr/bin/syncast, contrib/syncast.service as the systemd unit, contrib/syncast.default as the
# conffile /etc/default/syncast. Builds the release binary as `make release` does (so
# `make stress` after it builds nothing again), then packs it with cargo-deb without building.
# Prints the .deb's path on standard output, everything else on standard error.
# cargo-deb is installed from crates.io at the pinned version when missing, under CI=true;
# elsewhere the script says how and exits 2.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
CARGO_DEB_VERSION=3.8.0

if ! "$CARGO" deb --version >/dev/null 2>&1; then
    if [ "${CI:-}" = "true" ]; then
        echo "deb: installing cargo-deb $CARGO_DEB_VERSION (CI=true)" >&2
        "$CARGO" install cargo-deb --locked --version "$CARGO_DEB_VERSION" >&2
    else
        echo "deb: cargo-deb is missing; install it with:" >&2
        echo "deb:   cargo install cargo-deb --locked --version $CARGO_DEB_VERSION" >&2
        exit 2
    fi
fi
have=$("$CARGO" deb --version 2>/dev/null)
[ "$have" = "cargo-deb $CARGO_DEB_VERSION" ] ||
    echo "deb: using $have (the pinned one is $CARGO_DEB_VERSION)" >&2

"$CARGO" build --release --bins >&2
"$CARGO" deb --no-build
