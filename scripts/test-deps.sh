#!/usr/bin/env bash
# What the root-only fault tests need from the system (tests/no_fin.rs: `ip` from iproute2 for
# network namespaces; tests/thread_limit.rs: the cgroup v1 pids controller, which is the
# kernel's). Never downloads anything but Debian's packages. Under CI=true it installs a missing
# package with apt-get (as scripts/e2e.sh does for chromium); elsewhere it says what is missing
# and carries on: those tests then skip themselves loudly when they cannot run.
set -euo pipefail
. "$(dirname "$0")/apt.sh"

if ! command -v ip >/dev/null; then
    if [ "${CI:-}" = "true" ]; then
        echo "test-deps: ip missing"
        apt_install test-deps iproute2
        command -v ip >/dev/null || { echo "test-deps: iproute2 installed but ip is still missing" >&2; exit 2; }
    else
        echo "test-deps: no \`ip\` (iproute2): tests/no_fin.rs will be skipped." >&2
        echo "test-deps: install it with:  sudo apt-get install -y iproute2" >&2
    fi
fi
