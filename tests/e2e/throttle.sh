#!/usr/bin/env bash
# Throttling of one shard while two podium instances read the same stream.
#
# Two podium run instances, A and B, read a 2-shard kinesalite stream into
# stores of their own, every 250 ms per shard. Each reads through its own
# tests/kinesis-fault-proxy.js, so each has its own request log and A's
# faults never reach B: the requests of the two instances look the same,
# so one proxy could not tell them apart. A's proxy replies to A's next 3
# GetRecords of shard 0 with ProvisionedThroughputExceededException while
# the test puts u-0201 to shard 0 and keeps putting records to shard 1.
#
# A must retry shard 0 with the same iterator after a backoff of at least
# 250, 500 and 1000 ms and request no new iterator. It must keep applying
# shard 1's records while shard 0 is throttled, and log one warning per
# throttled request, and /metrics must count the 3 throttled calls for A
# and none for B. Neither instance may send more than 5 GetRecords for one shard
# within a second. Both stores must contain u-0201 and every shard 1
# record exactly once.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STREAM=e2e
SHARD0=shardId-000000000000
SHARD1=shardId-000000000001
# Hash keys in each shard's half of the hash key range of a 2-shard stream
# (shard 0 owns 0 to 2^127 - 1), for ExplicitHashKey.
SHARD0_HASH_KEY=0
SHARD1_HASH_KEY=170141183460469231731687303715884105728
POLL_MS=250
THROTTLES=3
# Kinesis allows 5 GetRecords calls per second and shard. At one call every
# 250 ms, a 1000 ms span of the proxy's log can still hold 5 calls, because
# the proxy's times of arrival vary by a millisecond or two.
MAX_READS_PER_S=5
# shardreader/reader.c logs at most SHARD_WARN_MAX retry warnings every
# SHARD_WARN_WINDOW_MS per reader.
WARN_LIMIT=10
THROTTLE_ERROR=ProvisionedThroughputExceededException
PROXY_LOG_TOOL="$E2E_LIB_DIR/proxy-log.mjs"

# telemetry UUID RACE RACER SECOND CADENCE RESISTANCE: print one record.
telemetry() {
    local uuid="$1" race="$2" racer="$3" second="$4" cadence="$5" resistance="$6"
    printf '{"uuid":"%s","event":"update","deviceTimestamp":%d,"second":%d,"raceId":"%s","name":"Racer %s","racerId":"%s","classId":"B","cadence":%s,"resistance":%s}' \
        "$uuid" $((1767225600000 + second * 1000)) "$second" "$race" "$racer" "$racer" "$cadence" "$resistance"
}

# put_to_shard SHARD HASH_KEY UUID RACE RACER SECOND CADENCE RESISTANCE: put
# the record with ExplicitHashKey HASH_KEY and check that it landed on
# SHARD.
put_to_shard() {
    local shard="$1" hash_key="$2" uuid="$3" put
    shift 2
    put="$(e2e_put_record "$STREAM" "$(telemetry "$@")" "$uuid" "$hash_key")" || exit 1
    [[ "${put%% *}" == "$shard" ]] ||
        e2e_fail "$uuid put with ExplicitHashKey $hash_key landed on ${put%% *}, expected $shard"
}

now_ms() {
    date +%s%3N
}

count_uuid() {
    local db="$1" uuid="$2"
    e2e_uuid_count "$db" "$uuid"
}

stored() {
    local db="$1" uuid="$2"
    (($(count_uuid "$db" "$uuid") >= 1))
}

expect_once() {
    local db="$1" uuid="$2" count
    count="$(count_uuid "$db" "$uuid")"
    [[ "$count" == 1 ]] ||
        e2e_fail "$uuid is in the samples table of $db $count times, expected once"
}

requests_of() {
    echo "$E2E_DIR/proxy-$1-requests.jsonl"
}

# True when instance NAME received a GetRecords reply without records for
# both shards, so it reads both and has caught up.
caught_up() {
    local log
    log="$(requests_of "$1")"
    grep -q "^{\"reply\":200,\"action\":\"GetRecords\",\"shard\":\"$SHARD0\",.*\"records\":0," "$log" &&
        grep -q "^{\"reply\":200,\"action\":\"GetRecords\",\"shard\":\"$SHARD1\",.*\"records\":0," "$log"
}

