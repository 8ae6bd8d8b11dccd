#!/usr/bin/env bash
# Install what building and testing podium needs on Debian 12, then the npm
# packages of the test peers (tools/peers.sh install).
#
# Runs apt-get as root, or through sudo for other users. Packages that are
# already installed are skipped, so a second run makes no apt-get call. When
# node already comes from another source (such as a NodeSource package that
# bundles npm), the Debian nodejs and npm packages are not installed over it.
set -euo pipefail

TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

APT_PACKAGES=(
    build-essential cmake pkg-config
    libuv1-dev libcurl4-openssl-dev libjansson-dev libsqlite3-dev libssl-dev
    libmosquitto-dev mosquitto mosquitto-clients sqlite3
    curl ca-certificates openssl faketime python3 clang-format systemd
)

die() {
    echo "deps: $*" >&2
    exit 1
}

is_installed() {
    local package="$1"
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'
}

run_as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "installing packages needs root: run this script as root or install sudo"
    fi
}

list_missing_packages() {
    local package
    for package in "${APT_PACKAGES[@]}"; do
        if ! is_installed "$package"; then
            echo "$package"
        fi
    done
    # Node may come from outside Debian; only its commands matter here.
    if ! command -v node >/dev/null 2>&1; then
        echo nodejs
    fi
    if ! command -v npm >/dev/null 2>&1; then
        echo npm
    fi
}

main() {
    command -v dpkg-query >/dev/null 2>&1 ||
        die "dpkg-query not found: this script installs Debian packages and needs Debian 12"

    local missing=()
    mapfile -t missing < <(list_missing_packages)
    if ((${#missing[@]} > 0)); then
        echo "deps: installing ${missing[*]}"
        run_as_root apt-get update
        run_as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends "${missing[@]}"
    else
        echo "deps: all Debian packages are installed"
    fi

    bash "$TOOLS_DIR/peers.sh" install
}

main "$@"
