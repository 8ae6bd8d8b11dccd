#!/usr/bin/env bash
# podium simulate --malformed, --late and --skew, written to a file and
# replayed.
#
# 1. The same seed and options write the same bytes twice.
# 2. The file is counted without podium. It counts the records that are
#    not telemetry, by kind, and the records that arrive more than
#    race.allowed_lateness_s + 1 seconds after their second. It also counts
#    the riders whose deviceTimestamp is off, and their records ahead by
#    more than race.max_future_skew_s. Every count must equal the one that
#    simulate printed, and none may be 0.
# 3. podium replay of the file must count the same: every malformed record
#    is a dead letter with its kind as the reason, every late record is
#    applied as a late amendment, and every record ahead by more than the
#    limit is quarantined.
# 4. Invalid fractions and --shards with --stream are usage errors.
# 5. --late in a race too short for the late delay, or --late and
#    --malformed with many skewed clocks, warn with the numbers, and a
#    long race with few skewed clocks does not.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

START_MS=1700000000000
# The defaults of race.allowed_lateness_s and race.max_future_skew_s.
ALLOWED_LATENESS_S=2
MAX_FUTURE_SKEW_S=300

simulate() {
    "$PODIUM_BIN" simulate --racers 90 --seconds 40 --classes 3 --seed 23 \
        --duplicates 0.03 --malformed 0.01 --late 0.01 --skew 0.1 \
        --shards 3 --start-ms "$START_MS" "$@"
}

# json_field FILE PATH: a value of the JSON object in FILE, such as
# malformed.not_json.
json_field() {
    node -e 'let v = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); for (const k of process.argv[2].split(".")) v = v[k]; console.log(v)' "$1" "$2"
}

# Count the faults in a recording (argument 1) as JSON on standard output.
count_faults() {
    node -e '
const fs = require("fs");
const [file, startMs, latenessS, maxSkewS] = process.argv.slice(1);
const counts = {malformed: {not_json: 0, invalid_utf8: 0, missing_field: 0, value_range: 0},
                late: 0, skewed_riders: 0, skewed_beyond_limit: 0};
const offsets = new Map();
const seen = new Set();
for (const line of fs.readFileSync(file, "utf8").trim().split("\n")) {
  const r = JSON.parse(line);
  const data = Buffer.from(r.Data, "base64");
  if (data.includes(0xff)) { counts.malformed.invalid_utf8++; continue; }
  let d;
  try { d = JSON.parse(data.toString()); } catch { counts.malformed.not_json++; continue; }
  if (d.racerId === undefined) { counts.malformed.missing_field++; continue; }
  if (d.cadence > 1000) { counts.malformed.value_range++; continue; }
  if (seen.has(d.uuid)) continue; // a duplicate
  seen.add(d.uuid);
  const secondMs = Number(startMs) + d.second * 1000;
  const arrivalMs = Math.round(r.ApproximateArrivalTimestamp * 1000);
  if (arrivalMs - secondMs > (Number(latenessS) + 1) * 1000) counts.late++;
  // Device times lie 0 to 199 ms into their second on a correct clock;
  // an offset is a whole number of seconds.
  const offsetS = Math.round((d.deviceTimestamp - secondMs - 100) / 1000);
  if (offsetS !== 0) {
    offsets.set(d.racerId, offsetS);
    if (offsetS > Number(maxSkewS)) counts.skewed_beyond_limit++;
  }
}
counts.skewed_riders = offsets.size;
console.log(JSON.stringify(counts));
' "$1" "$START_MS" "$ALLOWED_LATENESS_S" "$MAX_FUTURE_SKEW_S"
}

