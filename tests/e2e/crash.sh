#!/usr/bin/env bash
# Crash recovery end to end: podium run reads at most 100 records per
# GetRecords call, so the run takes a few seconds, and is killed with
# SIGKILL once about 150 leaderboards were published. A second podium run
# on the same store must finish the work: the checker compares every
# leaderboard with the rules, and the store must contain each unique
# (race, racer, second) sample exactly once with the expected outputs.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STREAM=e2e
SECONDS_PER_RACE=120
# Leaderboards to wait for before the SIGKILL (360 in the whole run).
KILL_AFTER_MESSAGES=150

count_leaderboards() {
    local capture="$1"
    grep -c '^podium/races/[^ ]*/leaderboard ' "$capture" || true
}

has_leaderboards() {
    local capture="$1" wanted="$2"
    (($(count_leaderboards "$capture") >= wanted))
}

# Compare the stored samples with the checker's summary of the stream.
check_store() {
    local db="$1" summary="$2"
    local store_count expected_count
    expected_count="$(node -p "require('$summary').samples")"
    store_count="$(e2e_sample_count "$db")"
    if [[ "$store_count" != "$expected_count" ]]; then
        e2e_fail "the store has $store_count samples, expected $expected_count unique (race, racer, second) from the stream"
    fi

    node -e '
        const summary = require(process.argv[1]);
        for (const [race, total] of Object.entries(summary.totalOutput4ByRace)) {
            console.log(`${race}|${total}`);
        }
    ' "$summary" | sort >"$E2E_DIR/expected-totals.txt"
    e2e_sample_rows "$db" '${j(s.raceId)}|${u(s.output)}' |
        awk -F'|' '{ sum[$1] += $2 } END { for (r in sum) printf "%s|%.0f\n", r, sum[r] }' |
        sort >"$E2E_DIR/store-totals.txt"
    if ! diff -u "$E2E_DIR/expected-totals.txt" "$E2E_DIR/store-totals.txt" >"$E2E_DIR/totals.diff"; then
        cat "$E2E_DIR/totals.diff" >&2
        e2e_fail "the sum of output4 per race in the store differs from the checker's (lines race|total in 1/10000 units; - expected, + store)"
    fi
    e2e_log "store: $store_count samples, output sums per race match"
}

main() {
    e2e_init crash
    e2e_start_peers
    e2e_create_stream "$STREAM" 2

    local capture="$E2E_DIR/capture.txt"
    e2e_start_capture "$capture"

    e2e_log "podium simulate: 50 riders, $SECONDS_PER_RACE seconds, 3 classes, 5% duplicates"
    "$PODIUM_BIN" simulate --racers 50 --seconds "$SECONDS_PER_RACE" --classes 3 --seed 7 \
        --duplicates 0.05 --stream "$STREAM" \
        --set "kinesis.endpoint=http://127.0.0.1:$KINESIS_PORT" \
        </dev/null >>"$E2E_DIR/simulate.log" 2>&1 ||
        e2e_fail "podium simulate exited with status $?: see $E2E_DIR/simulate.log"

    local settings=()
    mapfile -t settings < <(e2e_podium_run_settings "$STREAM")
    settings+=(--set kinesis.max_records=100)

    e2e_log "podium run, to be killed after $KILL_AFTER_MESSAGES leaderboards"
    e2e_start_bg podium "$PODIUM_BIN" run "${settings[@]}"
    local first_pid="$E2E_LAST_PID"
    e2e_wait_for 120 "$KILL_AFTER_MESSAGES leaderboards in $capture before the SIGKILL" \
        has_leaderboards "$capture" "$KILL_AFTER_MESSAGES"
    e2e_pid_alive "$first_pid" ||
        e2e_fail "podium run exited before the SIGKILL: see $E2E_DIR/podium.log"
    kill -KILL "$first_pid"
    wait "$first_pid" 2>/dev/null || true
    local at_kill
    at_kill="$(count_leaderboards "$capture")"
    e2e_log "killed podium run (pid $first_pid) with SIGKILL after $at_kill leaderboards"
    if ((at_kill >= 3 * SECONDS_PER_RACE)); then
        e2e_log "NOTE: every leaderboard had arrived before the SIGKILL, so the restart had no work left to resume"
    fi

    e2e_log "podium run again on the same store"
    echo '--- restart after SIGKILL ---' >>"$E2E_DIR/podium.log"
    e2e_start_bg podium "$PODIUM_BIN" run "${settings[@]}"
    local second_pid="$E2E_LAST_PID"

    e2e_checker wait --stream "$STREAM" --capture "$capture" \
        --seconds "$SECONDS_PER_RACE" --idle-s 3 --timeout-s 180 ||
        e2e_fail "not every leaderboard arrived after the restart: see the checker's message above and $E2E_DIR/podium.log"

    e2e_pid_alive "$second_pid" ||
        e2e_fail "the restarted podium run exited before SIGTERM: see $E2E_DIR/podium.log"
    kill -TERM "$second_pid"
    local status=0
    e2e_wait_exit "$second_pid" 10 "podium run" || status=$?
    if [[ $status -ne 0 ]]; then
        e2e_fail "the restarted podium run exited with status $status after SIGTERM, expected 0: see $E2E_DIR/podium.log"
    fi

    local summary="$E2E_DIR/summary.json"
    e2e_checker verify --stream "$STREAM" --capture "$capture" --seconds "$SECONDS_PER_RACE" \
        --summary "$summary" ||
        e2e_fail "the published leaderboards do not match the rules after the restart: see the checker's messages above"
    check_store "$E2E_DIR/podium.db" "$summary"
    e2e_log "passed"
}

main "$@"
