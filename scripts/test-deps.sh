#!/usr/bin/env bash
# What the tests need from the system beyond Rust: `ip` from iproute2 (tests/no_fin.rs, root:
# network namespaces), `systemd-analyze` from systemd (tests/package.rs checks
# contrib/syncast.service with it), `redis-server` (tests/nodes.rs starts its own, on a free
# loopback port; Debian's package does not start a system instance where services cannot be
# started, and the tests never use one), `openssl` (the TLS one's certificates, and the auth tests'
# RS256/ES256 key pairs, made at test time), `python3` (the auth tests run the documented token
# one-liner) and `promtool` from prometheus (tests/it/metrics.rs lints /metrics with it; installed
# without its recommends, and its daemon is not started either). tests/thread_limit.rs needs only the kernel (a pids cgroup,
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
command -v python3 >/dev/null || missing+=(python3)
# Installed without the packages it recommends (prometheus recommends its node exporter).
lean=()
command -v promtool >/dev/null || lean+=(prometheus)
missing_all=("${missing[@]}" "${lean[@]}")
[ ${#missing_all[@]} -eq 0 ] && exit 0

if [ "${CI:-}" = "true" ]; then
    echo "test-deps: missing ${missing_all[*]}"
    [ ${#missing[@]} -eq 0 ] || apt_install test-deps "${missing[@]}"
    [ ${#lean[@]} -eq 0 ] || APT_NO_RECOMMENDS=1 apt_install test-deps "${lean[@]}"
    for cmd in ip systemd-analyze redis-server openssl python3 promtool; do
        command -v "$cmd" >/dev/null || { echo "test-deps: $cmd still missing after the install" >&2; exit 2; }
    done
else
    echo "test-deps: missing Debian packages: ${missing_all[*]} (the tests that need them will fail)." >&2
    echo "test-deps: install them with:  sudo apt-get install -y ${missing_all[*]}" >&2
fi
