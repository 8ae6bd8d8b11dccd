#!/usr/bin/env bash
# Measure `podium run` live: the latency from a record's arrival in Kinesis
# to the leaderboard it lets close, podium's CPU time per record while it
# keeps up, and its peak RSS over the whole race.
#
# Builds podium (Release) and starts kinesalite and mosquitto on 127.0.0.1
# with tools/peers.sh, in a temporary folder. Creates a stream of SHARDS
# shards, starts `podium run` (publish.transport=mqtt, the default
# kinesis.poll_interval_ms of 250) and a mosquitto_sub that stamps each
# message with its receive time. Then `podium simulate --realtime` puts one
# record per rider per second: 1000 riders in 10 classes, so 10 races ride
# at once, for SECONDS seconds. Once every race has published its results,
# the script reads podium's CPU time and VmHWM from /proc, stops it, and
# captures the stream with `podium record`, which keeps each record's
# ApproximateArrivalTimestamp.
#
# Latency of second s of a race: the receive time of its leaderboard
# (revision 0) minus the arrival time of the record that closed it, the
# race's first record of second s + race.allowed_lateness_s or later.
# bench/live_latency.mjs computes it and gives p50, p90, p99 and max.
#
# Writes a line describing the machine and one result line to
# bench/results/live-DATE.jsonl.
#
# Environment:
#   LIVE_BENCH_SECONDS   race seconds, default 120
#   LIVE_BENCH_RACERS    riders, default 1000
#   LIVE_BENCH_CLASSES   classes (one race each), default 10
#   LIVE_BENCH_SHARDS    shards of the stream, default 2
#   LIVE_BENCH_RESULTS   results file
#   BENCH_BUILD_DIR      build folder, default build-bench
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BENCH_BUILD_DIR:-$REPO_DIR/build-bench}"
RACE_SECONDS="${LIVE_BENCH_SECONDS:-120}"
RACERS="${LIVE_BENCH_RACERS:-1000}"
CLASSES="${LIVE_BENCH_CLASSES:-10}"
SHARDS="${LIVE_BENCH_SHARDS:-2}"
RESULTS="${LIVE_BENCH_RESULTS:-$REPO_DIR/bench/results/live-$(date -u +%Y-%m-%d).jsonl}"
STREAM=bench-live
# podium's defaults, which the figures are measured with.
POLL_INTERVAL_MS=250
ALLOWED_LATENESS_S=2
# Seconds to wait, after the last put, for every race's results.
RESULTS_TIMEOUT_S=60
STOP_TIMEOUT_S=15

source "$REPO_DIR/bench/lib.sh"

TMP_DIR=""
PODIUM_PID=""
SUBSCRIBER_PID=""

