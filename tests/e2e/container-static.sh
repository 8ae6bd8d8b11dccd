#!/usr/bin/env bash
# Static checks of the Dockerfile and its scripts, because no container
# engine runs here. Both stages must be on debian:12-slim, with a non-root
# numeric USER that owns the volume and a HEALTHCHECK with podium
# healthcheck. The image must set the environment that podium needs in a
# container. The RUN steps must be the tools/container-*.sh commands that
# tests/e2e/container.sh runs. The package lists must match tools/deps.sh,
# and the runtime packages must provide every library that podium links.
set -euo pipefail

SOURCE_DIR="${PODIUM_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
DOCKERFILE="$SOURCE_DIR/Dockerfile"
NAME=container_static

fail() {
    echo "[$NAME] FAILED: $*" >&2
    exit 1
}

log() {
    echo "[$NAME] $*"
}

# Print the instructions of the Dockerfile one a line, continuation lines
# joined and comments left out.
instructions() {
    awk '
        /^[ \t]*#/ { next }
        {
            line = $0
            sub(/^[ \t]+/, "", line)
            if (sub(/\\$/, "", line)) { joined = joined line; next }
            joined = joined line
            if (joined != "") print joined
            joined = ""
        }
    ' "$DOCKERFILE" | sed -E 's/[ \t]+/ /g; s/ $//'
}

# Print the instructions of stage NUMBER (1 for the first FROM).
stage() {
    local number="$1"
    instructions | awk -v want="$number" '/^FROM / { n++ } n == want'
}

# expect_line TEXT WHERE LINES: fail unless LINES contains the line TEXT.
expect_line() {
    local text="$1" where="$2" lines="$3"
    grep -qxF -- "$text" <<<"$lines" || fail "$where has no line \"$text\"; it has:
$lines"
}

check_stages() {
    local froms
    froms="$(instructions | grep '^FROM ')"
    [[ "$(wc -l <<<"$froms")" == 2 ]] || fail "the Dockerfile must have 2 stages, it has: $froms"
    [[ "$(sed -n 1p <<<"$froms")" == "FROM debian:12-slim AS build" ]] ||
        fail "the build stage is \"$(sed -n 1p <<<"$froms")\", expected \"FROM debian:12-slim AS build\""
    [[ "$(sed -n 2p <<<"$froms")" == "FROM debian:12-slim" ]] ||
        fail "the runtime stage is \"$(sed -n 2p <<<"$froms")\", expected \"FROM debian:12-slim\""
    log "both stages are on debian:12-slim"
}

# The RUN steps must be the commands that the tests run.
check_run_steps() {
    local build runtime
    build="$(stage 1)"
    runtime="$(stage 2)"
    expect_line "RUN bash /src/tools/container-deps.sh build" "the build stage" "$build"
    expect_line "RUN bash tools/container-build.sh /opt/podium" "the build stage" "$build"
    expect_line "COPY --from=build /opt/podium/bin/podium /usr/local/bin/podium" "the runtime stage" "$runtime"
    expect_line "RUN bash /tmp/container-deps.sh runtime && rm /tmp/container-deps.sh" "the runtime stage" "$runtime"
    expect_line "COPY tools/container-entrypoint.sh /usr/local/bin/podium-entrypoint" "the runtime stage" "$runtime"
    expect_line 'ENTRYPOINT ["podium-entrypoint"]' "the runtime stage" "$runtime"
    expect_line 'CMD ["run"]' "the runtime stage" "$runtime"
    local script
    for script in container-deps.sh container-build.sh container-entrypoint.sh; do
        [[ -f "$SOURCE_DIR/tools/$script" ]] || fail "tools/$script, which the Dockerfile uses, does not exist"
    done
    log "the RUN steps are the tools/container-*.sh commands"
}

check_user() {
    local runtime user uid gid
    runtime="$(stage 2)"
    user="$(grep '^USER ' <<<"$runtime" | tail -n 1 | cut -d' ' -f2)"
    [[ -n "$user" ]] || fail "the runtime stage has no USER, so podium would run as root"
    [[ "$user" =~ ^([0-9]+):([0-9]+)$ ]] ||
        fail "USER is \"$user\", expected a numeric UID:GID, which Kubernetes' runAsNonRoot can verify"
    uid="${BASH_REMATCH[1]}"
    gid="${BASH_REMATCH[2]}"
    ((uid != 0)) || fail "USER is root (uid 0)"
    grep -q -- "useradd .*--uid $uid .*--gid $gid" <<<"$runtime" ||
        fail "no useradd creates uid $uid with gid $gid in the runtime stage"
    grep -q -- "groupadd .*--gid $gid" <<<"$runtime" || fail "no groupadd creates gid $gid in the runtime stage"
    # The USER line comes after every RUN, so that no step runs as it.
    local last_run user_line
    last_run="$(grep -n '^RUN ' <<<"$runtime" | tail -n 1 | cut -d: -f1)"
    user_line="$(grep -n '^USER ' <<<"$runtime" | tail -n 1 | cut -d: -f1)"
    ((user_line > last_run)) || fail "USER comes before the last RUN of the runtime stage"
    log "podium runs as uid $uid, gid $gid"
    echo "$uid:$gid" >"$WORK/user"
}

