#!/usr/bin/env bash
# What the tests need from the system beyond Rust: `ip` from iproute2 (tests/no_fin.rs, root:
# network namespaces), `systemd-analyze` from systemd (tests/package.rs checks
# contrib/syncast.service with it) and `redis-server` (tests/nodes.rs starts its own, on a free
# loopback port; Debian's package does not start a system instance where services cannot be
# started, and the tests never use one) with `openssl` for the TLS one's certificates. tests/thread_limit.rs needs only the kernel (a pids cgroup,
# or RLIMIT_NPROC). Never downloads anything but Debian's packages. Under CI=true it installs
# what is missing with apt-get (as scripts/e2e.sh does for chromium); elsewhere it says what is
# missing and carries on: the tests that need it then fail, saying so.
set -euo pipefail
. "$(dirname "$0")/apt.sh"

missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v redis-server >/dev/null || [ -n "${REDIS_SERVER:-}" ] || missing+=(redis-server)
command -v openssl >/dev/null || missing+=(openssl)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "${CI:-}" = "true" ]; then
    echo "test-deps: missing ${missing[*]}"
    apt_install test-deps "${missing[@]}"
    for cmd in ip systemd-analyze redis-server openssl; do
        command -v "$cmd" >/dev/null || { echo "test-deps: $cmd still missing after the install" >&2; exit 2; }
    done
else
    echo "test-deps: missing Debian packages: ${missing[*]} (the tests that need them will fail)." >&2
    echo "test-deps: install them with:  sudo apt-get install -y ${missing[*]}" >&2
fi
