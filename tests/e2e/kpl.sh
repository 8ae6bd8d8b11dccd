#!/usr/bin/env bash
# KPL aggregated records through podium run, with a SIGKILL after an
# aggregate was committed.
#
# A one-shard stream gets, in this order:
#   A  a KPL aggregate (tests/e2e/kpl-tool.mjs) of the telemetry records
#      u-0501, u-0502 and u-0503, which share A's sequence number;
#   B  the plain telemetry record u-0504;
#   C  an aggregate of u-0506 whose MD5 is wrong, so it is no aggregate and
#      podium must store its raw bytes as a dead letter;
#   D  the plain telemetry record u-0505.
# podium reads one Kinesis record per GetRecords call (kinesis.max_records
# = 1) through tests/kinesis-fault-proxy.js. The proxy delays every
# GetRecords after the first by a minute, so the first podium commits A's
# three user records in one batch, with the checkpoint (A, 2), and cannot
# read B. It is then killed with SIGKILL, C and D are put, and podium runs
# again on the same store without faults.
#
# Checks:
# - The restart requests AT_SEQUENCE_NUMBER A, because a checkpoint with a
#   sub-sequence number above 0 may lie inside an aggregate.
# - u-0501 to u-0505 are among the stored samples once each, with the expected
#   values, and u-0506 is not.
# - C is the only dead letter, with its shard, sequence number and bytes.
# - The checkpoint ends at (D, 0).
# - The leaderboards of the race include the riders of the aggregate.
# - podium logs no error and exits 0 on SIGTERM.
#
# NOTE: the stored samples cannot show whether the restarted reader dropped
# A's committed user records or handed them on as duplicates that the
# idempotency table ignored. The reader's filter is tested on its own by
# shard_reader_restarts_inside_kpl_aggregate in tests/test_shardreader.c,
# which also covers a checkpoint in the middle of an aggregate.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STREAM=e2e
SHARD=shardId-000000000000
PROXY=proxy
RACE=R-KPL
KPL_TOOL="$E2E_LIB_DIR/kpl-tool.mjs"
# How long the proxy delays a GetRecords call of the first podium. It is
# longer than the test waits, so the first podium never reads B.
DELAY_MS=60000
# The explicit hash key of the user records in A: the middle of the
# 128-bit hash key range, which the stream's only shard covers.
EXPLICIT_HASH_KEY=170141183460469231731687303715884105728
# Seconds to wait for a commit or a message.
WAIT_S=20
# The pid of the running podium run.
PODIUM_PID=""

# telemetry UUID RACER SECOND CADENCE RESISTANCE: print one telemetry record
# of the race.
telemetry() {
    local uuid="$1" racer="$2" second="$3" cadence="$4" resistance="$5"
    printf '{"uuid":"%s","event":"update","deviceTimestamp":%d,"second":%d,"raceId":"%s","name":"Racer %s","racerId":"%s","classId":"B","cadence":%s,"resistance":%s}' \
        "$uuid" $((1767225600000 + second * 1000)) "$second" "$RACE" "$racer" "$racer" "$cadence" "$resistance"
}

# Print the bytes of base64 text as upper-case hex, as SQLite's hex() does.
base64_to_hex() {
    base64 -d <<<"$1" | od -An -v -tx1 | tr -d ' \n' | tr a-f A-F
}

# Print "SEQ SUBSEQ" of the shard's checkpoint, or nothing while there is
# none.
checkpoint_of() {
    local db="$1"
    [[ -f "$db" ]] || return 0
    e2e_sql "$db" "SELECT seq || ' ' || subseq FROM checkpoints WHERE shard_id = '$SHARD'" 2>/dev/null || true
}

# Print how many samples of the store have this uuid.
count_uuid() {
    local db="$1" uuid="$2"
    e2e_uuid_count "$db" "$uuid"
}

