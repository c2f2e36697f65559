# Sourced by scripts/test-deps.sh and scripts/e2e.sh: installs Debian packages with apt-get,
# through sudo unless already root. Only called under CI=true, for a package that is missing.

# apt_install TAG PACKAGE...: says what it does (prefixed with TAG), then updates the package
# lists and installs PACKAGE... without questions. With APT_NO_RECOMMENDS=1, without the
# packages they recommend (prometheus recommends its node exporter, which no test needs).
apt_install() {
    local tag=$1
    shift
    echo "$tag: installing Debian's $* package (CI=true)"
    local sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    local lean=()
    [ "${APT_NO_RECOMMENDS:-}" = 1 ] && lean=(--no-install-recommends)
    $sudo_cmd apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q "${lean[@]}" "$@"
}
