#!/usr/bin/env bash
# podium replay reading recordings as a stream, and its progress bar.
#
# 1. Records of four shards share one arrival millisecond per second of the
#    race, and the riders of one shard send each second 2 s after the
#    others, in the same millisecond as their newer records. Replayed at
#    --batch-size 1 and 10000, the publish files must be byte for byte the
#    same: a job never ends inside a group of one arrival millisecond,
#    within which the pipeline orders the records canonically.
# 2. --progress always draws the bar on standard error, ending with 100%;
#    --progress auto and never draw nothing when standard error is a file,
#    and auto draws it on a terminal (a pseudo-terminal from script(1)).
#    The summary on standard output is the same JSON line in every case.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# replay NAME ARGS...: podium replay into the store E2E_DIR/NAME.db, writing
# E2E_DIR/NAME.jsonl; stdout (the summary) to E2E_DIR/NAME.out, stderr to
# E2E_DIR/NAME.log. Returns podium's exit status.
replay() {
    local name="$1"
    shift
    "$PODIUM_BIN" replay --set "store.path=$E2E_DIR/$name.db" \
        --set publish.transport=file \
        --set "publish.file=$E2E_DIR/$name.jsonl" "$@" \
        >"$E2E_DIR/$name.out" 2>"$E2E_DIR/$name.log"
}

# Rewrite a recording of `podium simulate --out` (argument 1) into four
# shards by racerId, every record of second s arriving at start + s + 0.5 s,
# or 2 s later (race.allowed_lateness_s) for the riders of
# shardId-000000000003 (argument 2).
make_same_ms_recording() {
    node -e '
const fs = require("fs");
const lines = fs.readFileSync(process.argv[1], "utf8").trim().split("\n").map(JSON.parse);
const start = Math.floor(lines[0].ApproximateArrivalTimestamp);
const out = [];
for (const r of lines) {
  const d = JSON.parse(Buffer.from(r.Data, "base64").toString());
  const shard = d.racerId % 4;
  const lag = shard === 3 ? 2 : 0;
  r.ShardId = `shardId-00000000000${shard}`;
  r.ApproximateArrivalTimestamp = start + d.second + lag + 0.5;
  out.push(r);
}
// Each shard in order of arrival, as a real shard delivers its records;
// the shards stay interleaved in the file.
out.sort((a, b) => a.ApproximateArrivalTimestamp - b.ApproximateArrivalTimestamp);
fs.writeFileSync(process.argv[2], out.map((r) => JSON.stringify(r)).join("\n") + "\n");
' "$1" "$2"
}

check_same_ms_groups() {
    local simulated="$E2E_DIR/simulated.jsonl" recording="$E2E_DIR/same-ms.jsonl"
    "$PODIUM_BIN" simulate --out "$simulated" --racers 40 --seconds 30 \
        --classes 2 --seed 5 --start-ms 1700000000000 \
        >"$E2E_DIR/simulate.out" 2>"$E2E_DIR/simulate.log" ||
        e2e_fail "podium simulate failed: see $E2E_DIR/simulate.log"
    make_same_ms_recording "$simulated" "$recording" ||
        e2e_fail "could not rewrite the recording into groups of one arrival millisecond"

    local size status
    for size in 1 10000; do
        status=0
        replay "same-ms-$size" --batch-size "$size" "$recording" || status=$?
        [[ $status -eq 0 ]] ||
            e2e_fail "podium replay --batch-size $size exited $status: see $E2E_DIR/same-ms-$size.log"
    done
    [[ -s "$E2E_DIR/same-ms-1.jsonl" ]] || e2e_fail "the replay published nothing"
    cmp "$E2E_DIR/same-ms-1.jsonl" "$E2E_DIR/same-ms-10000.jsonl" ||
        e2e_fail "--batch-size 1 and 10000 published different bytes for records that share arrival milliseconds"
    e2e_log "--batch-size 1 and 10000 publish the same $(wc -l <"$E2E_DIR/same-ms-1.jsonl") messages for groups of one arrival millisecond"
}

check_progress() {
    local recording="$E2E_DIR/same-ms.jsonl" mode status
    for mode in always auto never; do
        status=0
        replay "progress-$mode" --progress "$mode" "$recording" || status=$?
        [[ $status -eq 0 ]] ||
            e2e_fail "podium replay --progress $mode exited $status: see $E2E_DIR/progress-$mode.log"
    done
    grep -q $'\r''podium replay: replaying 100% \[#*\] ' "$E2E_DIR/progress-always.log" ||
        e2e_fail "--progress always drew no bar at 100%: $(cat -v "$E2E_DIR/progress-always.log")"
    grep -q 'records/s' "$E2E_DIR/progress-always.log" ||
        e2e_fail "--progress always showed no rate: $(cat -v "$E2E_DIR/progress-always.log")"
    for mode in auto never; do
        ! grep -q $'\r' "$E2E_DIR/progress-$mode.log" ||
            e2e_fail "--progress $mode drew a bar on a file: $(cat -v "$E2E_DIR/progress-$mode.log")"
    done
    for mode in auto never; do
        cmp "$E2E_DIR/progress-always.out" "$E2E_DIR/progress-$mode.out" >/dev/null ||
            e2e_fail "the summary of --progress $mode differs from --progress always"
    done
    status=0
    replay progress-bad --progress sometimes "$recording" || status=$?
    [[ $status -eq 2 ]] || e2e_fail "--progress sometimes exited $status, expected 2"
    grep -q 'invalid --progress "sometimes": expected auto, always or never' "$E2E_DIR/progress-bad.log" ||
        e2e_fail "--progress sometimes was not reported: $(cat "$E2E_DIR/progress-bad.log")"

    # script(1) runs the replay on a pseudo-terminal, which carries both
    # standard output and standard error into the typescript.
    command -v script >/dev/null ||
        e2e_fail "script not found: install the Debian package bsdutils"
    local command
    printf -v command '%q ' "$PODIUM_BIN" replay --progress auto \
        --set "store.path=$E2E_DIR/progress-tty.db" --set publish.transport=file \
        --set "publish.file=$E2E_DIR/progress-tty.jsonl" "$recording"
    status=0
    script -q -e -c "$command" "$E2E_DIR/progress-tty.typescript" </dev/null >/dev/null || status=$?
    [[ $status -eq 0 ]] ||
        e2e_fail "podium replay on a pseudo-terminal exited $status: see $E2E_DIR/progress-tty.typescript"
    grep -q $'\r''podium replay: replaying 100% ' "$E2E_DIR/progress-tty.typescript" ||
        e2e_fail "--progress auto drew no bar on a terminal: $(cat -v "$E2E_DIR/progress-tty.typescript")"
    e2e_log "the bar is drawn with always and on a terminal, and never on a file"
}

main() {
    e2e_init e2e_replay_stream
    check_same_ms_groups
    check_progress
    e2e_log "passed"
}

main "$@"
