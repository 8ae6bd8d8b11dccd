#!/usr/bin/env bash
# Build podium in Release mode without the tests and install it under
# PREFIX (PREFIX/bin/podium). The build stage of the Dockerfile runs this
# script, and tests/e2e/container.sh runs it too, so the binary that the
# test starts is built the way the image's binary is.
#
#   bash tools/container-build.sh PREFIX
#
# The build folder is a temporary folder that is removed afterwards.
set -euo pipefail

SOURCE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR=""

die() {
    echo "container-build: $*" >&2
    exit 2
}

main() {
    (($# == 1)) || die "usage: bash tools/container-build.sh PREFIX"
    local prefix="$1"
    [[ "$prefix" == /* ]] || die "PREFIX \"$prefix\" is not an absolute path"
    BUILD_DIR="$(mktemp -d "${TMPDIR:-/tmp}/podium-build.XXXXXX")"
    trap 'rm -rf "$BUILD_DIR"' EXIT

    cmake -S "$SOURCE_DIR" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release \
        -DPODIUM_TESTS=OFF -DPODIUM_WERROR=ON
    cmake --build "$BUILD_DIR" -j "$(nproc)"
    cmake --install "$BUILD_DIR" --prefix "$prefix" --strip
}

main "$@"
