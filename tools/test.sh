#!/usr/bin/env bash
# Install the dependencies, build podium in build-ci with warnings as errors
# and run every test with ctest. Exits with ctest's status.
#
# The end-to-end tests keep their peers and logs in build-ci/e2e-work. A
# test that ctest kills on a timeout cannot stop its own processes, so this
# script stops every peer and process recorded there when it exits.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="$REPO_DIR/build-ci"
E2E_WORK_DIR="$BUILD_DIR/e2e-work"

# Send SIGKILL to each process listed in FILE as "PID EXECUTABLE" that
# still runs that executable, so a reused pid is never signalled.
kill_listed_processes() {
    local file="$1" pid executable
    while read -r pid executable; do
        [[ "$pid" =~ ^[0-9]+$ ]] || continue
        if [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$executable" ]]; then
            echo "test: stopping $executable (pid $pid) left by a killed test" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done <"$file"
}

stop_recorded_peers() {
    local dir
    [[ -d "$E2E_WORK_DIR" ]] || return 0
    for dir in "$E2E_WORK_DIR"/*/; do
        [[ -d "$dir" ]] || continue
        if [[ -f "$dir/processes.txt" ]]; then
            kill_listed_processes "$dir/processes.txt"
        fi
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