# wait_checkpoint DB SEQ SUBSEQ DESCRIPTION: wait until the shard's
# checkpoint is (SEQ, SUBSEQ). Fails the test when podium exits or WAIT_S
# pass first.
wait_checkpoint() {
    local db="$1" seq="$2" subseq="$3" description="$4"
    local deadline=$((SECONDS + WAIT_S)) status=0
    until [[ "$(checkpoint_of "$db")" == "$seq $subseq" ]]; do
        if ! e2e_pid_alive "$PODIUM_PID"; then
            wait "$PODIUM_PID" || status=$?
            e2e_fail "podium run exited with status $status before it committed $description: see $E2E_DIR/podium.log"
        fi
        if ((SECONDS >= deadline)); then
            e2e_fail "timed out after ${WAIT_S}s waiting for podium to commit $description: the checkpoint of $SHARD in $db is '$(checkpoint_of "$db")', expected '$seq $subseq' (see $E2E_DIR/podium.log and $E2E_DIR/$PROXY-requests.jsonl)"
        fi
        sleep 0.2
    done
}

# expect_count DB UUID COUNT WHEN: fail unless UUID is among the stored samples
# COUNT times.
expect_count() {
    local db="$1" uuid="$2" expected="$3" when="$4" count
    count="$(count_uuid "$db" "$uuid")"
    [[ "$count" == "$expected" ]] ||
        e2e_fail "$when, $uuid is among the stored samples of $db $count times, expected $expected"
}

# True when the proxy delays a GetRecords call, which podium sends only
# after the batch before it was committed.
read_delayed() {
    grep -q '"action":"GetRecords","shard":"[^"]*","fault":"slow"' "$E2E_DIR/$PROXY-requests.jsonl"
}

# Print the number of Kinesis records in the GetRecords replies that the
# proxy relayed.
records_relayed() {
    node -e '
        let total = 0;
        for (const line of require("fs").readFileSync(process.argv[1], "utf8").split("\n")) {
            if (!line.startsWith("{\"reply\":")) continue;
            total += JSON.parse(line).records ?? 0;
        }
        console.log(total);
    ' "$E2E_DIR/$PROXY-requests.jsonl"
}

start_podium() {
    local settings=()
    mapfile -t settings < <(e2e_podium_run_settings "$STREAM")
    settings+=(--set "kinesis.endpoint=http://127.0.0.1:$FAULT_PROXY_PORT" --set kinesis.max_records=1)
    e2e_start_bg podium "$PODIUM_BIN" run "${settings[@]}"
    PODIUM_PID="$E2E_LAST_PID"
}

stop_podium() {
    local status=0
    e2e_pid_alive "$PODIUM_PID" || e2e_fail "podium run exited before SIGTERM: see $E2E_DIR/podium.log"
    kill -TERM "$PODIUM_PID"
    e2e_wait_exit "$PODIUM_PID" 10 "podium run" || status=$?
    [[ $status -eq 0 ]] ||
        e2e_fail "podium run exited with status $status after SIGTERM, expected 0: see $E2E_DIR/podium.log"
}

# check_shard NAME PUT: fail unless PUT ("SHARD_ID SEQ") is on the shard.
check_shard() {
    local name="$1" put="$2"
    [[ "${put% *}" == "$SHARD" ]] || e2e_fail "record $name went to shard '${put% *}', expected $SHARD"
}

check_samples() {
    local db="$1" expected="$E2E_DIR/expected-samples.txt" actual="$E2E_DIR/store-samples.txt"
    # uuid|raceId|racerId|second|classId|name|cadence4|resistance4|output4,
    # with numbers in 1/10000 and output = (cadence + 35) x (resistance + 65) / 100.
    cat >"$expected" <<EOF
u-0501|"$RACE"|"rc-1"|50|"B"|Racer rc-1|900000|100000|937500
u-0502|"$RACE"|"rc-2"|50|"B"|Racer rc-2|800000|200000|977500
u-0503|"$RACE"|"rc-3"|51|"B"|Racer rc-3|1000000|300000|1282500
u-0504|"$RACE"|"rc-4"|51|"B"|Racer rc-4|700000|150000|840000
u-0505|"$RACE"|"rc-1"|52|"B"|Racer rc-1|950000|120000|1001000
EOF
    e2e_sample_rows "$db" '${s.uuid}|${j(s.raceId)}|${j(s.racerId)}|${s.second}|${j(s.classId)}|${s.name}|${u(s.cadence)}|${u(s.resistance)}|${u(s.output)}' |
        LC_ALL=C sort -t'|' -k1,1 >"$actual"
    if ! diff -u "$expected" "$actual" >"$E2E_DIR/samples.diff"; then
        cat "$E2E_DIR/samples.diff" >&2
        e2e_fail "the stored samples of $db differ from the records put (- expected, + store; u-0506 of C must be missing)"
    fi
    e2e_log "samples: u-0501 to u-0505 once each with the expected values, no u-0506"
}

