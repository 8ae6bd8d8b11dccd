#!/usr/bin/env bash
# The same recording through a 1-shard and a 4-shard stream must publish the
# same messages.
#
#   determinism.sh per-second       real arrival times, one put per second
#   determinism.sh shared-arrival   2.5 s of records share an arrival time
#
# podium simulate writes 200 riders x 60 seconds in 4 classes, with 5%
# duplicates, to a file. The file is put once to a 1-shard and once to a
# 4-shard kinesalite stream. Two podium run processes then read the streams
# at the same time with publish.transport=file, one with
# kinesis.max_records=10000 and one with 37, until every race has its
# results and its last leaderboard. The two publish files must contain the
# same messages per topic, in the same order, byte for byte except "ts".
#
# per-second puts one PutRecords call per second of the race
# (determinism-tool.mjs explains why). "ts" is the newest
# ApproximateArrivalTimestamp, which kinesalite sets anew for each put, so
# the checker verifies it per stream instead, together with every other
# rule.
#
# shared-arrival puts the records in the recording's arrival order, and
# podium and the checker read both streams through the fault proxy, which
# reports the end of each record's 2.5 s slot of the recording as its
# arrival time. Hundreds of records of several seconds then share one
# arrival time, which the 37-record batches of the 4-shard stream cut
# apart, and both streams report the same arrival times.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RACERS=200
SECONDS_PER_RACE=60
CLASSES=4
DETERMINISM_TOOL="$E2E_LIB_DIR/determinism-tool.mjs"

determinism_tool() {
    node "$DETERMINISM_TOOL" "$@"
}

# Start kinesalite alone: nothing here needs mosquitto.
start_kinesalite() {
    KINESIS_SERVER=kinesalite
    KINESIS_PORT="$(bash "$E2E_PEERS" start kinesalite "$E2E_DIR")" ||
        e2e_fail "kinesalite did not start: see $E2E_DIR/kinesalite.log; run 'bash tools/peers.sh install' if the npm packages are missing"
    e2e_log "kinesalite on 127.0.0.1:$KINESIS_PORT"
}

# start_podium NAME STREAM MAX_RECORDS PORT: podium run on STREAM of the
# Kinesis API on PORT, writing to E2E_DIR/NAME.jsonl with the store
# E2E_DIR/NAME.db. Sets E2E_LAST_PID.
start_podium() {
    local name="$1" stream="$2" max_records="$3" port="$4"
    e2e_start_bg "$name" "$PODIUM_BIN" run \
        --set "stream.name=$stream" \
        --set "kinesis.endpoint=http://127.0.0.1:$port" \
        --set "kinesis.max_records=$max_records" \
        --set kinesis.poll_interval_ms=200 \
        --set "store.path=$E2E_DIR/$name.db" \
        --set publish.transport=file \
        --set "publish.file=$E2E_DIR/$name.jsonl" \
        --set race.idle_close_s=3 \
        --set http.listen=127.0.0.1:0
}

# stop_podium NAME PID: SIGTERM, and fail unless podium exits 0.
stop_podium() {
    local name="$1" pid="$2" status=0
    e2e_pid_alive "$pid" ||
        e2e_fail "podium run $name exited before SIGTERM: see $E2E_DIR/$name.log"
    kill -TERM "$pid"
    e2e_wait_exit "$pid" 10 "podium run $name" || status=$?
    if [[ $status -ne 0 ]]; then
        e2e_fail "podium run $name exited with status $status after SIGTERM, expected 0: see $E2E_DIR/$name.log"
    fi
}

# verify_rules NAME STREAM: the checker's verdict on what podium published.
verify_rules() {
    local name="$1" stream="$2"
    determinism_tool capture --publish "$E2E_DIR/$name.jsonl" --out "$E2E_DIR/$name.capture" ||
        e2e_fail "could not convert $E2E_DIR/$name.jsonl for the checker"
    e2e_checker verify --stream "$stream" --capture "$E2E_DIR/$name.capture" --seconds "$SECONDS_PER_RACE" ||
        e2e_fail "what podium run $name published from $stream breaks the rules: see the checker's messages above"
}

main() {
    local mode="${1:-}" slot_ms=0
    case "$mode" in
    per-second) ;;
    shared-arrival) slot_ms=2500 ;;
    *)
        echo "usage: $0 per-second|shared-arrival" >&2
        exit 2
        ;;
    esac
    e2e_init "e2e_determinism_$mode"
    start_kinesalite
    e2e_create_stream one-shard 1
    e2e_create_stream four-shards 4

    # Device times start a minute before now, so no record is ahead of its
    # arrival time.
    local recording="$E2E_DIR/recording.jsonl" summary start_ms
    start_ms=$((($(date +%s) - 60) * 1000))
    summary="$("$PODIUM_BIN" simulate --out "$recording" --racers "$RACERS" \
        --seconds "$SECONDS_PER_RACE" --classes "$CLASSES" --seed 42 \
        --duplicates 0.05 --start-ms "$start_ms" 2>>"$E2E_DIR/simulate.log")" ||
        e2e_fail "podium simulate exited with status $?: see $E2E_DIR/simulate.log"
    local races
    races="$(node -e 'console.log(JSON.parse(process.argv[1]).races.join(","))' "$summary")" ||
        e2e_fail "podium simulate printed no race ids: $summary"
    e2e_log "recording of $RACERS riders, $SECONDS_PER_RACE seconds, races $races"

    local stream
    for stream in one-shard four-shards; do
        determinism_tool put --port "$KINESIS_PORT" --stream "$stream" \
            --recording "$recording" --arrival-slot-ms "$slot_ms" \
            2>>"$E2E_DIR/determinism-tool.log" ||
            e2e_fail "putting the recording to $stream failed: see $E2E_DIR/determinism-tool.log"
    done
    e2e_log "put the recording to both streams"

    # podium and the checker read through the proxy, which reports the
    # arrival slots.
    local read_port="$KINESIS_PORT"
    if ((slot_ms > 0)); then
        e2e_start_fault_proxy proxy
        e2e_set_fault_rules proxy '[{"action": "GetRecords", "fault": "arrival"}]'
        read_port="$FAULT_PROXY_PORT"
    fi

    start_podium one-shard one-shard 10000 "$read_port"
    local one_pid="$E2E_LAST_PID"
    start_podium four-shards four-shards 37 "$read_port"
    local four_pid="$E2E_LAST_PID"

    local name
    for name in one-shard four-shards; do
        determinism_tool wait --publish "$E2E_DIR/$name.jsonl" --races "$races" \
            --seconds "$SECONDS_PER_RACE" --classes "$CLASSES" --timeout-s 90 ||
            e2e_fail "podium run $name did not publish every race: see $E2E_DIR/$name.log and $E2E_DIR/$name.jsonl"
    done
    stop_podium one-shard "$one_pid"
    stop_podium four-shards "$four_pid"
    e2e_log "both podium runs published every race and exited 0 after SIGTERM"

    determinism_tool compare --publish "$E2E_DIR/one-shard.jsonl" --other "$E2E_DIR/four-shards.jsonl" ||
        e2e_fail "the two streams published different messages: see the differences above"
    KINESIS_PORT="$read_port"
    verify_rules one-shard one-shard
    verify_rules four-shards four-shards
    e2e_log "passed"
}

main "$@"
