#!/usr/bin/env bash
# The container's entry point checks the folder of the store.path that
# podium run would use: from PODIUM_STORE_PATH, overridden by a
# configuration file (--config) or by --set store.path=PATH. A missing
# folder stops it with a message that names the folder, and an existing
# one lets podium start. The entry point runs the podium binary of the
# build, with an environment of PATH, HOME and PODIUM_* variables only.
set -euo pipefail

NAME=e2e_container_store_path
SOURCE_DIR="${PODIUM_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
ENTRYPOINT="$SOURCE_DIR/tools/container-entrypoint.sh"

fail() {
    echo "[$NAME] FAILED: $*" >&2
    exit 1
}

[[ -x "${PODIUM_BIN:-}" ]] || fail "PODIUM_BIN='${PODIUM_BIN:-}' is not an executable file: run this test through ctest"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/volume" "$work/home"
ln -s "$PODIUM_BIN" "$work/bin/podium"

STATUS=0
OUTPUT=""
# entrypoint STORE_PATH_VARIABLE ARGS...: run the entry point with
# PODIUM_STORE_PATH set to the first argument, or unset when it is empty.
# No stream.name is set, so a podium run that gets past the entry point's
# check exits 2 with its own message at once.
entrypoint() {
    local store="$1"
    shift
    local environment=("PATH=$work/bin:/usr/bin:/bin" "HOME=$work/home")
    if [[ -n "$store" ]]; then
        environment+=("PODIUM_STORE_PATH=$store")
    fi
    STATUS=0
    OUTPUT="$(env -i "${environment[@]}" bash "$ENTRYPOINT" "$@" 2>&1 </dev/null)" || STATUS=$?
}

# expect_missing_folder DIR WHAT: the entry point stopped because DIR does
# not exist.
expect_missing_folder() {
    local dir="$1" what="$2"
    [[ $STATUS -eq 2 ]] || fail "$what: the entry point exited $STATUS, expected 2: $OUTPUT"
    [[ "$OUTPUT" == "podium-entrypoint: the folder $dir of store.path ("*") does not exist"* ]] ||
        fail "$what: the entry point did not name the missing folder $dir: $OUTPUT"
}

# expect_podium_started WHAT: the entry point passed its check and ran
# podium, which stopped on the missing stream.name.
expect_podium_started() {
    local what="$1"
    [[ "$OUTPUT" != *podium-entrypoint:* ]] || fail "$what: the entry point stopped podium: $OUTPUT"
    [[ "$OUTPUT" == *stream.name* ]] || fail "$what: podium run did not report the missing stream.name: $OUTPUT"
}

missing="$work/missing"
volume="$work/volume"

entrypoint "$volume/podium.db" --set "store.path=$missing/podium.db"
expect_missing_folder "$missing" "--set store.path in a missing folder, PODIUM_STORE_PATH in the volume"

entrypoint "$volume/podium.db" run --set "store.path=$missing/podium.db"
expect_missing_folder "$missing" "run --set store.path in a missing folder"

# PODIUM_STORE_PATH overrides the file, so the variable is unset here.
# The value needs quotes in check-config's output.
printf 'store.path = "%s/podium #1.db"\n' "$missing" >"$work/podium.conf"
entrypoint "" --config "$work/podium.conf"
expect_missing_folder "$missing" "store.path of --config in a missing folder"
[[ "$OUTPUT" == *"($missing/podium #1.db)"* ]] ||
    fail "the entry point did not name store.path $missing/podium #1.db of the file: $OUTPUT"

printf 'store.path = %s/podium.db\n' "$volume" >"$work/podium.conf"
entrypoint "" --config "$work/podium.conf"
expect_podium_started "store.path of --config in the volume"

entrypoint "$missing/podium.db" --set "store.path=$volume/podium.db"
expect_podium_started "--set store.path in the volume, PODIUM_STORE_PATH in a missing folder"

entrypoint "$missing/podium.db"
expect_missing_folder "$missing" "PODIUM_STORE_PATH in a missing folder"

entrypoint "$volume/podium.db"
expect_podium_started "PODIUM_STORE_PATH in the volume"

echo "[$NAME] the entry point checks the folder of the store.path that podium run uses"
