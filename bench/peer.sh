#!/usr/bin/env bash
# Compare podium's deduplication with the tool that a Lambda user would
# otherwise pick: the idempotency utility of Powertools for AWS Lambda
# (TypeScript), npm @aws-lambda-powertools/idempotency 2.35.0, with its
# CachePersistenceLayer on a local redis-server.
#
# Builds podium (Release) and writes one recording with `podium simulate
# --out`: the riders, classes and seed of bench/replay.sh, with 2% of the
# records put twice. Replays it with `podium replay` into a new store. Then
# runs bench/peer/powertools.mjs on the same file against a redis-server
# that this script starts on 127.0.0.1 with a free port, no persistence and
# a temporary folder. The peer runs once per --concurrency value, each time on
# an empty Redis. Both must count exactly the duplicates that the simulator
# put; the script prints both counts and fails when either differs.
#
# Between the two it runs bench/dedup_bench on the same file: podium's
# deduplication alone (parse, payload hash, idempotency table with a
# commit per batch), the work that the peer does, without leaderboards,
# samples or messages.
# Reports records per wall-clock second of each and the ratios
# podium / Powertools, for the replay and for dedup_bench, and the same
# per CPU second: podium's user + system time, and the peer's node process
# plus redis-server. Writes a line describing the machine and one line per
# measurement to bench/results/peer-DATE.jsonl. dedup_bench must count
# the same duplicates too.
#
# Environment:
#   PEER_BENCH_SECONDS      race seconds simulated, default 980 (about
#                           1,000,000 records with the duplicates)
#   PEER_BENCH_DUPLICATES   fraction of records put twice, default 0.02
#   PEER_BENCH_CONCURRENCY  the peer's --concurrency values, default "1 100"
#   PEER_BENCH_BATCH        podium replay --batch-size, default 10000
#   PEER_BENCH_RESULTS      results file
#   BENCH_BUILD_DIR         build folder, default build-bench
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BENCH_BUILD_DIR:-$REPO_DIR/build-bench}"
RACE_SECONDS="${PEER_BENCH_SECONDS:-980}"
DUPLICATES="${PEER_BENCH_DUPLICATES:-0.02}"
CONCURRENCY="${PEER_BENCH_CONCURRENCY:-1 100}"
BATCH="${PEER_BENCH_BATCH:-10000}"
RESULTS="${PEER_BENCH_RESULTS:-$REPO_DIR/bench/results/peer-$(date -u +%Y-%m-%d).jsonl}"
PEER_DIR="$REPO_DIR/bench/peer"
# The recording (about 460 bytes a record) and podium's store and WAL.
MIN_FREE_GB=4
REDIS_START_TIMEOUT_S=10

source "$REPO_DIR/bench/lib.sh"

REDIS_PID=""
TMP_DIR=""

install_tools() {
    bash "$REPO_DIR/tools/deps.sh"
    install_apt_packages time redis-server
    # The stamp is a copy of the lockfile that npm ci installed, so a second
    # run with the same lockfile skips npm and needs no registry.
    local stamp="$PEER_DIR/node_modules/.installed-package-lock.json"
    if ! cmp -s "$PEER_DIR/package-lock.json" "$stamp"; then
        (cd "$PEER_DIR" && npm ci --no-audit --no-fund)
        cp "$PEER_DIR/package-lock.json" "$stamp"
    fi
}

# Sum of user and system CPU seconds that process PID has used so far.
process_cpu_s() {
    local pid="$1"
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f\n", ($14 + $15) / hz }' \
        "/proc/$pid/stat"
}

