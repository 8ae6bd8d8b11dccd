#!/usr/bin/env bash
# Show podium at work on this machine. The demo builds podium and starts
# kinesalite and mosquitto on loopback ports. It puts one minute of
# simulated telemetry (1000 riders in 6 classes, 2% duplicates) to a 2-shard
# stream, runs podium and prints the race leaderboards as they are
# published. On exit it stops everything it started and keeps the database
# and logs.
#
# With --replay, the demo needs no Kinesis server and no broker: it
# replays the golden race of tests/data/golden (80 riders in 3 classes, 60
# seconds, with duplicates, malformed, late and skewed records) with
# `podium replay` and publish.transport=file, and prints the leaderboards
# the same way.
#
# With PODIUM_BIN set to a podium binary, the demo uses it and skips the
# build. On SIGINT (Ctrl-C) or SIGTERM it says it was interrupted, stops
# what it started and exits 130 or 143.
#
#   bash tools/demo.sh [--replay]
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="$REPO_DIR/build-release"
PODIUM_BIN="${PODIUM_BIN:-}"
STREAM=race-telemetry
SIMULATED_SECONDS=60
# Bound on the wait for the last leaderboards, in seconds.
SHOW_TIMEOUT_S=120
GOLDEN_RECORDING="$REPO_DIR/tests/data/golden/race.jsonl"
# The last second of the golden race (tools/make-golden.sh).
GOLDEN_SECONDS=60
MODE=live

WORK_DIR=""
STARTED_PIDS=()
# SIGINT or SIGTERM once the demo was interrupted, else empty.
INTERRUPTED=""


export AWS_ACCESS_KEY_ID=AKIDEXAMPLE
export AWS_SECRET_ACCESS_KEY=SECRETEXAMPLE
export AWS_REGION=us-east-1

say() {
    echo "demo: $*"
}

die() {
    echo "demo: $*" >&2
    exit 1
}

# on_signal NAME STATUS: say once that signal NAME interrupted the demo and
# exit with STATUS; the EXIT trap then stops what the demo started.
on_signal() {
    if [[ -z "$INTERRUPTED" ]]; then
        INTERRUPTED="$1"
        echo
        say "interrupted by $1"
    fi
    exit "$2"
}

# check_step STATUS MESSAGE: go on after status 0, end as interrupted after
# 130 or 143 (a step that SIGINT or SIGTERM stopped), and die with MESSAGE
# after any other status.
check_step() {
    case "$1" in
    0) ;;
    130) on_signal SIGINT 130 ;;
    143) on_signal SIGTERM 143 ;;
    *) die "$2" ;;
    esac
}

cleanup() {
    local status=$?
    set +e
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${STARTED_PIDS[@]}"; do
        local deadline=$((SECONDS + 5))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
    done
    if [[ -n "$WORK_DIR" && "$MODE" == replay ]]; then
        echo
        say "database: $WORK_DIR/podium.db"
        say "log:      $WORK_DIR/podium.log (JSON lines)"
        say "messages: $WORK_DIR/capture.txt (one 'TOPIC PAYLOAD' line each)"
    elif [[ -n "$WORK_DIR" ]]; then
        bash "$REPO_DIR/tools/peers.sh" stop "$WORK_DIR"
        echo
        say "stopped podium, kinesalite and mosquitto"
        say "database: $WORK_DIR/podium.db"
        say "logs:     $WORK_DIR/podium.log (JSON lines), $WORK_DIR/kinesalite.log, $WORK_DIR/mosquitto.log"
        say "messages: $WORK_DIR/capture.txt (one 'TOPIC PAYLOAD' line each)"
    fi
    exit "$status"
}

build() {
    if [[ -n "$PODIUM_BIN" ]]; then
        [[ -x "$PODIUM_BIN" ]] || die "PODIUM_BIN=$PODIUM_BIN is not an executable file: unset it to build podium"
        say "using $PODIUM_BIN"
        return 0
    fi
    PODIUM_BIN="$BUILD_DIR/daemon/podium"
    say "building podium (Release) in $BUILD_DIR"
    cmake -S "$REPO_DIR" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DPODIUM_TESTS=OFF >/dev/null
    cmake --build "$BUILD_DIR" -j2 >/dev/null ||
        die "the build failed: run 'cmake --build $BUILD_DIR' to see the compiler errors"
    [[ -x "$PODIUM_BIN" ]] || die "the build finished but $PODIUM_BIN is missing"
}

create_stream() {
    local port="$1"
    bash "$REPO_DIR/tools/kinesis-call.sh" "$port" CreateStream \
        "{\"StreamName\":\"$STREAM\",\"ShardCount\":2}" >/dev/null
    local deadline=$((SECONDS + 15))
    until bash "$REPO_DIR/tools/kinesis-call.sh" "$port" DescribeStreamSummary \
        "{\"StreamName\":\"$STREAM\"}" 2>/dev/null | grep -q '"StreamStatus":"ACTIVE"'; do
        ((SECONDS < deadline)) || die "stream $STREAM did not become ACTIVE within 15s"
        sleep 0.1
    done
}