# start_instance NAME: start the fault proxy proxy-NAME and podium run
# through it, with the store NAME.db, the log podium-NAME.log and the MQTT
# client id podium-NAME. Sets E2E_LAST_PID to podium's pid.
start_instance() {
    local name="$1" settings=()
    e2e_start_fault_proxy "proxy-$name"
    mapfile -t settings < <(e2e_podium_run_settings "$STREAM")
    settings+=(
        --set "kinesis.endpoint=http://127.0.0.1:$FAULT_PROXY_PORT"
        --set "store.path=$E2E_DIR/$name.db"
        --set "kinesis.poll_interval_ms=$POLL_MS"
        --set "mqtt.client_id=podium-$name"
    )
    e2e_start_bg "podium-$name" "$PODIUM_BIN" run "${settings[@]}"
}

# Print "FIRST END" for A's throttling of shard 0 (see proxy-log.mjs window).
throttle_window() {
    local from_line="$1"
    node "$PROXY_LOG_TOOL" window --log "$(requests_of a)" --shard "$SHARD0" --from-line "$from_line" 2>/dev/null
}

throttled() {
    throttle_window "$1" >/dev/null
}

# Print the number of warnings in podium's log that name the throttling
# error.
count_throttle_warnings() {
    local log="$1"
    grep '^{"level":"warn"' "$log" | grep -c "$THROTTLE_ERROR" || true
}

stop_instance() {
    local name="$1" pid="$2" status=0
    e2e_pid_alive "$pid" || e2e_fail "podium $name exited before SIGTERM: see $E2E_DIR/podium-$name.log"
    kill -TERM "$pid"
    e2e_wait_exit "$pid" 10 "podium $name" || status=$?
    [[ $status -eq 0 ]] ||
        e2e_fail "podium $name exited with status $status after SIGTERM, expected 0: see $E2E_DIR/podium-$name.log"
}

