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
# message that names the folder and the fix. store.path is the one that
# podium run would use, from PODIUM_STORE_PATH, --config or --set, as
# `podium check-config` with the same options prints it.
set -euo pipefail

fail() {
    echo "podium-entrypoint: $*" >&2
    exit 2
}

# Print the store.path of `podium run ARGS`, or nothing when podium
# check-config cannot read the configuration; podium run then reports the
# error itself. check-config prints `store.path = VALUE  # SOURCE`, with
# VALUE in double quotes and \" and \\ escapes when it needs them.
effective_store_path() {
    local output line value="" i char
    # check-config exits 2 without AWS credentials but still prints the
    # settings, so its exit status does not matter here.
    output="$(podium check-config "$@" 2>/dev/null)" || true
    line="$(grep -m 1 '^store\.path = ' <<<"$output")" || return 0
    line="${line#store.path = }"
    line="${line%  # *}"
    if [[ "$line" != \"*\" ]]; then
        printf '%s\n' "$line"
        return 0
    fi
    line="${line:1:${#line}-2}"
    for ((i = 0; i < ${#line}; i++)); do
        char="${line:i:1}"
        if [[ "$char" == '\' ]]; then
            i=$((i + 1))
            char="${line:i:1}"
        fi
        value+="$char"
    done
    printf '%s\n' "$value"
}

main() {
    if (($# == 0)) || [[ "$1" == -* ]]; then
        set -- run "$@"
    fi
    command -v podium >/dev/null 2>&1 ||
        fail "podium not found in PATH ($PATH)"

    local store="" dir
    if [[ "$1" == run ]]; then
        store="$(effective_store_path "${@:2}")"
    fi
    if [[ -n "$store" ]]; then
        dir="$(dirname -- "$store")"
        [[ -d "$dir" ]] ||
            fail "the folder $dir of store.path ($store) does not exist: mount a volume there, or set PODIUM_STORE_PATH or --set store.path=PATH to a file in a mounted volume"
        [[ -w "$dir" && -x "$dir" ]] ||
            fail "the folder $dir of store.path ($store) is not writable by uid $(id -u): give the volume to uid $(id -u) (chown $(id -u):$(id -g)) or run the container with --user set to the volume's owner"
    fi
    exec podium "$@" 2>&1
}

main "$@"