# Replay the golden race into a file and print its leaderboards.
replay_golden() {
    local published="$WORK_DIR/published.jsonl" capture="$WORK_DIR/capture.txt"
    local status=0
    say "podium replay of $GOLDEN_RECORDING (no Kinesis server, no broker)"
    "$PODIUM_BIN" replay \
        --set "store.path=$WORK_DIR/podium.db" \
        --set publish.transport=file \
        --set "publish.file=$published" \
        "$GOLDEN_RECORDING" >"$WORK_DIR/summary.json" 2>"$WORK_DIR/podium.log" || status=$?
    check_step "$status" "podium replay failed: see $WORK_DIR/podium.log"
    say "summary: $(cat "$WORK_DIR/summary.json")"

    # The publish file contains {"topic":...,"payload":...} lines, and the
    # viewer reads the 'TOPIC PAYLOAD' lines of mosquitto_sub -v.
    node -e '
const fs = require("fs");
const lines = fs.readFileSync(process.argv[1], "utf8").split("\n").filter((l) => l !== "");
const out = lines.map((l) => { const m = JSON.parse(l); return `${m.topic} ${JSON.stringify(m.payload)}`; });
fs.writeFileSync(process.argv[2], out.join("\n") + "\n");
' "$published" "$capture" || die "could not read $published"

    say "leaderboards as published (race, second, revision, top 3 by total output):"
    status=0
    node "$REPO_DIR/tools/show-leaderboards.mjs" --follow "$capture" \
        --last-second "$GOLDEN_SECONDS" --idle-s 1 --timeout-s 30 || status=$?
    check_step "$status" "not every race published second $GOLDEN_SECONDS: see $WORK_DIR/podium.log"
}

main() {
    case "${1:-}" in
    "") ;;
    --replay) MODE=replay ;;
    *) die "unknown argument '$1': run 'bash tools/demo.sh' or 'bash tools/demo.sh --replay'" ;;
    esac
    bash "$REPO_DIR/tools/deps.sh"
    build

    if [[ "$MODE" == replay ]]; then
        [[ -r "$GOLDEN_RECORDING" ]] || die "$GOLDEN_RECORDING is missing: run tools/make-golden.sh"
        WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/podium-demo.XXXXXX")"
        trap cleanup EXIT
        trap 'on_signal SIGINT 130' INT
        trap 'on_signal SIGTERM 143' TERM
        replay_golden
        return 0
    fi

    WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/podium-demo.XXXXXX")"
    trap cleanup EXIT
    trap 'on_signal SIGINT 130' INT
    trap 'on_signal SIGTERM 143' TERM

    local kinesis_port mqtt_port status=0
    kinesis_port="$(bash "$REPO_DIR/tools/peers.sh" start kinesalite "$WORK_DIR")"
    mqtt_port="$(bash "$REPO_DIR/tools/peers.sh" start mosquitto "$WORK_DIR")"
    say "kinesalite on 127.0.0.1:$kinesis_port, mosquitto on 127.0.0.1:$mqtt_port"
    create_stream "$kinesis_port"

    local capture="$WORK_DIR/capture.txt"
    : >"$capture"
    mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -t 'podium/#' -v \
        </dev/null >"$capture" 2>>"$WORK_DIR/mosquitto_sub.log" &
    STARTED_PIDS+=("$!")

    say "podium simulate: 1000 riders, $SIMULATED_SECONDS seconds, 6 classes, 2% duplicates"
    "$PODIUM_BIN" simulate --racers 1000 --seconds "$SIMULATED_SECONDS" --classes 6 --seed 42 \
        --duplicates 0.02 --stream "$STREAM" \
        --set "kinesis.endpoint=http://127.0.0.1:$kinesis_port" \
        2>>"$WORK_DIR/simulate.log" || status=$?
    check_step "$status" "podium simulate failed: see $WORK_DIR/simulate.log"

    say "podium run; leaderboards as they arrive (race, second, revision, top 3 by total output):"
    "$PODIUM_BIN" run \
        --set "stream.name=$STREAM" \
        --set "kinesis.endpoint=http://127.0.0.1:$kinesis_port" \
        --set "store.path=$WORK_DIR/podium.db" \
        --set publish.transport=mqtt \
        --set "mqtt.url=mqtt://127.0.0.1:$mqtt_port" \
        --set race.idle_close_s=3 \
        --set http.listen=127.0.0.1:0 \
        </dev/null 2>>"$WORK_DIR/podium.log" &
    STARTED_PIDS+=("$!")

    status=0
    node "$REPO_DIR/tools/show-leaderboards.mjs" --follow "$capture" \
        --last-second "$SIMULATED_SECONDS" --idle-s 3 --timeout-s "$SHOW_TIMEOUT_S" || status=$?
    if [[ "$status" != 0 && "$status" != 130 && "$status" != 143 ]]; then
        say "not every race published second $SIMULATED_SECONDS within ${SHOW_TIMEOUT_S}s: see $WORK_DIR/podium.log"
    else
        check_step "$status" ""
    fi
}

main "$@"
