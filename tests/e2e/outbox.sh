#!/usr/bin/env bash
# The outbox bound end to end. podium run publishes through a TCP gate in
# front of mosquitto, with outbox.max=100 and the Alleycat messages on.
# After the first leaderboards the gate closes, so to podium the broker is
# gone (reset, then connection refused), while the capture stays connected
# to mosquitto itself. podium must then pause reading at the bound: one
# warning, no GetRecords calls, no checkpoint moving, and no outbox rows
# added. Once the gate opens again it must resume, deliver everything, and
# the capture must match, topic by topic and byte for byte, a second run
# on a fresh store whose broker never went away.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STREAM=e2e
SECONDS_PER_RACE=120
OUTBOX_MAX=100
# Leaderboards to see before the broker goes away (240 in the whole run).
CLOSE_AFTER_LEADERBOARDS=10
# How long the paused podium is watched: 15 poll intervals of 200 ms.
PAUSE_WATCH_S=3
WARNING="at its limit outbox.max = $OUTBOX_MAX"

has_leaderboards() {
    local capture="$1" wanted="$2" count
    count="$(grep -c '^podium/races/[^ ]*/leaderboard ' "$capture" || true)"
    ((count >= wanted))
}

get_records_calls() {
    grep '"action":"GetRecords"' "$E2E_DIR/kinesis-requests.jsonl" | grep -vc '"reply"' || true
}

outbox_rows() {
    e2e_sql "$E2E_DIR/podium.db" 'SELECT count(*) FROM outbox'
}

checkpoints() {
    e2e_sql "$E2E_DIR/podium.db" "SELECT group_concat(shard_id || '=' || ifnull(seq, ''), ' ') FROM (SELECT * FROM checkpoints ORDER BY shard_id)"
}

# e2e_run_until_complete NAME CAPTURE SETTINGS...: run podium until the
# checker saw every leaderboard, then stop it with SIGTERM and expect 0.
run_until_complete() {
    local name="$1" capture="$2"
    shift 2
    e2e_checker wait --stream "$STREAM" --capture "$capture" \
        --seconds "$SECONDS_PER_RACE" --idle-s 3 --timeout-s 240 ||
        e2e_fail "$name: not every leaderboard arrived: see the checker's message above and $E2E_DIR/$name.log"
}

stop_podium() {
    local name="$1" pid="$2" status=0
    e2e_pid_alive "$pid" || e2e_fail "$name exited before SIGTERM: see $E2E_DIR/$name.log"
    kill -TERM "$pid"
    e2e_wait_exit "$pid" 15 "$name" || status=$?
    [[ $status -eq 0 ]] ||
        e2e_fail "$name exited with status $status after SIGTERM, expected 0: see $E2E_DIR/$name.log"
}

# Check that the paused podium does nothing for PAUSE_WATCH_S seconds.
check_paused() {
    local logged depth calls checkpoint
    logged="$(grep -F "$WARNING" "$E2E_DIR/podium.log" | sed -n 's/.*the outbox contains \([0-9]*\) undelivered.*/\1/p')"
    depth="$(outbox_rows)"
    # Held jobs add nothing, so the rows are the ones counted at the pause.
    [[ "$depth" == "$logged" ]] ||
        e2e_fail "the outbox has $depth rows while paused, but podium logged $logged at the pause"
    ((depth >= OUTBOX_MAX)) ||
        e2e_fail "podium paused with $depth outbox rows, below outbox.max $OUTBOX_MAX"
    calls="$(get_records_calls)"
    checkpoint="$(checkpoints)"
    sleep "$PAUSE_WATCH_S"
    [[ "$(get_records_calls)" == "$calls" ]] ||
        e2e_fail "GetRecords calls went from $calls to $(get_records_calls) in ${PAUSE_WATCH_S}s while reading was paused"
    [[ "$(outbox_rows)" == "$depth" ]] ||
        e2e_fail "the outbox went from $depth to $(outbox_rows) rows while reading was paused"
    [[ "$(checkpoints)" == "$checkpoint" ]] ||
        e2e_fail "the checkpoints moved from '$checkpoint' to '$(checkpoints)' while reading was paused"
    e2e_log "paused at $depth outbox rows; for ${PAUSE_WATCH_S}s no GetRecords call ($calls so far), no new row, no checkpoint change"
}

