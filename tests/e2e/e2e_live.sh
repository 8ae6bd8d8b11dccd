#!/usr/bin/env bash
# End to end on live peers. podium simulate puts 50 riders x 120 seconds in
# 3 classes, with 5% duplicates, to a 2-shard kinesalite stream. podium run
# reads the stream and publishes leaderboards to mosquitto, with the
# Alleycat messages on. The checker then recomputes every leaderboard from
# the stream and compares it byte for byte with the last revision that
# podium published, and checks the Alleycat messages after each
# leaderboard.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STREAM=e2e
SECONDS_PER_RACE=120

main() {
    e2e_init e2e_live
    e2e_start_peers
    e2e_create_stream "$STREAM" 2

    local capture="$E2E_DIR/capture.txt"
    e2e_start_alleycat_capture "$capture"

    e2e_log "podium simulate: 50 riders, $SECONDS_PER_RACE seconds, 3 classes, 5% duplicates"
    "$PODIUM_BIN" simulate --racers 50 --seconds "$SECONDS_PER_RACE" --classes 3 --seed 7 \
        --duplicates 0.05 --stream "$STREAM" \
        --set "kinesis.endpoint=http://127.0.0.1:$KINESIS_PORT" \
        </dev/null >>"$E2E_DIR/simulate.log" 2>&1 ||
        e2e_fail "podium simulate exited with status $?: see $E2E_DIR/simulate.log"

    local settings=()
    mapfile -t settings < <(e2e_podium_run_settings "$STREAM")
    e2e_log "podium run"
    e2e_start_bg podium "$PODIUM_BIN" run "${settings[@]}" --set alleycat.enabled=true
    local podium_pid="$E2E_LAST_PID"

    e2e_checker wait --stream "$STREAM" --capture "$capture" \
        --seconds "$SECONDS_PER_RACE" --idle-s 3 --timeout-s 180 ||
        e2e_fail "not every leaderboard arrived: see the checker's message above and $E2E_DIR/podium.log"

    e2e_pid_alive "$podium_pid" ||
        e2e_fail "podium run exited before SIGTERM: see $E2E_DIR/podium.log"
    kill -TERM "$podium_pid"
    local status=0
    e2e_wait_exit "$podium_pid" 10 "podium run" || status=$?
    if [[ $status -ne 0 ]]; then
        e2e_fail "podium run exited with status $status after SIGTERM, expected 0: see $E2E_DIR/podium.log"
    fi
    e2e_log "podium run exited 0 after SIGTERM"

    e2e_checker verify --stream "$STREAM" --capture "$capture" --seconds "$SECONDS_PER_RACE" \
        --alleycat alleycat-subscribe ||
        e2e_fail "the published leaderboards do not match the rules: see the checker's messages above"
    e2e_log "passed"
}

main "$@"