# check_dead_letter DB SEQ DATA_BASE64: C must be the only dead letter.
check_dead_letter() {
    local db="$1" seq="$2" data="$3"
    local count row shard_id dl_seq subseq reason detail hex
    count="$(e2e_sql "$db" 'SELECT count(*) FROM dead_letters')"
    [[ "$count" == 1 ]] ||
        e2e_fail "the dead_letters table of $db has $count rows, expected 1 (record C); rows: $(e2e_sql "$db" 'SELECT shard_id, seq, subseq, reason, detail FROM dead_letters')"
    row="$(e2e_sql "$db" "SELECT shard_id, seq, subseq, reason FROM dead_letters")"
    IFS='|' read -r shard_id dl_seq subseq reason <<<"$row"
    detail="$(e2e_sql "$db" 'SELECT detail FROM dead_letters')"
    e2e_log "dead letter of C: reason $reason, detail: $detail"
    [[ "$shard_id" == "$SHARD" && "$dl_seq" == "$seq" && "$subseq" == 0 ]] ||
        e2e_fail "the dead letter is at shard $shard_id, sequence number $dl_seq, sub-sequence $subseq; expected $SHARD, $seq (record C), 0"
    # C starts with the KPL magic F3 89 9A C2, and no JSON value starts
    # with 0xF3.
    [[ "$reason" == not_json ]] ||
        e2e_fail "the dead letter of C has reason '$reason' (detail: $detail), expected not_json"
    hex="$(e2e_sql "$db" 'SELECT hex(data) FROM dead_letters')"
    [[ "$hex" == "$(base64_to_hex "$data")" ]] ||
        e2e_fail "the dead letter's data is $hex; expected the bytes of C as put: $(base64_to_hex "$data")"
}

# check_leaderboard CAPTURE SECOND EXPECTED: EXPECTED is the newest
# leaderboard of the second, as lines "RACER_ID TOTAL" after the revision.
check_leaderboard() {
    local capture="$1" second="$2" expected="$3" actual
    actual="$(node "$KPL_TOOL" leaderboard --capture "$capture" --race "$RACE" --second "$second")" ||
        e2e_fail "no leaderboard of race $RACE at second $second: see the message above"
    # The revision is not compared, because the first podium may have
    # published a leaderboard before the SIGKILL.
    actual="$(tail -n +2 <<<"$actual")"
    [[ "$actual" == "$expected" ]] ||
        e2e_fail "the newest leaderboard of race $RACE at second $second in $capture has the entries
$actual
expected
$expected"
}

has_leaderboard() {
    local capture="$1" second="$2"
    node "$KPL_TOOL" leaderboard --capture "$capture" --race "$RACE" --second "$second"
}

check_no_errors() {
    local log="$1" errors
    errors="$(grep -c '^{"level":"error"' "$log" || true)"
    [[ "$errors" == 0 ]] ||
        e2e_fail "podium logged $errors errors: see the lines with \"level\":\"error\" in $log"
}

