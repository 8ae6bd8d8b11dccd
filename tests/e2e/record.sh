#!/usr/bin/env bash
# podium record of a live stream, with a split and KPL aggregates.
#
# A 2-shard kinesalite stream gets a race of KPL aggregates (kpl-tool.mjs),
# then `podium simulate --stream --realtime` puts two more races while
# podium run and two `podium record` captures read the stream. Midway,
# shardId-000000000000 is split, and a second race of aggregates goes to
# the children. Checks:
# 1. The capture with --until-idle stops by itself, exits 0 and contains every
#    record of every shard once, in sequence order, with the exact base64
#    Data, PartitionKey, SequenceNumber and arrival time that GetRecords
#    returns: the aggregates stay whole. Each child's first line follows
#    its parent's last line. The capture opens no store.
# 2. The capture to standard output has every record in its file while it
#    still runs, because it flushes regularly, then exits 0 on SIGTERM.
# 3. podium replay of the recording publishes the same last revision of
#    every race leaderboard second, race results and class leaderboard as
#    podium run reading the stream.
# 4. --max-records N writes the first N records, --start latest writes
#    none of the records put before it started, and bad options exit 2.
# 5. A capture of a stream that does not exist exits 1 and leaves an
#    existing --out file as it was.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STREAM=rec
SPLIT_SHARD=shardId-000000000000
RECORD_TOOL="$E2E_LIB_DIR/record-tool.mjs"
RESHARD_TOOL="$E2E_LIB_DIR/reshard-tool.mjs"
SECONDS_PER_RACE=20
# User records per KPL aggregate.
PER_AGGREGATE=4

record_tool() {
    node "$RECORD_TOOL" "$@"
}

# The settings of every podium command here; run and replay share the race
# settings so that they make the same decisions.
podium_settings() {
    printf '%s\n' \
        --set "stream.name=$STREAM" \
        --set "kinesis.endpoint=http://127.0.0.1:$KINESIS_PORT" \
        --set kinesis.poll_interval_ms=200 \
        --set kinesis.shard_sync_interval_s=5 \
        --set race.idle_close_s=3
}

# simulate_race FILE SEED MINUTES_AGO: write a race of 6 riders x 8 seconds
# in one class whose device times start MINUTES_AGO minutes ago, so that
# each file has its own race id.
simulate_race() {
    local file="$1" seed="$2" minutes_ago="$3"
    "$PODIUM_BIN" simulate --out "$file" --racers 6 --seconds 8 --classes 1 \
        --seed "$seed" --start-ms $((($(date +%s) - minutes_ago * 60) * 1000)) \
        2>>"$E2E_DIR/simulate.log" >/dev/null ||
        e2e_fail "podium simulate --out $file exited with status $?: see $E2E_DIR/simulate.log"
}

put_aggregates() {
    local file="$1" count
    count="$(record_tool put-aggregates --port "$KINESIS_PORT" --stream "$STREAM" \
        --recording "$file" --per "$PER_AGGREGATE" 2>>"$E2E_DIR/record-tool.log")" ||
        e2e_fail "putting $file as KPL aggregates failed: see $E2E_DIR/record-tool.log"
    e2e_log "put $(wc -l <"$file") records of $file as $count KPL aggregates"
    AGGREGATES=$((AGGREGATES + count))
}

# summary_field LOG FIELD: a value of the JSON summary that podium record
# printed last on LOG.
summary_field() {
    node -e '
        const lines = require("fs").readFileSync(process.argv[1], "utf8").split("\n");
        const summary = lines.filter((l) => l.startsWith("{\"out\"")).map(JSON.parse).at(-1);
        if (summary === undefined) { console.error("no summary"); process.exit(1); }
        console.log(summary[process.argv[2]]);
    ' "$1" "$2"
}

# wait_exit PID SECONDS WHAT: wait for a process that stops by itself and
# return its exit status.
wait_exit() {
    local pid="$1" timeout_s="$2" what="$3"
    local deadline=$((SECONDS + timeout_s)) status=0
    while e2e_pid_alive "$pid"; do
        ((SECONDS < deadline)) || e2e_fail "$what (pid $pid) still runs after ${timeout_s}s"
        sleep 0.2
    done
    wait "$pid" || status=$?
    return "$status"
}

