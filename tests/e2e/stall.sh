#!/usr/bin/env bash
# A shard iterator expires while podium is stopped.
#
# kinesalite runs under libfaketime (PEERS_FAKETIME=1 in tools/peers.sh),
# and podium run reads a one-shard stream through
# tests/kinesis-fault-proxy.js, which has no rules here and only logs the
# requests and the GetRecords replies. Once podium has committed one
# record, the test stops podium with SIGSTOP, moves kinesalite's clock
# 360 s ahead, so that the iterator podium holds is older than the 300 s
# that kinesalite accepts, and resumes podium with SIGCONT.
#
# podium must keep running, request exactly one new iterator after its
# committed checkpoint, never send the expired iterator again, and apply
# the next record exactly once. After SIGTERM and a restart on the same
# store, it must start from the stored checkpoint with a new iterator and
# read no record twice.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STREAM=e2e
SHARD=shardId-000000000000
PROXY=proxy
PROXY_LOG_TOOL="$E2E_LIB_DIR/proxy-log.mjs"
# The pid of the running podium run.
PODIUM_PID=""
# kinesalite 3.3.3 rejects an iterator older than 300 s with
# ExpiredIteratorException (actions/getRecords.js).
CLOCK_JUMP_S=360
# The message that shardreader/reader.c logs when an iterator expired.
EXPIRY_MESSAGE="shard iterator expired; requesting a new one after the committed checkpoint"

# telemetry UUID RACER SECOND CADENCE RESISTANCE: print one telemetry record.
telemetry() {
    local uuid="$1" racer="$2" second="$3" cadence="$4" resistance="$5"
    printf '{"uuid":"%s","event":"update","deviceTimestamp":%d,"second":%d,"raceId":"R-7","name":"Racer %s","racerId":"%s","classId":"B","cadence":%s,"resistance":%s}' \
        "$uuid" $((1767225600000 + second * 1000)) "$second" "$racer" "$racer" "$cadence" "$resistance"
}

# put_telemetry UUID RACER SECOND CADENCE RESISTANCE: put the record to the
# stream and print its sequence number.
put_telemetry() {
    local uuid="$1" put
    put="$(e2e_put_record "$STREAM" "$(telemetry "$@")" "$uuid")" || exit 1
    echo "${put#* }"
}

# Print how many samples of the store have this uuid.
count_uuid() {
    local db="$1" uuid="$2"
    e2e_uuid_count "$db" "$uuid"
}

checkpoint_of() {
    local db="$1" shard="$2"
    e2e_sql "$db" "SELECT seq FROM checkpoints WHERE shard_id = '$shard'"
}

# True when uuid is stored and the shard's checkpoint is seq.
committed() {
    local db="$1" uuid="$2" seq="$3"
    [[ "$(count_uuid "$db" "$uuid")" -ge 1 && "$(checkpoint_of "$db" "$SHARD")" == "$seq" ]]
}

# wait_committed DB UUID SEQ: wait up to 20 s until podium committed the
# record; returns 1 after a message when it did not. Fails the test when
# podium exits.
wait_committed() {
    local db="$1" uuid="$2" seq="$3"
    local deadline=$((SECONDS + 20)) status=0
    until committed "$db" "$uuid" "$seq"; do
        if ! e2e_pid_alive "$PODIUM_PID"; then
            wait "$PODIUM_PID" || status=$?
            e2e_fail "podium run exited with status $status before it committed $uuid: see $E2E_DIR/podium.log"
        fi
        if ((SECONDS >= deadline)); then
            echo "[stall] 20s after the put, $uuid is in the samples table of $db $(count_uuid "$db" "$uuid") times and the checkpoint of $SHARD is '$(checkpoint_of "$db" "$SHARD")'; expected $uuid stored and checkpoint $seq" >&2
            return 1
        fi
        sleep 0.2
    done
}

expect_once() {
    local db="$1" uuid="$2" count
    count="$(count_uuid "$db" "$uuid")"
    [[ "$count" == 1 ]] ||
        e2e_fail "$uuid is in the samples table of $db $count times, expected once"
}

proxy_log() {
    node "$PROXY_LOG_TOOL" "$@" --log "$E2E_DIR/$PROXY-requests.jsonl" --shard "$SHARD"
}

# True when every GetRecords request in the proxy's log has its reply, so
# no request of podium is waiting in kinesalite.
no_read_in_flight() {
    local log="$E2E_DIR/$PROXY-requests.jsonl" requests replies
    requests="$(grep -c '^{"action":"GetRecords"' "$log" || true)"
    replies="$(grep -c '^{"reply":' "$log" || true)"
    [[ "$requests" == "$replies" ]]
}