main() {
    e2e_init kpl
    e2e_start_peers kinesalite
    e2e_create_stream "$STREAM" 1
    e2e_start_fault_proxy "$PROXY"
    local db="$E2E_DIR/podium.db" requests="$E2E_DIR/$PROXY-requests.jsonl"
    local capture="$E2E_DIR/capture.txt"
    e2e_start_capture "$capture"

    local a_data b_data puts
    a_data="$(node "$KPL_TOOL" aggregate --explicit-hash-key "$EXPLICIT_HASH_KEY" \
        u-0501 "$(telemetry u-0501 rc-1 50 90 10)" \
        u-0502 "$(telemetry u-0502 rc-2 50 80 20)" \
        u-0503 "$(telemetry u-0503 rc-3 51 100 30)")" ||
        e2e_fail "kpl-tool could not build aggregate A"
    b_data="$(telemetry u-0504 rc-4 51 70 15 | base64 -w0)"
    puts="$(e2e_put_records "$STREAM" u-0501 "$a_data" u-0504 "$b_data")" || exit 1
    local put_a put_b
    { read -r put_a && read -r put_b; } <<<"$puts"
    check_shard A "$put_a"
    check_shard B "$put_b"
    local seq_a="${put_a#* }" seq_b="${put_b#* }"
    e2e_log "put A (aggregate of u-0501..u-0503) at $seq_a and B (u-0504) at $seq_b"

    e2e_log "podium run, one record per GetRecords; every GetRecords after the first is delayed ${DELAY_MS}ms"
    e2e_set_fault_rules "$PROXY" "[{\"action\":\"GetRecords\",\"fault\":\"slow\",\"skip\":1,\"delay_ms\":$DELAY_MS}]"
    start_podium
    wait_checkpoint "$db" "$seq_a" 2 "the batch of aggregate A"
    e2e_wait_for 10 "a GetRecords after A delayed by the fault proxy (see $requests)" read_delayed
    kill -KILL "$PODIUM_PID"
    wait "$PODIUM_PID" 2>/dev/null || true
    e2e_log "killed podium with SIGKILL after the checkpoint ($seq_a, 2)"

    local uuid relayed
    for uuid in u-0501 u-0502 u-0503; do
        expect_count "$db" "$uuid" 1 "after the SIGKILL"
    done
    expect_count "$db" u-0504 0 "after the SIGKILL"
    relayed="$(records_relayed)"
    [[ "$relayed" == 1 ]] ||
        e2e_fail "the proxy relayed $relayed Kinesis records before the SIGKILL, expected 1 (A): see $requests"

    e2e_set_fault_rules "$PROXY" '[]'
    local c_data d_data put_c put_d
    c_data="$(node "$KPL_TOOL" aggregate --corrupt-digest u-0506 "$(telemetry u-0506 rc-5 51 60 5)")" ||
        e2e_fail "kpl-tool could not build record C"
    d_data="$(telemetry u-0505 rc-1 52 95 12 | base64 -w0)"
    puts="$(e2e_put_records "$STREAM" u-0506 "$c_data" u-0505 "$d_data")" || exit 1
    { read -r put_c && read -r put_d; } <<<"$puts"
    check_shard C "$put_c"
    check_shard D "$put_d"
    local seq_c="${put_c#* }" seq_d="${put_d#* }"
    e2e_log "put C (aggregate with a wrong MD5) at $seq_c and D (u-0505) at $seq_d"

    local restarted_at
    restarted_at="$(e2e_line_count "$requests")"
    echo '--- restart after SIGKILL ---' >>"$E2E_DIR/podium.log"
    start_podium
    wait_checkpoint "$db" "$seq_d" 0 "record D"

    local iterators
    iterators="$(node "$KPL_TOOL" iterators --log "$requests" --shard "$SHARD" --from-line "$restarted_at")" ||
        e2e_fail "cannot read the GetShardIterator requests in $requests"
    [[ "$iterators" == "AT_SEQUENCE_NUMBER $seq_a" ]] ||
        e2e_fail "after the restart podium sent the GetShardIterator requests '${iterators//$'\n'/, }' for $SHARD; expected one AT_SEQUENCE_NUMBER $seq_a, from the checkpoint ($seq_a, 2) inside aggregate A"
    e2e_log "the restart requested AT_SEQUENCE_NUMBER $seq_a"

    check_samples "$db"
    check_dead_letter "$db" "$seq_c" "$c_data"

    e2e_wait_for "$WAIT_S" "the leaderboard of race $RACE at second 52 in $capture" has_leaderboard "$capture" 52
    check_leaderboard "$capture" 50 "rc-2 97.75
rc-1 93.75"
    check_leaderboard "$capture" 51 "rc-3 128.25
rc-2 97.75
rc-1 93.75
rc-4 84"
    check_leaderboard "$capture" 52 "rc-1 193.85
rc-3 128.25
rc-2 97.75
rc-4 84"
    e2e_log "leaderboards of seconds 50 to 52 include the riders of aggregate A"

    stop_podium
    local final
    final="$(checkpoint_of "$db")"
    [[ "$final" == "$seq_d 0" ]] ||
        e2e_fail "after SIGTERM the checkpoint of $SHARD is '$final', expected '$seq_d 0' (record D)"
    check_samples "$db"
    check_no_errors "$E2E_DIR/podium.log"
    e2e_log "passed"
}

main "$@"
