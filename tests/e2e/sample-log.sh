#!/usr/bin/env bash
# The sample log keeps every sample the aggregator stored, in order, so a
# sample that replaced another is in it twice. Everything that reads it
# must see the later copy only. No peer is needed. Checks:
# 1. Two records of one rider and second with other values: the one with
#    the smaller (deviceTimestamp, uuid) wins. The log contains both copies,
#    and `podium query samples` prints the winner once.
# 2. A second replay of the same file on the same store restores the
#    aggregator from that log, finds every record a duplicate, publishes
#    nothing, and the samples stay as they were.
# 3. A record that arrives after the restore, for the next second, is
#    applied on top of the restored state, and its leaderboard ranks the
#    rider with the winner's values.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# record_lines FIRST_SEQ LINES...: print recording lines for one shard.
# Each LINE is "ARRIVAL_S PAYLOAD_JSON"; sequence numbers count up from
# FIRST_SEQ.
record_lines() {
    node -e '
        let seq = BigInt(process.argv[1]);
        for (const arg of process.argv.slice(2)) {
            const at = arg.indexOf(" ");
            const payload = arg.slice(at + 1);
            console.log(JSON.stringify({
                ShardId: "shardId-000000000000",
                SequenceNumber: String(seq++).padStart(56, "0"),
                ApproximateArrivalTimestamp: Number(arg.slice(0, at)),
                PartitionKey: "k",
                Data: Buffer.from(payload).toString("base64"),
            }));
        }
    ' "$@"
}

# payload UUID SECOND DEVICE_MS CADENCE: one rider's telemetry.
payload() {
    printf '{"uuid":"%s","event":"update","deviceTimestamp":%s,"second":%s,"raceId":7,"name":"Ann","racerId":3,"classId":1,"cadence":%s,"resistance":50}' \
        "$1" "$3" "$2" "$4"
}

# replay NAME FILE: podium replay of FILE into E2E_DIR/podium.db, writing
# the messages to E2E_DIR/NAME.jsonl and the summary to E2E_DIR/NAME.out.
replay() {
    "$PODIUM_BIN" replay --progress never --set "store.path=$E2E_DIR/podium.db" \
        --set publish.transport=file --set "publish.file=$E2E_DIR/$1.jsonl" \
        "$2" >"$E2E_DIR/$1.out" 2>"$E2E_DIR/$1.log" ||
        e2e_fail "podium replay of $2 failed: see $E2E_DIR/$1.log"
}

summary_field() {
    node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))[process.argv[2]])' \
        "$E2E_DIR/$1.out" "$2"
}

main() {
    e2e_init e2e_sample_log
    local uuid_late=b0000000-0000-4000-8000-000000000002
    local uuid_win=b0000000-0000-4000-8000-000000000001
    local recording="$E2E_DIR/conflict-recording.jsonl"
    record_lines 1 \
        "1767225601.6 $(payload "$uuid_late" 1 1767225601500 80)" \
        "1767225601.7 $(payload "$uuid_win" 1 1767225601100 90)" \
        "1767225602.2 $(payload b0000000-0000-4000-8000-000000000003 2 1767225602100 80)" \
        >"$recording"

    replay first "$recording"
    [[ "$(summary_field first applied)" == 3 ]] ||
        e2e_fail "the first replay did not apply 3 records: $(cat "$E2E_DIR/first.out")"
    grep -q "sample conflict" "$E2E_DIR/first.log" ||
        e2e_fail "the first replay did not report the conflict: see $E2E_DIR/first.log"
    local logged
    logged="$(e2e_sql "$E2E_DIR/podium.db" 'SELECT sum(count) FROM sample_log')"
    [[ "$logged" == 3 ]] || e2e_fail "the sample log contains $logged samples, expected 3 (both copies of second 1)"
    e2e_samples "$E2E_DIR/podium.db" >"$E2E_DIR/samples-first.jsonl"
    [[ "$(wc -l <"$E2E_DIR/samples-first.jsonl")" == 2 ]] ||
        e2e_fail "podium query samples did not print 2 samples: see $E2E_DIR/samples-first.jsonl"
    grep -q "\"second\":1,.*\"uuid\":\"$uuid_win\",.*\"cadence\":90," "$E2E_DIR/samples-first.jsonl" ||
        e2e_fail "second 1 is not the winning copy: see $E2E_DIR/samples-first.jsonl"
    ! grep -q "$uuid_late" "$E2E_DIR/samples-first.jsonl" ||
        e2e_fail "the replaced copy of second 1 is still listed: see $E2E_DIR/samples-first.jsonl"
    e2e_log "the log contains both copies, podium query samples prints the winner"

    replay again "$recording"
    [[ "$(summary_field again duplicates)" == 3 && "$(summary_field again applied)" == 0 ]] ||
        e2e_fail "the second replay did not find 3 duplicates: $(cat "$E2E_DIR/again.out")"
    [[ ! -s "$E2E_DIR/again.jsonl" ]] || e2e_fail "the second replay published: see $E2E_DIR/again.jsonl"
    e2e_samples "$E2E_DIR/podium.db" | cmp -s - "$E2E_DIR/samples-first.jsonl" ||
        e2e_fail "the samples changed after a replay of duplicates"
    e2e_log "a replay of the same file restores from the log and applies nothing"

    local next="$E2E_DIR/next-recording.jsonl"
    record_lines 10 \
        "1767225603.2 $(payload b0000000-0000-4000-8000-000000000004 3 1767225603100 80)" \
        "1767225606.2 $(payload b0000000-0000-4000-8000-000000000005 6 1767225606100 80)" \
        >"$next"
    replay next "$next"
    [[ "$(summary_field next applied)" == 2 ]] ||
        e2e_fail "the replay after the restore did not apply 2 records: $(cat "$E2E_DIR/next.out")"
    # Second 1 gave 143.75 with cadence 90 and second 2 gave 132.25, so
    # the rider's total after second 3 is 143.75 + 132.25 + 132.25.
    grep -q '"second":3,.*"total":408.25' "$E2E_DIR/next.jsonl" ||
        e2e_fail "the leaderboard of second 3 does not build on the winning copy: see $E2E_DIR/next.jsonl"
    e2e_log "passed"
}

main "$@"