# True while pid is stopped by a signal: state T in /proc.
is_stopped() {
    [[ "$(sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f1)" == T ]]
}

# Print kinesalite's clock, in seconds since the epoch, from the Date header
# of its reply to a bare request.
kinesalite_clock_s() {
    local date
    date="$(curl -s -o /dev/null -D - --max-time 5 "http://127.0.0.1:$KINESIS_PORT/" |
        tr -d '\r' | sed -n 's/^[Dd]ate: //p')"
    [[ -n "$date" ]] || return 1
    date -d "$date" +%s
}

# True when kinesalite's clock is at least SECONDS ahead of this machine's.
kinesalite_ahead() {
    local offset="$1" clock
    clock="$(kinesalite_clock_s)" || return 1
    ((clock - $(date +%s) >= offset - 2))
}

# jump_kinesalite_clock SECONDS: move kinesalite's clock ahead and wait
# until its replies show the new time. Node refreshes the Date header once
# a second.
jump_kinesalite_clock() {
    local offset="$1" rc="$E2E_DIR/faketime.rc"
    [[ -f "$rc" ]] || e2e_fail "$rc is missing: kinesalite did not start under libfaketime"
    kinesalite_clock_s >/dev/null || e2e_fail "kinesalite on port $KINESIS_PORT sent no Date header"
    echo "+$offset" >"$rc.tmp"
    mv "$rc.tmp" "$rc"
    e2e_wait_for 5 "kinesalite's clock ${offset}s ahead after writing +$offset to $rc (libfaketime)" \
        kinesalite_ahead "$offset"
    e2e_log "kinesalite's clock runs ${offset}s ahead"
}

# Print the "seq" member of every line of podium's log with this message.
podium_log_seqs() {
    local log="$1" message="$2"
    node -e '
        const [file, message] = process.argv.slice(1);
        for (const line of require("fs").readFileSync(file, "utf8").split("\n")) {
            let entry;
            try { entry = JSON.parse(line); } catch { continue; }
            if (entry && entry.message === message) console.log(entry.seq ?? "(none)");
        }
    ' "$log" "$message"
}

check_expiry_logged() {
    local log="$1" committed_seq="$2" seqs
    seqs="$(podium_log_seqs "$log" "$EXPIRY_MESSAGE")" ||
        e2e_fail "cannot read podium's log $log"
    if [[ -z "$seqs" ]]; then
        e2e_fail "podium's log $log has no line \"$EXPIRY_MESSAGE\"; expected one with seq $committed_seq"
    fi
    if [[ "$seqs" != "$committed_seq" ]]; then
        e2e_fail "podium's log $log has $(grep -c . <<<"$seqs") lines \"$EXPIRY_MESSAGE\", with seq ${seqs//$'\n'/, }; expected one with seq $committed_seq"
    fi
    e2e_log "podium logged \"$EXPIRY_MESSAGE\" once, at checkpoint $committed_seq"
}

# Send the rejected iterator again, straight to kinesalite, and expect
# ExpiredIteratorException, because the proxy logs only the HTTP status.
check_rejected_as_expired() {
    local iterator="$1" reply
    if reply="$(e2e_kinesis GetRecords "{\"ShardIterator\":\"$iterator\"}" 2>&1)"; then
        e2e_fail "kinesalite accepted the iterator that it rejected while podium read: $reply"
    fi
    [[ "$reply" == *ExpiredIteratorException* ]] ||
        e2e_fail "kinesalite rejects the iterator podium held for another reason than expiry: $reply"
    e2e_log "kinesalite rejects the iterator podium held with ExpiredIteratorException"
}

check_no_errors() {
    local log="$1" errors
    errors="$(grep -c '^{"level":"error"' "$log" || true)"
    [[ "$errors" == 0 ]] ||
        e2e_fail "podium logged $errors errors: see the lines with \"level\":\"error\" in $log"
}

stop_podium() {
    local pid="$PODIUM_PID" status=0
    e2e_pid_alive "$pid" || e2e_fail "podium run exited before SIGTERM: see $E2E_DIR/podium.log"
    kill -TERM "$pid"
    e2e_wait_exit "$pid" 10 "podium run" || status=$?
    [[ $status -eq 0 ]] ||
        e2e_fail "podium run exited with status $status after SIGTERM, expected 0: see $E2E_DIR/podium.log"
}

