#!/usr/bin/env bash
# Install the dependencies, build podium in build-ci with warnings as errors
# and run every test with ctest. Exits with ctest's status.
#
# The end-to-end tests keep their peers and logs in build-ci/e2e-work. A
# test that ctest kills on a timeout cannot stop its own peers, so this
# script stops every peer recorded there when it exits.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="$REPO_DIR/build-ci"
E2E_WORK_DIR="$BUILD_DIR/e2e-work"

stop_recorded_peers() {
    local dir
    [[ -d "$E2E_WORK_DIR" ]] || return 0
    for dir in "$E2E_WORK_DIR"/*/; do
        [[ -d "$dir" ]] || continue
        bash "$REPO_DIR/tools/peers.sh" stop "$dir" || true
    done
}

main() {
    cd "$REPO_DIR"
    bash tools/deps.sh

    cmake -S . -B "$BUILD_DIR" -DPODIUM_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
    cmake --build "$BUILD_DIR" -j2

    # Peers left by an earlier, interrupted run are stopped before their
    # folders go.
    stop_recorded_peers
    rm -rf "$E2E_WORK_DIR"
    trap stop_recorded_peers EXIT

    local status=0
    (cd "$BUILD_DIR" && ctest --output-on-failure -j2 --timeout 300) || status=$?
    if [[ $status -ne 0 ]]; then
        echo "test: ctest failed with exit status $status; the logs of failed end-to-end tests are kept in $E2E_WORK_DIR" >&2
    fi
    exit "$status"
}

main "$@"
