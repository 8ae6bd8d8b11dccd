#!/usr/bin/env bash
# Measure `podium replay` through the whole durable pipeline: parse,
# deduplicate, aggregate, outbox, one commit per batch, file transport.
#
# Builds podium (Release, in build-bench), writes RECORDS simulated records
# with `podium simulate --out` (1000 riders, 6 classes, seed 7), and
# replays them into a new store with --batch-size BATCH. Reports wall time,
# CPU time (user + system), records per second of each, and peak RSS. Then
# runs the replay of the first SMALL and LARGE records under
# `valgrind --tool=callgrind` and reports the instructions per record of
# the difference, which leaves out start-up and the final close and stays
# comparable on a noisy machine.
#
# Writes a line describing the machine and one result line to
# bench/results/replay-DATE.jsonl and prints a summary.
#
# Environment:
#   REPLAY_BENCH_RECORDS   records replayed, default 1000000
#   REPLAY_BENCH_BATCH     --batch-size, default 10000
#   REPLAY_BENCH_SMALL     records of the smaller callgrind run, default 5000
#   REPLAY_BENCH_LARGE     records of the larger callgrind run, default 25000
#   REPLAY_BENCH_RESULTS   results file
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="$REPO_DIR/build-bench"
RECORDS="${REPLAY_BENCH_RECORDS:-1000000}"
BATCH="${REPLAY_BENCH_BATCH:-10000}"
SMALL="${REPLAY_BENCH_SMALL:-5000}"
LARGE="${REPLAY_BENCH_LARGE:-25000}"
RESULTS="${REPLAY_BENCH_RESULTS:-$REPO_DIR/bench/results/replay-$(date -u +%Y-%m-%d).jsonl}"
RACERS=1000
# 1 KB of recording per record, twice over for the store and its WAL.
MIN_FREE_GB=$(((RECORDS / 1000000 + 1) * 3))

source "$REPO_DIR/bench/lib.sh"

install_tools() {
    bash "$REPO_DIR/tools/deps.sh"
    install_apt_packages time valgrind
}

# replay_settings DB OUT: the --set flags of every replay here.
replay_settings() {
    echo --set "store.path=$1" --set publish.transport=file \
        --set "publish.file=$2"
}

# Total instructions of a replay of FILE under callgrind.
callgrind_instructions() {
    local file="$1" db="$TMP_DIR/cg.db" out="$TMP_DIR/cg.jsonl"
    rm -f "$db" "$db-wal" "$db-shm" "$out" "$TMP_DIR"/callgrind.out.*
    # shellcheck disable=SC2046
    valgrind --tool=callgrind --callgrind-out-file="$TMP_DIR/callgrind.out.%p" \
        "$BUILD_DIR/daemon/podium" replay --batch-size "$BATCH" \
        --progress never $(replay_settings "$db" "$out") "$file" \
        >/dev/null 2>"$TMP_DIR/callgrind.log"
    grep -h '^summary:' "$TMP_DIR"/callgrind.out.* | awk '{ s += $2 } END { print s }'
}

main() {
    install_tools
    build_podium
    mkdir -p "$(dirname "$RESULTS")"
    check_free_space "$BUILD_DIR"
    TMP_DIR="$(mktemp -d "$BUILD_DIR/replay-bench.XXXXXX")"
    trap 'rm -rf "$TMP_DIR"' EXIT

    local seconds=$(((RECORDS + RACERS - 1) / RACERS))
    echo "replay.sh: simulating $RECORDS records" >&2
    "$BUILD_DIR/daemon/podium" simulate --out "$TMP_DIR/all.jsonl" \
        --racers "$RACERS" --seconds "$seconds" --classes 6 --seed 7 \
        --start-ms 1767225600000 >/dev/null 2>"$TMP_DIR/simulate.log"
    head -n "$RECORDS" "$TMP_DIR/all.jsonl" >"$TMP_DIR/records.jsonl"
    head -n "$SMALL" "$TMP_DIR/records.jsonl" >"$TMP_DIR/small.jsonl"
    head -n "$LARGE" "$TMP_DIR/records.jsonl" >"$TMP_DIR/large.jsonl"
    rm "$TMP_DIR/all.jsonl"
    local bytes
    bytes="$(stat -c %s "$TMP_DIR/records.jsonl")"

    describe_machine >>"$RESULTS"
    echo "replay.sh: replaying $RECORDS records, batch $BATCH" >&2
    local wall user sys rss
    bench_replay "$TMP_DIR/records.jsonl" "$TMP_DIR" "$BATCH" >"$TMP_DIR/times.txt"
    read -r wall user sys rss <"$TMP_DIR/times.txt"
    echo "replay.sh: summary $(cat "$TMP_DIR/summary.json")" >&2

    echo "replay.sh: callgrind on $SMALL and $LARGE records" >&2
    local small_ir large_ir
    small_ir="$(callgrind_instructions "$TMP_DIR/small.jsonl")"
    large_ir="$(callgrind_instructions "$TMP_DIR/large.jsonl")"

    local line
    line="$(awk -v n="$RECORDS" -v b="$BATCH" -v bytes="$bytes" -v w="$wall" \
        -v u="$user" -v s="$sys" -v rss="$rss" -v si="$small_ir" \
        -v li="$large_ir" -v sn="$SMALL" -v ln="$LARGE" 'BEGIN {
        printf "{\"bench\":\"replay\",\"records\":%d,\"batch\":%d,", n, b
        printf "\"input_bytes\":%d,\"wall_s\":%.2f,\"cpu_s\":%.2f,", bytes, w, u + s
        printf "\"records_per_wall_s\":%.0f,\"records_per_cpu_s\":%.0f,", n / w, n / (u + s)
        printf "\"peak_rss_kb\":%d,\"instructions_per_record\":%.0f}", rss, (li - si) / (ln - sn)
    }')"
    echo "$line" >>"$RESULTS"
    printf '%10s %8s %8s %12s %12s %8s %12s\n' records wall_s cpu_s rec/wall_s \
        rec/cpu_s rss_MiB instr/rec
    printf '%10s %8s %8s %12s %12s %8s %12s\n' "$RECORDS" \
        "$(json_number "$line" wall_s)" "$(json_number "$line" cpu_s)" \
        "$(json_number "$line" records_per_wall_s)" \
        "$(json_number "$line" records_per_cpu_s)" \
        "$(($(json_number "$line" peak_rss_kb) / 1024))" \
        "$(json_number "$line" instructions_per_record)"
    echo "replay.sh: results in $RESULTS" >&2
}

main "$@"