start_redis() {
    local dir="$TMP_DIR/redis" port deadline
    mkdir -p "$dir"
    port="$(free_port)"
    redis-server --bind 127.0.0.1 --port "$port" --protected-mode yes \
        --save '' --appendonly no --dir "$dir" --daemonize no \
        --logfile "$dir/redis.log" </dev/null >/dev/null 2>&1 &
    REDIS_PID=$!
    deadline=$(($(date +%s) + REDIS_START_TIMEOUT_S))
    until [[ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" == PONG ]]; do
        if ! kill -0 "$REDIS_PID" 2>/dev/null || (($(date +%s) >= deadline)); then
            echo "peer.sh: redis-server did not answer on 127.0.0.1:$port" \
                "within ${REDIS_START_TIMEOUT_S}s; its log:" >&2
            cat "$dir/redis.log" >&2 || true
            return 1
        fi
        sleep 0.1
    done
    REDIS_PORT="$port"
}

stop_redis() {
    [[ -n "$REDIS_PID" ]] || return 0
    kill -TERM "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=""
}

cleanup() {
    stop_redis
    [[ -z "$TMP_DIR" ]] || rm -rf "$TMP_DIR"
}

# Run the peer once on an empty Redis and print its JSON line, with the CPU
# time of redis-server added.
run_peer() {
    local concurrency="$1" redis_cpu_before redis_cpu_after line
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" flushall >/dev/null
    redis_cpu_before="$(process_cpu_s "$REDIS_PID")"
    line="$(node "$PEER_DIR/powertools.mjs" --file "$TMP_DIR/records.jsonl" \
        --redis-port "$REDIS_PORT" --concurrency "$concurrency")"
    redis_cpu_after="$(process_cpu_s "$REDIS_PID")"
    printf '%s,"redis_server_version":%s,"redis_cpu_s":%.2f}\n' "${line%\}}" \
        "$(json_string "$(redis-server --version | grep -o 'v=[0-9.]*' | cut -c3-)")" \
        "$(awk -v a="$redis_cpu_after" -v b="$redis_cpu_before" 'BEGIN { print a - b }')"
}

# ratio_line NAME CONCURRENCY RECORDS PODIUM_LINE PEER_LINE: the JSON line
# NAME with the rates of both and their ratios, per wall-clock second and
# per CPU second. The peer's CPU time is its node process's plus
# redis-server's.
ratio_line() {
    awk -v name="$1" -v c="$2" -v n="$3" \
        -v p="$(json_number "$4" records_per_wall_s)" \
        -v q="$(json_number "$5" records_per_wall_s)" \
        -v pc="$(json_number "$4" records_per_cpu_s)" \
        -v node="$(json_number "$5" node_cpu_s)" \
        -v redis="$(json_number "$5" redis_cpu_s)" 'BEGIN {
        qc = n / (node + redis)
        printf "{\"bench\":\"%s\",\"concurrency\":%d,", name, c
        printf "\"podium_records_per_wall_s\":%d,", p
        printf "\"powertools_records_per_wall_s\":%d,\"ratio\":%.1f,", q, p / q
        printf "\"podium_records_per_cpu_s\":%d,", pc
        printf "\"powertools_records_per_cpu_s\":%.0f,\"cpu_ratio\":%.1f}", qc, pc / qc
    }'
}

# Fail unless COUNT, the duplicates that WHO detected, is EXPECTED.
check_duplicates() {
    local who="$1" count="$2" expected="$3"
    if [[ "$count" != "$expected" ]]; then
        echo "peer.sh: $who detected $count duplicates, but the recording" \
            "contains $expected, so the comparison is invalid" >&2
        return 1
    fi
}

main() {
    install_tools
    build_podium dedup_bench
    mkdir -p "$(dirname "$RESULTS")"
    check_free_space "$BUILD_DIR"
    TMP_DIR="$(mktemp -d "$BUILD_DIR/peer-bench.XXXXXX")"
    trap cleanup EXIT

    echo "peer.sh: simulating $RACE_SECONDS s of $BENCH_RACERS riders," \
        "duplicates $DUPLICATES" >&2
    local simulated records expected
    simulated="$(simulate_recording "$TMP_DIR/records.jsonl" "$RACE_SECONDS" \
        "$DUPLICATES")"
    records="$(json_number "$simulated" records)"
    expected="$(json_number "$simulated" duplicates)"

    describe_machine >>"$RESULTS"
    echo "peer.sh: podium replay of $records records, batch $BATCH" >&2
    local wall user sys rss summary podium_dups
    bench_replay "$TMP_DIR/records.jsonl" "$TMP_DIR" "$BATCH" >"$TMP_DIR/times.txt"
    read -r wall user sys rss <"$TMP_DIR/times.txt"
    summary="$(cat "$TMP_DIR/summary.json")"
    podium_dups="$(json_number "$summary" duplicates)"
    local podium_line
    podium_line="$(awk -v n="$records" -v d="$podium_dups" -v e="$expected" \
        -v b="$BATCH" -v w="$wall" -v u="$user" -v s="$sys" -v rss="$rss" 'BEGIN {
        printf "{\"bench\":\"podium_replay\",\"records\":%d,\"duplicates\":%d,", n, d
        printf "\"duplicates_expected\":%d,\"batch\":%d,\"wall_s\":%.2f,", e, b, w
        printf "\"cpu_s\":%.2f,\"records_per_wall_s\":%.0f,", u + s, n / w
        printf "\"records_per_cpu_s\":%.0f,\"peak_rss_kb\":%d}", n / (u + s), rss
    }')"
    echo "$podium_line" >>"$RESULTS"

    echo "peer.sh: podium's deduplication alone (dedup_bench), batch $BATCH" >&2
    local dedup_line dedup_dups
    dedup_line="$("$BUILD_DIR/bench/dedup_bench" --db "$TMP_DIR/dedup.db" \
        --batch "$BATCH" "$TMP_DIR/records.jsonl")"
    rm -f "$TMP_DIR/dedup.db" "$TMP_DIR/dedup.db-wal" "$TMP_DIR/dedup.db-shm"
    dedup_dups="$(json_number "$dedup_line" duplicates)"
    echo "$dedup_line" >>"$RESULTS"

    start_redis
    local concurrency peer_line peer_lines=() line ratio_lines=() dedup_lines=()
    for concurrency in $CONCURRENCY; do
        echo "peer.sh: Powertools on Redis, concurrency $concurrency" >&2
        peer_line="$(run_peer "$concurrency")"
        echo "$peer_line" >>"$RESULTS"
        peer_lines+=("$peer_line")
        line="$(ratio_line peer_ratio "$concurrency" "$records" \
            "$podium_line" "$peer_line")"
        echo "$line" >>"$RESULTS"
        ratio_lines+=("$line")
        line="$(ratio_line peer_ratio_dedup "$concurrency" "$records" \
            "$dedup_line" "$peer_line")"
        echo "$line" >>"$RESULTS"
        dedup_lines+=("$line")
    done
    stop_redis

    echo "peer.sh: ratio and cpu_ratio give podium replay / the peer," \
        "then dedup_bench / the peer" >&2
    printf '%-24s %10s %10s %12s %8s %15s %15s\n' tool records duplicates \
        rec/wall_s cpu_s ratio cpu_ratio
    printf '%-24s %10s %10s %12s %8s %15s %15s\n' "podium replay" "$records" \
        "$podium_dups" "$(json_number "$podium_line" records_per_wall_s)" \
        "$(json_number "$podium_line" cpu_s)" - -
    printf '%-24s %10s %10s %12s %8s %15s %15s\n' "podium dedup_bench" \
        "$(json_number "$dedup_line" records)" "$dedup_dups" \
        "$(json_number "$dedup_line" records_per_wall_s)" \
        "$(awk -v t="$(json_number "$dedup_line" cpu_s)" 'BEGIN { printf "%.2f", t }')" - -
    local i
    for i in "${!peer_lines[@]}"; do
        peer_line="${peer_lines[$i]}"
        printf '%-24s %10s %10s %12s %8s %15s %15s\n' \
            "powertools, conc. $(json_number "$peer_line" concurrency)" \
            "$(json_number "$peer_line" records)" \
            "$(json_number "$peer_line" duplicates)" \
            "$(json_number "$peer_line" records_per_wall_s)" \
            "$(awk -v a="$(json_number "$peer_line" node_cpu_s)" \
                -v b="$(json_number "$peer_line" redis_cpu_s)" \
                'BEGIN { printf "%.2f", a + b }')" \
            "$(json_number "${ratio_lines[$i]}" ratio) / $(json_number "${dedup_lines[$i]}" ratio)" \
            "$(json_number "${ratio_lines[$i]}" cpu_ratio) / $(json_number "${dedup_lines[$i]}" cpu_ratio)"
    done
    echo "peer.sh: the recording contains $expected duplicates" >&2
    echo "peer.sh: results in $RESULTS" >&2

    check_duplicates "podium replay" "$podium_dups" "$expected"
    check_duplicates "dedup_bench" "$dedup_dups" "$expected"
    for peer_line in "${peer_lines[@]}"; do
        check_duplicates "Powertools (concurrency $(json_number "$peer_line" concurrency))" \
            "$(json_number "$peer_line" duplicates)" "$expected"
    done
}

main "$@"