check_file() {
    simulate --out "$E2E_DIR/faults.jsonl" >"$E2E_DIR/simulate.out" 2>"$E2E_DIR/simulate.log" ||
        e2e_fail "podium simulate failed: see $E2E_DIR/simulate.log"
    simulate --out "$E2E_DIR/faults-again.jsonl" >/dev/null 2>>"$E2E_DIR/simulate.log" ||
        e2e_fail "podium simulate failed the second time: see $E2E_DIR/simulate.log"
    cmp "$E2E_DIR/faults.jsonl" "$E2E_DIR/faults-again.jsonl" ||
        e2e_fail "the same seed and options wrote different files"

    count_faults "$E2E_DIR/faults.jsonl" >"$E2E_DIR/counted.json" ||
        e2e_fail "could not count the faults in $E2E_DIR/faults.jsonl"
    local field have want
    for field in malformed.not_json malformed.invalid_utf8 malformed.missing_field \
        malformed.value_range late skewed_riders skewed_beyond_limit; do
        want="$(json_field "$E2E_DIR/simulate.out" "$field")"
        have="$(json_field "$E2E_DIR/counted.json" "$field")"
        [[ "$have" == "$want" ]] ||
            e2e_fail "the file contains $have records of $field, simulate printed $want"
        [[ "$want" -gt 0 ]] || e2e_fail "the seeded file contains no $field; choose other fractions"
    done
    [[ "$(cut -d'"' -f4 "$E2E_DIR/faults.jsonl" | sort -u | tr '\n' ' ')" == \
        "shardId-000000000000 shardId-000000000001 shardId-000000000002 " ]] ||
        e2e_fail "--shards 3 did not write the shards 0 to 2"
    e2e_log "the seeded file contains what simulate counted: $(cat "$E2E_DIR/counted.json")"
}

check_replay() {
    local status=0
    "$PODIUM_BIN" replay --set "store.path=$E2E_DIR/faults.db" \
        --set publish.transport=file --set "publish.file=$E2E_DIR/published.jsonl" \
        "$E2E_DIR/faults.jsonl" >"$E2E_DIR/replay.out" 2>"$E2E_DIR/replay.log" || status=$?
    [[ $status -eq 0 ]] || e2e_fail "podium replay exited $status: see $E2E_DIR/replay.log"

    local kind want have malformed=0
    for kind in not_json invalid_utf8 missing_field value_range; do
        want="$(json_field "$E2E_DIR/simulate.out" "malformed.$kind")"
        malformed=$((malformed + want))
        have="$(sqlite3 "$E2E_DIR/faults.db" "SELECT count(*) FROM dead_letters WHERE reason = '$kind'")"
        [[ "$have" == "$want" ]] ||
            e2e_fail "the store has $have dead letters of reason $kind, expected $want"
    done
    have="$(json_field "$E2E_DIR/replay.out" rejected)"
    [[ "$have" == "$malformed" ]] || e2e_fail "the replay rejected $have records, expected $malformed"

    want="$(json_field "$E2E_DIR/simulate.out" late)"
    have="$(json_field "$E2E_DIR/replay.out" late_amended)"
    [[ "$have" == "$want" ]] || e2e_fail "the replay amended $have late records, expected $want"

    want="$(json_field "$E2E_DIR/simulate.out" skewed_beyond_limit)"
    have="$(json_field "$E2E_DIR/replay.out" quarantined)"
    [[ "$have" == "$want" ]] || e2e_fail "the replay quarantined $have records, expected $want"
    have="$(sqlite3 "$E2E_DIR/faults.db" "SELECT count(*) FROM dead_letters WHERE reason = 'quarantined_skew'")"
    [[ "$have" == "$want" ]] ||
        e2e_fail "the store has $have dead letters of reason quarantined_skew, expected $want"
    e2e_log "the replay counts every fault: $(cat "$E2E_DIR/replay.out")"
}

check_usage() {
    local args status
    for args in "--malformed 1.5 --out -" "--late x --out -" "--skew -0.1 --out -" \
        "--shards 0 --out -" "--shards 2 --stream s"; do
        status=0
        # shellcheck disable=SC2086 # the options are split on purpose
        "$PODIUM_BIN" simulate --racers 1 --seconds 1 $args >/dev/null 2>"$E2E_DIR/usage.log" || status=$?
        [[ $status -eq 2 ]] || e2e_fail "podium simulate $args exited $status, expected 2"
        grep -q "podium simulate: .*--[a-z]*" "$E2E_DIR/usage.log" ||
            e2e_fail "podium simulate $args did not name the option: $(cat "$E2E_DIR/usage.log")"
    done
    e2e_log "invalid fractions and --shards with --stream are usage errors"
}

# simulate_small NAME ARGS...: simulate to E2E_DIR/NAME.jsonl, with the
# summary in E2E_DIR/NAME.out and standard error in E2E_DIR/NAME.log.
simulate_small() {
    local name="$1"
    shift
    "$PODIUM_BIN" simulate --classes 1 --seed 3 --start-ms "$START_MS" \
        --out "$E2E_DIR/$name.jsonl" "$@" >"$E2E_DIR/$name.out" 2>"$E2E_DIR/$name.log" ||
        e2e_fail "podium simulate $* failed: see $E2E_DIR/$name.log"
}

# expect_warning NAME TEXT: fail unless the stderr of NAME contains TEXT.
expect_warning() {
    grep -qF -- "$2" "$E2E_DIR/$1.log" ||
        e2e_fail "podium simulate ($1) did not warn: $2
it wrote: $(cat "$E2E_DIR/$1.log")"
}

check_fault_warnings() {
    local delay=$((ALLOWED_LATENESS_S + 3))
    simulate_small too-short --racers 5 --seconds 3 --late 1
    [[ "$(json_field "$E2E_DIR/too-short.out" late)" == 0 ]] ||
        e2e_fail "a 3 s race made late records: $(cat "$E2E_DIR/too-short.out")"
    expect_warning too-short "warning: --late 1 gives no late records: a late record is put $delay s after its second (race.allowed_lateness_s + 3)"
    expect_warning too-short "pass --seconds $((delay + 1)) or more"

    simulate_small short --racers 20 --seconds 30 --late 1
    [[ "$(json_field "$E2E_DIR/short.out" late)" == $((20 * (30 - delay))) ]] ||
        e2e_fail "a 30 s race with --late 1 did not make late records in seconds 1 to $((30 - delay)) only: $(cat "$E2E_DIR/short.out")"
    expect_warning short "warning: --late 1 applies to seconds 1 to $((30 - delay)) of 30 only"

    simulate_small skewed --racers 20 --seconds 300 --late 0.1 --skew 0.5
    expect_warning skewed "warning: --late and --malformed apply only to the"
    expect_warning skewed "riders whose clock is correct (--skew 0.5)"

    simulate_small long --racers 20 --seconds 300 --late 0.1 --malformed 0.1 --skew 0.05
    [[ ! -s "$E2E_DIR/long.log" ]] ||
        e2e_fail "podium simulate warned about a long race with few skewed clocks: $(cat "$E2E_DIR/long.log")"
    e2e_log "fractions that cannot be met warn with the numbers"
}

main() {
    e2e_init e2e_simulate_faults
    check_file
    check_replay
    check_usage
    check_fault_warnings
    e2e_log "passed"
}

main "$@"