# Stop PID with SIGTERM and wait for it; SIGKILL after STOP_TIMEOUT_S.
stop_process() {
    local pid="$1" i
    [[ -n "$pid" ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < STOP_TIMEOUT_S * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    stop_process "$PODIUM_PID"
    stop_process "$SUBSCRIBER_PID"
    if [[ -n "$TMP_DIR" ]]; then
        bash "$REPO_DIR/tools/peers.sh" stop "$TMP_DIR/peers"
        rm -rf "$TMP_DIR"
    fi
}

kinesis() {
    bash "$REPO_DIR/tools/kinesis-call.sh" "$KINESIS_PORT" "$@"
}

create_stream() {
    local i summary=""
    kinesis CreateStream \
        "{\"StreamName\":\"$STREAM\",\"ShardCount\":$SHARDS}" >/dev/null
    for ((i = 0; i < 150; i++)); do
        summary="$(kinesis DescribeStreamSummary \
            "{\"StreamName\":\"$STREAM\"}" 2>&1)" || true
        [[ "$summary" != *'"StreamStatus":"ACTIVE"'* ]] || return 0
        sleep 0.1
    done
    echo "live.sh: stream $STREAM did not become ACTIVE within 15 s;" \
        "last DescribeStreamSummary: $summary" >&2
    return 1
}

# Wait until podium logs that its HTTP server listens, which it does once
# it has started.
wait_podium_started() {
    local log="$1" i
    for ((i = 0; i < 150; i++)); do
        grep -q 'HTTP server listening on' "$log" && return 0
        kill -0 "$PODIUM_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "live.sh: podium run did not start; the last lines of its log:" >&2
    tail -n 20 "$log" >&2
    return 1
}

# Wait until the subscriber has received the results of COUNT races.
wait_results() {
    local count="$1" messages="$2" i received=0
    for ((i = 0; i < RESULTS_TIMEOUT_S * 10; i++)); do
        received="$(grep -c '^[0-9.]* podium/races/[^/]*/results ' \
            "$messages" || true)"
        ((received < count)) || return 0
        sleep 0.1
    done
    echo "live.sh: results of $received of $count races arrived within" \
        "${RESULTS_TIMEOUT_S}s of the last put; see $TMP_DIR/podium.log" >&2
    return 1
}

# Print "cpu_s vmhwm_kb" of process PID.
process_usage() {
    local pid="$1"
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f ", ($14 + $15) / hz }' \
        "/proc/$pid/stat"
    awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status"
}

main() {
    bash "$REPO_DIR/tools/deps.sh"
    build_podium
    mkdir -p "$(dirname "$RESULTS")"
    TMP_DIR="$(mktemp -d "$BUILD_DIR/live-bench.XXXXXX")"
    trap cleanup EXIT

    KINESIS_PORT="$(bash "$REPO_DIR/tools/peers.sh" start kinesalite "$TMP_DIR/peers")"
    local mqtt_port
    mqtt_port="$(bash "$REPO_DIR/tools/peers.sh" start mosquitto "$TMP_DIR/peers")"
    create_stream
    # kinesalite accepts any signature; these are not real credentials.
    export AWS_ACCESS_KEY_ID=AKIDEXAMPLE AWS_SECRET_ACCESS_KEY=SECRETEXAMPLE
    export AWS_REGION=us-east-1
    export PODIUM_KINESIS_ENDPOINT="http://127.0.0.1:$KINESIS_PORT"
    export PODIUM_STREAM_NAME="$STREAM"

    local messages="$TMP_DIR/messages.txt"
    mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -q 1 -t 'podium/races/#' \
        -F '%U %t %p' >"$messages" 2>"$TMP_DIR/mosquitto_sub.log" &
    SUBSCRIBER_PID=$!

    "$BUILD_DIR/daemon/podium" run --set "store.path=$TMP_DIR/podium.db" \
        --set publish.transport=mqtt \
        --set "mqtt.url=mqtt://127.0.0.1:$mqtt_port" \
        --set http.listen=127.0.0.1:0 \
        --set "kinesis.poll_interval_ms=$POLL_INTERVAL_MS" \
        --set "race.allowed_lateness_s=$ALLOWED_LATENESS_S" \
        </dev/null >/dev/null 2>"$TMP_DIR/podium.log" &
    PODIUM_PID=$!
    wait_podium_started "$TMP_DIR/podium.log"

    describe_machine >>"$RESULTS"
    echo "live.sh: $RACERS riders in $CLASSES races for $RACE_SECONDS s," \
        "in real time ($(date -u +%H:%M:%S) UTC)" >&2
    local simulated records
    simulated="$("$BUILD_DIR/daemon/podium" simulate --stream "$STREAM" \
        --realtime --racers "$RACERS" --seconds "$RACE_SECONDS" \
        --classes "$CLASSES" --seed "$BENCH_SEED" 2>"$TMP_DIR/simulate.log")"
    records="$(json_number "$simulated" records)"
    wait_results "$CLASSES" "$messages"

    local cpu_s vmhwm_kb
    read -r cpu_s vmhwm_kb < <(process_usage "$PODIUM_PID")
    stop_process "$PODIUM_PID"
    PODIUM_PID=""
    stop_process "$SUBSCRIBER_PID"
    SUBSCRIBER_PID=""

    echo "live.sh: capturing the stream's arrival times" >&2
    "$BUILD_DIR/daemon/podium" record --out "$TMP_DIR/arrivals.jsonl" \
        --until-idle 2 2>"$TMP_DIR/record.log"
    local latency
    latency="$(node "$REPO_DIR/bench/live_latency.mjs" \
        --recording "$TMP_DIR/arrivals.jsonl" --messages "$messages" \
        --lateness "$ALLOWED_LATENESS_S")"

    local line
    line="$(awk -v n="$records" -v r="$RACERS" -v c="$CLASSES" \
        -v s="$RACE_SECONDS" -v sh="$SHARDS" -v p="$POLL_INTERVAL_MS" \
        -v cpu="$cpu_s" -v hwm="$vmhwm_kb" 'BEGIN {
        printf "{\"bench\":\"live\",\"racers\":%d,\"races\":%d,", r, c
        printf "\"race_seconds\":%d,\"shards\":%d,\"poll_interval_ms\":%d,", s, sh, p
        printf "\"records\":%d,\"cpu_s\":%.2f,", n, cpu
        printf "\"cpu_us_per_record\":%.1f,\"peak_rss_kb\":%d,", cpu * 1e6 / n, hwm
    }')${latency#\{\"bench\":\"live_latency\",}"
    echo "$line" >>"$RESULTS"
    echo "$line"
    printf '%10s %8s %10s %8s %8s %8s %8s %10s\n' records cpu_s us/record \
        p50_ms p90_ms p99_ms max_ms rss_MiB
    printf '%10s %8s %10s %8s %8s %8s %8s %10s\n' "$records" "$cpu_s" \
        "$(json_number "$line" cpu_us_per_record)" \
        "$(json_number "$line" p50_ms)" "$(json_number "$line" p90_ms)" \
        "$(json_number "$line" p99_ms)" "$(json_number "$line" max_ms)" \
        "$(awk -v k="$vmhwm_kb" 'BEGIN { printf "%.1f", k / 1024 }')"
    echo "live.sh: results in $RESULTS" >&2
    local missing
    missing="$(json_number "$line" closed_but_not_received)"
    if [[ "$missing" != 0 ]]; then
        echo "live.sh: $missing leaderboards closed by a record never" \
            "reached the subscriber, so the latencies miss them" >&2
        return 1
    fi
}

main "$@"
