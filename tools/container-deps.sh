#!/usr/bin/env bash
# Install the Debian 12 packages of one stage of the container image
# (Dockerfile): "build" for the build stage, "runtime" for the image that
# runs podium. With --list, print the package names one a line and install
# nothing. tests/e2e/container-static.sh compares those lists with
# tools/deps.sh and with the libraries that the podium binary needs.
#
#   bash tools/container-deps.sh [--list] build|runtime
#
# Installing runs apt-get, so it needs root, as in a Dockerfile RUN step.
set -euo pipefail

# The compiler, CMake and the -dev packages that tools/deps.sh installs
# for building.
BUILD_PACKAGES=(
    build-essential cmake pkg-config
    libuv1-dev libcurl4-openssl-dev libjansson-dev libsqlite3-dev libssl-dev
    libmosquitto-dev
)

# The shared libraries that podium links, and the CA certificates that
# HTTPS to Kinesis and to the AWS IoT data plane verifies with.
RUNTIME_PACKAGES=(
    libuv1 libcurl4 libjansson4 libsqlite3-0 libssl3 libmosquitto1
    ca-certificates
)

die() {
    echo "container-deps: $*" >&2
    exit 2
}

main() {
    local list=0
    if [[ "${1:-}" == --list ]]; then
        list=1
        shift
    fi
    (($# == 1)) || die "usage: bash tools/container-deps.sh [--list] build|runtime"
    local packages=()
    case "$1" in
    build) packages=("${BUILD_PACKAGES[@]}") ;;
    runtime) packages=("${RUNTIME_PACKAGES[@]}") ;;
    *) die "unknown stage \"$1\": expected build or runtime" ;;
    esac

    if ((list)); then
        printf '%s\n' "${packages[@]}"
        return 0
    fi
    [[ "$(id -u)" -eq 0 ]] ||
        die "installing packages needs root: run it as root, as a Dockerfile RUN step does, or use --list"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}"
    # The package lists are of no use in the image.
    rm -rf /var/lib/apt/lists/*
}

main "$@"