check_environment() {
    local runtime volume store listen user
    runtime="$(stage 2)"
    listen="$(grep -o 'PODIUM_HTTP_LISTEN=[^ ]*' <<<"$runtime" || true)"
    [[ "$listen" == "PODIUM_HTTP_LISTEN=0.0.0.0:9464" ]] ||
        fail "the runtime stage sets \"$listen\", expected PODIUM_HTTP_LISTEN=0.0.0.0:9464 so that the published port reaches /metrics"
    expect_line "EXPOSE 9464" "the runtime stage" "$runtime"
    store="$(grep -o 'PODIUM_STORE_PATH=[^ ]*' <<<"$runtime" || true)"
    store="${store#PODIUM_STORE_PATH=}"
    [[ -n "$store" ]] || fail "the runtime stage sets no PODIUM_STORE_PATH"
    volume="$(grep '^VOLUME ' <<<"$runtime" || true)"
    [[ "$volume" == "VOLUME [\"$(dirname "$store")\"]" ]] ||
        fail "the VOLUME line is \"$volume\", expected the folder of store.path $store"
    user="$(cat "$WORK/user")"
    grep -q -- "chown $user $(dirname "$store")" <<<"$runtime" ||
        fail "the runtime stage does not give $(dirname "$store") to $user, so a new volume would not be writable"
    # Every PODIUM_* variable of the image names a setting of podium.
    local variable help
    help="$("$PODIUM_BIN" run --help)"
    for variable in $(grep -o 'PODIUM_[A-Z0-9_]*=' <<<"$runtime" | tr -d =); do
        grep -q "($variable)" <<<"$help" || fail "the Dockerfile sets $variable, which is no setting of podium run --help"
    done
    log "the environment names settings, and the store is on the volume $(dirname "$store")"
}

check_healthcheck() {
    local runtime line
    runtime="$(stage 2)"
    line="$(grep '^HEALTHCHECK ' <<<"$runtime" || true)"
    [[ -n "$line" ]] || fail "the runtime stage has no HEALTHCHECK"
    [[ "$line" == *'CMD ["podium", "healthcheck"'* ]] ||
        fail "the HEALTHCHECK is \"$line\", expected CMD [\"podium\", \"healthcheck\", ...]"
    # Its arguments must be accepted by podium healthcheck.
    local args
    args="$(sed -E 's/.*CMD \["podium", "healthcheck"(.*)\]$/\1/; s/", "/ /g; s/^, "//; s/"$//' <<<"$line")"
    local status=0
    # shellcheck disable=SC2086 # the arguments are words without spaces
    "$PODIUM_BIN" healthcheck $args --url http://127.0.0.1:1/readyz >/dev/null 2>"$WORK/healthcheck.err" || status=$?
    [[ $status -eq 1 ]] ||
        fail "podium healthcheck $args against a closed port exited $status, expected 1: $(cat "$WORK/healthcheck.err")"
    log "the HEALTHCHECK runs podium healthcheck $args"
}

# The build packages must be those of tools/deps.sh for building: the
# compiler, CMake, pkg-config and every -dev package.
check_build_packages() {
    local deps container wanted
    deps="$(sed -n '/^APT_PACKAGES=(/,/^)/p' "$SOURCE_DIR/tools/deps.sh" | tr ' ' '\n' | sed '/^$/d; /[()=]/d')"
    wanted="$(grep -E -- '-dev$|^(build-essential|cmake|pkg-config)$' <<<"$deps" | sort)"
    container="$(bash "$SOURCE_DIR/tools/container-deps.sh" --list build | sort)"
    [[ -n "$wanted" ]] || fail "found no build packages in tools/deps.sh"
    [[ "$container" == "$wanted" ]] || fail "tools/container-deps.sh build lists
$container
but tools/deps.sh installs for building
$wanted"
    log "the build packages are those of tools/deps.sh"
}

# Every library that podium links directly comes from a runtime package,
# or from libc6, which debian:12-slim has. Each runtime package must exist
# in Debian 12, which this machine runs, so it must be installed here.
check_runtime_packages() {
    local runtime package
    runtime="$(bash "$SOURCE_DIR/tools/container-deps.sh" --list runtime)"
    for package in $runtime; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' ||
            fail "the runtime package $package is not installed on this Debian machine, so its name is wrong or the binary does not need it"
    done
    local needed library path owner
    needed="$(readelf -d "$PODIUM_BIN" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')"
    [[ -n "$needed" ]] || fail "readelf found no NEEDED library in $PODIUM_BIN"
    for library in $needed; do
        path="$(ldd "$PODIUM_BIN" | awk -v lib="$library" '$1 == lib { print $3 }')"
        [[ -n "$path" ]] || fail "ldd does not resolve $library of $PODIUM_BIN"
        path="$(readlink -f "$path")"
        owner="$(dpkg -S "$path" 2>/dev/null | head -n 1 | cut -d: -f1)" ||
            true
        if [[ -z "$owner" ]]; then
            # usrmerge: dpkg may know the file under /lib instead of /usr/lib.
            owner="$(dpkg -S "${path#/usr}" 2>/dev/null | head -n 1 | cut -d: -f1)" || true
        fi
        [[ -n "$owner" ]] || fail "no Debian package owns $path ($library)"
        [[ "$owner" == libc6 ]] || grep -qxF "$owner" <<<"$runtime" ||
            fail "podium links $library from the package $owner, which tools/container-deps.sh runtime does not install"
    done
    log "the runtime packages provide $(wc -w <<<"$needed") libraries of podium"
}

main() {
    [[ -x "${PODIUM_BIN:-}" ]] || fail "PODIUM_BIN='${PODIUM_BIN:-}' is not an executable file: run this test through ctest"
    [[ -f "$DOCKERFILE" ]] || fail "$DOCKERFILE does not exist"
    local command
    for command in readelf ldd dpkg-query; do
        command -v "$command" >/dev/null 2>&1 || fail "$command not found: install binutils and run on Debian"
    done
    WORK="$(mktemp -d)"
    trap 'rm -rf "$WORK"' EXIT
    check_stages
    check_run_steps
    check_user
    check_environment
    check_healthcheck
    check_build_packages
    check_runtime_packages
    log "passed"
}

main "$@"