main() {
    e2e_init outbox
    e2e_start_peers
    e2e_create_stream "$STREAM" 2

    e2e_log "podium simulate: 20 riders, $SECONDS_PER_RACE seconds, 2 classes, 2% duplicates"
    "$PODIUM_BIN" simulate --racers 20 --seconds "$SECONDS_PER_RACE" --classes 2 --seed 11 \
        --duplicates 0.02 --stream "$STREAM" \
        --set "kinesis.endpoint=http://127.0.0.1:$KINESIS_PORT" \
        </dev/null >>"$E2E_DIR/simulate.log" 2>&1 ||
        e2e_fail "podium simulate exited with status $?: see $E2E_DIR/simulate.log"

    e2e_start_fault_proxy kinesis
    e2e_start_tcp_gate mqtt-gate "$MOSQUITTO_PORT"

    local capture="$E2E_DIR/capture.txt"
    e2e_start_alleycat_capture "$capture"
    local capture_pid="$E2E_LAST_PID"
    local settings=()
    mapfile -t settings < <(e2e_podium_run_settings "$STREAM")
    e2e_log "podium run through the gate, outbox.max=$OUTBOX_MAX"
    e2e_start_bg podium "$PODIUM_BIN" run "${settings[@]}" \
        --set "kinesis.endpoint=http://127.0.0.1:$FAULT_PROXY_PORT" \
        --set "mqtt.url=mqtt://127.0.0.1:$TCP_GATE_PORT" \
        --set "outbox.max=$OUTBOX_MAX" --set kinesis.max_records=25 \
        --set alleycat.enabled=true
    local podium_pid="$E2E_LAST_PID"

    e2e_wait_for 60 "$CLOSE_AFTER_LEADERBOARDS leaderboards in $capture" \
        has_leaderboards "$capture" "$CLOSE_AFTER_LEADERBOARDS"
    e2e_tcp_gate close
    e2e_log "the broker is gone for podium"
    e2e_wait_for 120 "podium's warning '$WARNING'" grep -qF "$WARNING" "$E2E_DIR/podium.log"
    has_leaderboards "$capture" $((SECONDS_PER_RACE * 2)) &&
        e2e_fail "every leaderboard was published before the outbox filled; the test needs more data"
    check_paused

    e2e_tcp_gate open
    e2e_log "the broker is back for podium"
    e2e_wait_for 120 "podium's 'reading resumes'" grep -q 'reading resumes' "$E2E_DIR/podium.log"
    run_until_complete podium "$capture"
    stop_podium podium "$podium_pid"
    kill -TERM "$capture_pid"

    local warnings resumes
    warnings="$(grep -cF "$WARNING" "$E2E_DIR/podium.log" || true)"
    resumes="$(grep -c 'reading resumes' "$E2E_DIR/podium.log" || true)"
    [[ "$warnings" == "$resumes" ]] ||
        e2e_fail "podium logged $warnings outbox warnings but $resumes resumes: expected one warning per pause"
    e2e_checker verify --stream "$STREAM" --capture "$capture" --seconds "$SECONDS_PER_RACE" \
        --alleycat alleycat-subscribe ||
        e2e_fail "the messages after the outage do not match the rules: see the checker's messages above"

    local reference="$E2E_DIR/reference.txt"
    e2e_start_alleycat_capture "$reference"
    e2e_log "reference: podium run on a fresh store, straight to the broker"
    e2e_start_bg reference "$PODIUM_BIN" run "${settings[@]}" \
        --set "store.path=$E2E_DIR/reference.db" --set kinesis.max_records=25 \
        --set alleycat.enabled=true
    local reference_pid="$E2E_LAST_PID"
    run_until_complete reference "$reference"
    stop_podium reference "$reference_pid"
    grep -qF "$WARNING" "$E2E_DIR/reference.log" &&
        e2e_fail "the reference run reached outbox.max: see $E2E_DIR/reference.log"

    node "$E2E_CHECKER" compare --capture "$capture" --reference "$reference" \
        --alleycat alleycat-subscribe ||
        e2e_fail "the messages published around the outage differ from the reference run"
    e2e_log "passed: $warnings pause(s), every message delivered in order"
}

main "$@"
