#!/usr/bin/env bash
# podium replay's spool files: the first pass writes each good line,
# decoded, to a temporary file of its shard in $TMPDIR, and the second pass
# reads the records back from there. The recording is the golden race of
# tests/data/golden. No peer is needed. Checks:
# 1. With TMPDIR set to an empty folder, the replay publishes what it
#    publishes with the default folder, and leaves the folder empty: the
#    spool files are unlinked as soon as they are made.
# 2. A TMPDIR that does not exist fails the replay (exit 1). The message
#    names the folder, the shard and what to do. Nothing is applied, and
#    the store is not made.
# 3. A spool that cannot be written (here: a file size limit, with SIGXFSZ
#    ignored so that write(2) fails with EFBIG) fails the replay the same
#    way, before anything is applied.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

GOLDEN="$E2E_SOURCE_DIR/tests/data/golden/race.jsonl"

# replay NAME ARGS...: podium replay of the golden race into the store
# E2E_DIR/NAME.db, writing E2E_DIR/NAME.jsonl; stdout to E2E_DIR/NAME.out,
# stderr to E2E_DIR/NAME.log. Returns podium's exit status.
replay() {
    local name="$1"
    shift
    "$PODIUM_BIN" replay --progress never \
        --set "store.path=$E2E_DIR/$name.db" --set publish.transport=file \
        --set "publish.file=$E2E_DIR/$name.jsonl" "$@" "$GOLDEN" \
        >"$E2E_DIR/$name.out" 2>"$E2E_DIR/$name.log"
}

# expect_failure NAME STATUS TEXT...: fail unless the replay NAME exited
# STATUS, wrote every TEXT to stderr, and applied nothing.
expect_failure() {
    local name="$1" want="$2" status="$3" text
    shift 3
    [[ $status -eq $want ]] ||
        e2e_fail "podium replay ($name) exited $status, expected $want: $(head -c 2000 "$E2E_DIR/$name.log")"
    for text in "$@"; do
        grep -qF -- "$text" "$E2E_DIR/$name.log" ||
            e2e_fail "podium replay ($name) did not report: $text
it wrote: $(head -c 2000 "$E2E_DIR/$name.log")"
    done
    [[ ! -e "$E2E_DIR/$name.db" ]] ||
        e2e_fail "podium replay ($name) made its store although it failed before applying anything"
    [[ ! -s "$E2E_DIR/$name.jsonl" ]] ||
        e2e_fail "podium replay ($name) published although it failed before applying anything"
}

check_spool_folder() {
    local spool="$E2E_DIR/spool" left
    mkdir "$spool"
    replay default || e2e_fail "podium replay (default) failed: $(head -c 2000 "$E2E_DIR/default.log")"
    TMPDIR="$spool" replay tmpdir ||
        e2e_fail "podium replay with TMPDIR=$spool failed: $(head -c 2000 "$E2E_DIR/tmpdir.log")"
    cmp -s "$E2E_DIR/default.jsonl" "$E2E_DIR/tmpdir.jsonl" ||
        e2e_fail "the replay with TMPDIR=$spool published other bytes than the one with the default folder"
    [[ -s "$E2E_DIR/tmpdir.jsonl" ]] || e2e_fail "the replay published nothing"
    left="$(find "$spool" -mindepth 1 | head -n 5)"
    [[ -z "$left" ]] || e2e_fail "the replay left files in TMPDIR: $left"
    e2e_log "TMPDIR holds the spools, which leave nothing behind"
}

check_missing_folder() {
    local status=0 missing="$E2E_DIR/no-such-folder"
    TMPDIR="$missing" replay missing || status=$?
    expect_failure missing 1 "$status" \
        "cannot create a temporary file in $missing for the records of shard shardId-" \
        "No such file or directory" "set TMPDIR to a writable folder"
    # The folder is at fault, not a line of the recording.
    ! grep -qF "race.jsonl:" "$E2E_DIR/missing.log" ||
        e2e_fail "the message about TMPDIR names a line of the recording: $(head -c 2000 "$E2E_DIR/missing.log")"
    e2e_log "a missing TMPDIR is reported with what to do"
}

check_unwritable_spool() {
    local status=0 spool="$E2E_DIR/small"
    mkdir "$spool"
    # 64 KiB per file is less than the decoded records of any shard of the
    # golden race.
    (
        trap '' XFSZ
        ulimit -f 64
        TMPDIR="$spool" replay small
    ) || status=$?
    expect_failure small 1 "$status" \
        "cannot write to the temporary file in $spool that holds the records of shard shardId-" \
        "File too large" "set TMPDIR to a folder with room"
    e2e_log "a spool that cannot be written fails the replay before anything is applied"
}

main() {
    e2e_init e2e_replay_spool
    check_spool_folder
    check_missing_folder
    check_unwritable_spool
    e2e_log "passed"
}

main "$@"