has_lines() {
    (($(e2e_line_count "$1") >= $2))
}

start_captures() {
    local settings=()
    mapfile -t settings < <(podium_settings)
    e2e_start_bg run "$PODIUM_BIN" run "${settings[@]}" \
        --set "store.path=$E2E_DIR/run.db" --set publish.transport=file \
        --set "publish.file=$E2E_DIR/run-publish.jsonl" --set http.listen=127.0.0.1:0
    RUN_PID="$E2E_LAST_PID"
    e2e_start_bg record "$PODIUM_BIN" record --out "$E2E_DIR/recording.jsonl" \
        --until-idle 6 "${settings[@]}" --set "store.path=$E2E_DIR/record.db"
    RECORD_PID="$E2E_LAST_PID"
    "$PODIUM_BIN" record --out - "${settings[@]}" \
        </dev/null >"$E2E_DIR/stdout-recording.jsonl" 2>"$E2E_DIR/stdout-record.log" &
    STDOUT_PID=$!
    e2e_track_pid "$STDOUT_PID" "$PODIUM_BIN"
}

put_races_with_split() {
    e2e_start_bg simulate "$PODIUM_BIN" simulate --stream "$STREAM" --realtime \
        --racers 20 --seconds "$SECONDS_PER_RACE" --classes 2 --seed 11 --duplicates 0.05 \
        --set "kinesis.endpoint=http://127.0.0.1:$KINESIS_PORT"
    local simulate_pid="$E2E_LAST_PID"

    # Split once the capture has a third of the race.
    e2e_wait_for 60 "the capture to write $((AGGREGATES + 130)) lines" \
        has_lines "$E2E_DIR/recording.jsonl" $((AGGREGATES + 130))
    local children=()
    mapfile -t children < <(node "$RESHARD_TOOL" split --port "$KINESIS_PORT" --stream "$STREAM" \
        --shard "$SPLIT_SHARD" 2>>"$E2E_DIR/reshard-tool.log")
    [[ ${#children[@]} -eq 2 ]] ||
        e2e_fail "SplitShard of $SPLIT_SHARD did not return two child shards: see $E2E_DIR/reshard-tool.log"
    e2e_log "split $SPLIT_SHARD into ${children[*]} after $(e2e_line_count "$E2E_DIR/recording.jsonl") lines"
    put_aggregates "$E2E_DIR/kpl-race-2.jsonl"
    CHILDREN=("${children[@]}")

    local status=0
    wait_exit "$simulate_pid" 90 "podium simulate --stream" || status=$?
    [[ $status -eq 0 ]] || e2e_fail "podium simulate --stream exited $status: see $E2E_DIR/simulate.log"
}

check_until_idle_capture() {
    local status=0
    wait_exit "$RECORD_PID" 60 "podium record --until-idle 6" || status=$?
    [[ $status -eq 0 ]] || e2e_fail "podium record --until-idle exited $status: see $E2E_DIR/record.log"
    [[ "$(summary_field "$E2E_DIR/record.log" stopped)" == until-idle ]] ||
        e2e_fail "podium record did not report that it stopped for --until-idle: see $E2E_DIR/record.log"
    [[ ! -e "$E2E_DIR/record.db" ]] || e2e_fail "podium record created the store $E2E_DIR/record.db"

    local summary
    summary="$(record_tool compare --port "$KINESIS_PORT" --stream "$STREAM" \
        --recording "$E2E_DIR/recording.jsonl")" ||
        e2e_fail "the recording differs from the stream: see the message above"
    e2e_log "recording matches the stream: $summary"
    local lines aggregates shard
    lines="$(node -pe 'JSON.parse(process.argv[1]).lines' "$summary")"
    aggregates="$(node -pe 'JSON.parse(process.argv[1]).aggregates' "$summary")"
    [[ "$aggregates" == "$AGGREGATES" ]] ||
        e2e_fail "the recording has $aggregates whole KPL aggregates, expected the $AGGREGATES put"
    [[ "$(summary_field "$E2E_DIR/record.log" records)" == "$lines" ]] ||
        e2e_fail "podium record counted other records than the $lines lines it wrote: see $E2E_DIR/record.log"
    for shard in "$SPLIT_SHARD" "${CHILDREN[@]}"; do
        (($(node -pe "JSON.parse(process.argv[1]).shards['$shard'] ?? 0" "$summary") > 0)) ||
            e2e_fail "the recording has no line of shard $shard, so the split was not recorded midway"
    done
    RECORDED_LINES="$lines"
}

check_stdout_capture() {
    # Every line reaches the file while the capture runs, so it flushes
    # without stopping.
    e2e_wait_for 10 "the capture to standard output to write $RECORDED_LINES lines" \
        has_lines "$E2E_DIR/stdout-recording.jsonl" "$RECORDED_LINES"
    e2e_pid_alive "$STDOUT_PID" ||
        e2e_fail "podium record --out - exited before SIGTERM: see $E2E_DIR/stdout-record.log"
    kill -TERM "$STDOUT_PID"
    local status=0
    e2e_wait_exit "$STDOUT_PID" 10 "podium record --out -" || status=$?
    [[ $status -eq 0 ]] || e2e_fail "podium record --out - exited $status after SIGTERM: see $E2E_DIR/stdout-record.log"
    [[ "$(summary_field "$E2E_DIR/stdout-record.log" stopped)" == signal ]] ||
        e2e_fail "podium record --out - did not report that a signal stopped it: see $E2E_DIR/stdout-record.log"
    record_tool compare --port "$KINESIS_PORT" --stream "$STREAM" \
        --recording "$E2E_DIR/stdout-recording.jsonl" >/dev/null ||
        e2e_fail "the recording on standard output differs from the stream: see the message above"
    e2e_log "the capture to standard output flushed every line while running and exited 0 on SIGTERM"
}

check_replay_matches_run() {
    record_tool settled --publish "$E2E_DIR/run-publish.jsonl" --results 4 --idle-s 4 ||
        e2e_fail "podium run did not publish the results of all 4 races: see $E2E_DIR/run.log"
    kill -TERM "$RUN_PID"
    local status=0
    e2e_wait_exit "$RUN_PID" 15 "podium run" || status=$?
    [[ $status -eq 0 ]] || e2e_fail "podium run exited $status after SIGTERM: see $E2E_DIR/run.log"

    local settings=()
    mapfile -t settings < <(podium_settings)
    "$PODIUM_BIN" replay "${settings[@]}" --set "store.path=$E2E_DIR/replay.db" \
        --set publish.transport=file --set "publish.file=$E2E_DIR/replay-publish.jsonl" \
        "$E2E_DIR/recording.jsonl" >"$E2E_DIR/replay.out" 2>"$E2E_DIR/replay.log" || status=$?
    [[ $status -eq 0 ]] || e2e_fail "podium replay of the recording exited $status: see $E2E_DIR/replay.log"
    record_tool final-compare --publish "$E2E_DIR/run-publish.jsonl" --other "$E2E_DIR/replay-publish.jsonl" ||
        e2e_fail "podium replay of the recording and podium run of the stream end with other leaderboards"
    e2e_log "the replay of the recording ends with the leaderboards of podium run"
}

check_other_options() {
    local settings=() status=0
    mapfile -t settings < <(podium_settings)

    "$PODIUM_BIN" record --out "$E2E_DIR/first-5.jsonl" --max-records 5 "${settings[@]}" \
        2>"$E2E_DIR/first-5.log" || status=$?
    [[ $status -eq 0 ]] || e2e_fail "podium record --max-records 5 exited $status: see $E2E_DIR/first-5.log"
    [[ "$(e2e_line_count "$E2E_DIR/first-5.jsonl")" == 5 ]] ||
        e2e_fail "podium record --max-records 5 wrote $(e2e_line_count "$E2E_DIR/first-5.jsonl") lines"
    [[ "$(summary_field "$E2E_DIR/first-5.log" stopped)" == max-records ]] ||
        e2e_fail "podium record --max-records 5 did not report why it stopped: see $E2E_DIR/first-5.log"
    record_tool compare --port "$KINESIS_PORT" --stream "$STREAM" --prefix \
        --recording "$E2E_DIR/first-5.jsonl" >/dev/null ||
        e2e_fail "the lines of --max-records 5 are not the first records of their shards"

    "$PODIUM_BIN" record --out "$E2E_DIR/latest.jsonl" --start latest --until-idle 2 "${settings[@]}" \
        2>"$E2E_DIR/latest.log" || status=$?
    [[ $status -eq 0 ]] || e2e_fail "podium record --start latest exited $status: see $E2E_DIR/latest.log"
    [[ -e "$E2E_DIR/latest.jsonl" && ! -s "$E2E_DIR/latest.jsonl" ]] ||
        e2e_fail "podium record --start latest wrote records put before it started"

    local args
    for args in "--start middle" "--until-idle 0" "--max-records -3" "--shard-id x" ""; do
        status=0
        # shellcheck disable=SC2086 # each case is a list of words
        "$PODIUM_BIN" record $args ${args:+--out "$E2E_DIR/bad.jsonl"} "${settings[@]}" \
            2>"$E2E_DIR/bad-option.log" || status=$?
        [[ $status -eq 2 ]] ||
            e2e_fail "podium record ${args:-without --out} exited $status, expected 2: $(cat "$E2E_DIR/bad-option.log")"
    done
    status=0
    "$PODIUM_BIN" record --out "$E2E_DIR/bad.jsonl" --set "kinesis.endpoint=http://127.0.0.1:$KINESIS_PORT" \
        2>"$E2E_DIR/no-stream.log" || status=$?
    [[ $status -eq 2 ]] && grep -q "stream.name is not set" "$E2E_DIR/no-stream.log" ||
        e2e_fail "podium record without stream.name exited $status: $(cat "$E2E_DIR/no-stream.log")"
    e2e_log "--max-records, --start latest and bad options behave"
}

check_missing_stream_keeps_file() {
    local settings=() status=0
    mapfile -t settings < <(podium_settings)
    cp "$E2E_DIR/first-5.jsonl" "$E2E_DIR/kept.jsonl"
    "$PODIUM_BIN" record --out "$E2E_DIR/kept.jsonl" --until-idle 2 "${settings[@]}" \
        --set stream.name=no-such-stream 2>"$E2E_DIR/kept.log" || status=$?
    [[ $status -eq 1 ]] ||
        e2e_fail "podium record of a missing stream exited $status, expected 1: see $E2E_DIR/kept.log"
    grep -q 'no-such-stream' "$E2E_DIR/kept.log" ||
        e2e_fail "podium record of a missing stream did not name it: $(cat "$E2E_DIR/kept.log")"
    cmp "$E2E_DIR/first-5.jsonl" "$E2E_DIR/kept.jsonl" ||
        e2e_fail "podium record of a missing stream changed the existing --out file"
    e2e_log "a capture of a missing stream leaves the --out file as it was"
}

main() {
    e2e_init e2e_record
    KINESIS_SERVER=kinesalite
    KINESIS_PORT="$(bash "$E2E_PEERS" start kinesalite "$E2E_DIR")" ||
        e2e_fail "kinesalite did not start: see $E2E_DIR/kinesalite.log; run 'bash tools/peers.sh install' if the npm packages are missing"
    e2e_create_stream "$STREAM" 2

    AGGREGATES=0
    simulate_race "$E2E_DIR/kpl-race-1.jsonl" 5 10
    simulate_race "$E2E_DIR/kpl-race-2.jsonl" 6 20
    put_aggregates "$E2E_DIR/kpl-race-1.jsonl"

    start_captures
    put_races_with_split
    check_until_idle_capture
    check_stdout_capture
    check_replay_matches_run
    check_other_options
    check_missing_stream_keeps_file
    e2e_log "passed"
}

main "$@"
