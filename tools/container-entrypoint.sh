#!/usr/bin/env bash
# Entry point of the container image (Dockerfile): run podium with its
# settings from PODIUM_* environment variables and its log on standard
# output.
#
# podium writes its JSON log lines to standard error. A container's log
# should be standard output, so both streams go there; the metrics.emf
# lines are on standard output already. Each log line and each EMF line is
# one write(2), so lines from the two never mix within a line.
#
# Arguments: a podium command and its options (`healthcheck`, `query ...`),
# or nothing or only options, which mean `podium run` with those options.
# Before `podium run`, the folder of store.path must exist and be
# writable, so that a volume mounted with the wrong owner fails with a
# message that names the folder and the fix.
set -euo pipefail

fail() {
    echo "podium-entrypoint: $*" >&2
    exit 2
}

main() {
    if (($# == 0)) || [[ "$1" == -* ]]; then
        set -- run "$@"
    fi
    command -v podium >/dev/null 2>&1 ||
        fail "podium not found in PATH ($PATH)"

    if [[ "$1" == run ]]; then
        local store="${PODIUM_STORE_PATH:-podium.db}" dir
        dir="$(dirname -- "$store")"
        [[ -d "$dir" ]] ||
            fail "the folder $dir of store.path ($store) does not exist: mount a volume there or set PODIUM_STORE_PATH"
        [[ -w "$dir" && -x "$dir" ]] ||
            fail "the folder $dir of store.path ($store) is not writable by uid $(id -u): give the volume to uid $(id -u) (chown $(id -u):$(id -g)) or run the container with --user set to the volume's owner"
    fi
    exec podium "$@" 2>&1
}

main "$@"