main() {
    e2e_init stall
    export PEERS_FAKETIME=1
    e2e_start_peers kinesalite
    e2e_create_stream "$STREAM" 1
    e2e_start_fault_proxy "$PROXY"
    local requests="$E2E_DIR/$PROXY-requests.jsonl"
    local db="$E2E_DIR/podium.db"

    local settings=()
    mapfile -t settings < <(e2e_podium_run_settings "$STREAM")
    settings+=(--set "kinesis.endpoint=http://127.0.0.1:$FAULT_PROXY_PORT")
    e2e_start_bg podium "$PODIUM_BIN" run "${settings[@]}"
    PODIUM_PID="$E2E_LAST_PID"

    local seq1
    seq1="$(put_telemetry u-0101 rc-11 3 92 12)"
    wait_committed "$db" u-0101 "$seq1" || e2e_fail "podium did not commit u-0101: see $E2E_DIR/podium.log"
    e2e_log "podium committed u-0101 (sequence number $seq1)"

    kill -STOP "$PODIUM_PID"
    e2e_wait_for 10 "podium (pid $PODIUM_PID) stopped by SIGSTOP" is_stopped "$PODIUM_PID"
    # Wait for the reply to a GetRecords that podium sent just before
    # SIGSTOP, so that the lines up to resumed_at pair every request with
    # its reply.
    e2e_wait_for 15 "a reply to every GetRecords in $requests" no_read_in_flight
    jump_kinesalite_clock "$CLOCK_JUMP_S"
    local resumed_at
    resumed_at="$(e2e_line_count "$requests")"
    kill -CONT "$PODIUM_PID"

    local seq2
    seq2="$(put_telemetry u-0102 rc-11 4 93 12)"
    if ! wait_committed "$db" u-0102 "$seq2"; then
        # The requests after SIGCONT usually show why.
        proxy_log expiry --from-line "$resumed_at" --committed "$seq1" >/dev/null || true
        e2e_fail "podium did not commit u-0102 after its iterator expired: see $requests and $E2E_DIR/podium.log"
    fi
    e2e_log "podium committed u-0102 (sequence number $seq2) after the iterator expired"

    local expired
    expired="$(proxy_log expiry --from-line "$resumed_at" --committed "$seq1")" ||
        e2e_fail "podium did not renew the expired iterator once from its checkpoint: see the message above and $requests"
    check_rejected_as_expired "$expired"
    proxy_log records --from-line 0 --expected 2 ||
        e2e_fail "podium read a record more than once: see the message above and $requests"
    check_expiry_logged "$E2E_DIR/podium.log" "$seq1"
    expect_once "$db" u-0101
    expect_once "$db" u-0102
    check_no_errors "$E2E_DIR/podium.log"

    e2e_log "restart: SIGTERM, put u-0103, podium run on the same store"
    stop_podium
    local stored
    stored="$(checkpoint_of "$db" "$SHARD")"
    [[ "$stored" == "$seq2" ]] ||
        e2e_fail "after SIGTERM the stored checkpoint of $SHARD is '$stored', expected $seq2 (u-0102)"
    local seq3
    seq3="$(put_telemetry u-0103 rc-11 5 94 12)"
    local restarted_at
    restarted_at="$(e2e_line_count "$requests")"
    echo '--- restart after SIGTERM ---' >>"$E2E_DIR/podium.log"
    e2e_start_bg podium "$PODIUM_BIN" run "${settings[@]}"
    PODIUM_PID="$E2E_LAST_PID"
    if ! wait_committed "$db" u-0103 "$seq3"; then
        proxy_log restart --from-line "$restarted_at" --committed "$seq2" >/dev/null || true
        e2e_fail "the restarted podium did not commit u-0103: see $requests and $E2E_DIR/podium.log"
    fi

    proxy_log restart --from-line "$restarted_at" --committed "$seq2" ||
        e2e_fail "the restarted podium did not start from its stored checkpoint with a new iterator: see the message above and $requests"
    proxy_log records --from-line "$restarted_at" --expected 1 ||
        e2e_fail "the restarted podium read a committed record again: see the message above and $requests"
    stop_podium
    local id
    for id in u-0101 u-0102 u-0103; do
        expect_once "$db" "$id"
    done
    local total
    total="$(e2e_sample_count "$db")"
    [[ "$total" == 3 ]] || e2e_fail "the store $db has $total samples, expected 3"
    check_no_errors "$E2E_DIR/podium.log"
    e2e_log "passed"
}

main "$@"