main() {
    e2e_init throttle
    e2e_start_peers kinesalite
    e2e_create_stream "$STREAM" 2

    start_instance a
    local pid_a="$E2E_LAST_PID"
    start_instance b
    local pid_b="$E2E_LAST_PID"
    local db_a="$E2E_DIR/a.db" db_b="$E2E_DIR/b.db"
    local log_a="$E2E_DIR/podium-a.log" log_b="$E2E_DIR/podium-b.log"
    e2e_wait_for 20 "podium a to read both shards to their end: see $(requests_of a)" caught_up a
    e2e_wait_for 20 "podium b to read both shards to their end: see $(requests_of b)" caught_up b

    local rules_at
    rules_at="$(e2e_line_count "$(requests_of a)")"
    e2e_set_fault_rules proxy-a \
        "[{\"action\":\"GetRecords\",\"shard\":\"$SHARD0\",\"fault\":\"throttle\",\"times\":$THROTTLES}]"
    put_to_shard "$SHARD0" "$SHARD0_HASH_KEY" u-0201 R-7 rc-12 5 81 13
    e2e_log "throttling podium a's next $THROTTLES GetRecords of $SHARD0; put u-0201 to $SHARD0"
    e2e_wait_for 10 "a throttled GetRecords of $SHARD0 in $(requests_of a)" throttled "$rules_at"

    # Put records to shard 1 one at a time until shard 0's throttling ends,
    # and note when each one reached A's store.
    local window first end="-" second=0 uuid put_ms applied_ms deadline
    local applied_while_throttled=0 timeline=()
    while [[ "$end" == - ]]; do
        second=$((second + 1))
        uuid="$(printf 'u-03%02d' "$second")"
        put_ms="$(now_ms)"
        put_to_shard "$SHARD1" "$SHARD1_HASH_KEY" "$uuid" R-8 rc-21 "$second" 70 20
        deadline=$((SECONDS + 15))
        until stored "$db_a" "$uuid"; do
            ((SECONDS < deadline)) ||
                e2e_fail "$uuid, put to $SHARD1, is not in $db_a 15s later: see $log_a"
            sleep 0.1
        done
        applied_ms="$(now_ms)"
        window="$(throttle_window "$rules_at")" ||
            e2e_fail "the throttled GetRecords of $SHARD0 are missing from $(requests_of a)"
        first="${window% *}"
        end="${window#* }"
        if ((put_ms >= first)) && [[ "$end" == - ]]; then
            applied_while_throttled=$((applied_while_throttled + 1))
        fi
        timeline+=("$uuid put at +$((put_ms - first)) ms, in a.db by +$((applied_ms - first)) ms")
        ((second < 60)) || e2e_fail "the throttling of $SHARD0 did not end after 60 records to $SHARD1: see $(requests_of a)"
    done
    e2e_log "throttling of $SHARD0 ended $((end - first)) ms after its first throttled GetRecords; records to $SHARD1 meanwhile:"
    printf '    %s\n' "${timeline[@]}"

    e2e_wait_for 20 "u-0201 in $db_a after the throttling: see $log_a" stored "$db_a" u-0201
    e2e_wait_for 20 "u-0201 in $db_b: see $log_b" stored "$db_b" u-0201
    e2e_pid_alive "$pid_a" || e2e_fail "podium a exited: see $log_a"
    e2e_pid_alive "$pid_b" || e2e_fail "podium b exited: see $log_b"

    node "$PROXY_LOG_TOOL" throttle --log "$(requests_of a)" --shard "$SHARD0" --from-line "$rules_at" \
        --times "$THROTTLES" --poll-ms "$POLL_MS" ||
        e2e_fail "podium a did not back off on $SHARD0 with the same iterator: see the message above and $(requests_of a)"
    # Checked after the backoff, since throttling that ends at once leaves
    # no time to put a record.
    ((applied_while_throttled >= 1)) ||
        e2e_fail "no record put to $SHARD1 after the first throttled GetRecords of $SHARD0 reached $db_a before the throttling ended at +$((end - first)) ms: podium a held $SHARD1 back while $SHARD0 was throttled"
    local name
    for name in a b; do
        node "$PROXY_LOG_TOOL" iterators --log "$(requests_of "$name")" --expected 1 ||
            e2e_fail "podium $name requested more than one iterator for a shard: see the message above and $(requests_of "$name")"
        node "$PROXY_LOG_TOOL" rate --log "$(requests_of "$name")" --window-ms 1000 --max "$MAX_READS_PER_S" ||
            e2e_fail "podium $name read a shard more often than $MAX_READS_PER_S times a second: see the message above and $(requests_of "$name")"
    done

    # NOTE: 3 throttled calls stay below the limit, so this does not
    # exercise the rate limiter. A backoff that doubles from 250 ms allows
    # at most 6 failed GetRecords per shard in 10 s, so with 2 shards only
    # a long storm on both reaches the limit.
    local warnings
    warnings="$(count_throttle_warnings "$log_a")"
    ((warnings <= WARN_LIMIT)) ||
        e2e_fail "podium a logged $warnings warnings about $THROTTLE_ERROR, more than the limit of $WARN_LIMIT in 10 s: see $log_a"
    ((warnings == THROTTLES)) ||
        e2e_fail "podium a logged $warnings warnings about $THROTTLE_ERROR, expected one for each of the $THROTTLES throttled GetRecords: see $log_a"
    warnings="$(count_throttle_warnings "$log_b")"
    ((warnings == 0)) ||
        e2e_fail "podium b logged $warnings warnings about $THROTTLE_ERROR, but its proxy throttled nothing: see $log_b"
    e2e_log "podium a logged $THROTTLES warnings about $THROTTLE_ERROR, podium b none"

    local port count expected
    for name in a b; do
        expected=0
        if [[ "$name" == a ]]; then
            expected="$THROTTLES"
        fi
        port="$(e2e_podium_http_port "$E2E_DIR/podium-$name.log")" || exit 1
        count="$(e2e_metric "$port" 'podium_kinesis_errors_total{cause="throttled"}')" ||
            e2e_fail "/metrics of podium $name on port $port has no throttled sample"
        [[ "$count" == "$expected" ]] ||
            e2e_fail "/metrics of podium $name counts $count throttled Kinesis calls, expected $expected"
    done
    e2e_log "/metrics counts $THROTTLES throttled calls for podium a and none for podium b"

    stop_instance a "$pid_a"
    stop_instance b "$pid_b"
    local db id
    for db in "$db_a" "$db_b"; do
        expect_once "$db" u-0201
        for ((id = 1; id <= second; id++)); do
            expect_once "$db" "$(printf 'u-03%02d' "$id")"
        done
    done
    e2e_log "u-0201 and the $second records to $SHARD1 are in a.db and b.db once each"
    e2e_log "passed"
}

main "$@"
