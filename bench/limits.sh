#!/usr/bin/env bash
# Measure how fast this machine can read and parse a recording at all, next
# to the whole pipeline of `podium replay` on the same file.
#
# Builds podium, split_bench and parse_bench (Release) and writes the
# recording of bench/peer.sh with `podium simulate --out`. Then measures, on
# that one file while it is in the page cache:
#   - podium replay into a new store (the pipeline, once);
#   - split_bench: read(2) in 1 MiB blocks and count newlines;
#   - wc -l, for reference;
#   - parse_bench --parser sjson, jansson and mixed: each line parsed as
#     JSON, its base64 Data decoded and the payload parsed as JSON. sjson
#     is what podium replay uses, and mixed (jansson, then sjson for the
#     payload) what podium run uses on GetRecords replies.
# Each limit runs LIMITS_BENCH_RUNS times and the run with the median
# records per second is reported. The table gives each limit's records per
# wall-clock second and how many times faster it is than the pipeline.
#
# Writes a line describing the machine and one line per run to
# bench/results/limits-DATE.jsonl.
#
# Environment:
#   LIMITS_BENCH_SECONDS     race seconds simulated, default 980 (about
#                            1,000,000 records)
#   LIMITS_BENCH_DUPLICATES  fraction of records put twice, default 0.02
#   LIMITS_BENCH_RUNS        runs of each limit, default 3
#   LIMITS_BENCH_BATCH       podium replay --batch-size, default 10000
#   LIMITS_BENCH_RESULTS     results file
#   BENCH_BUILD_DIR          build folder, default build-bench
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BENCH_BUILD_DIR:-$REPO_DIR/build-bench}"
RACE_SECONDS="${LIMITS_BENCH_SECONDS:-980}"
DUPLICATES="${LIMITS_BENCH_DUPLICATES:-0.02}"
RUNS="${LIMITS_BENCH_RUNS:-3}"
BATCH="${LIMITS_BENCH_BATCH:-10000}"
RESULTS="${LIMITS_BENCH_RESULTS:-$REPO_DIR/bench/results/limits-$(date -u +%Y-%m-%d).jsonl}"
# The recording (about 460 bytes a record) and podium's store and WAL.
MIN_FREE_GB=4

source "$REPO_DIR/bench/lib.sh"

TMP_DIR=""

cleanup() {
    [[ -z "$TMP_DIR" ]] || rm -rf "$TMP_DIR"
}

# Time `wc -l FILE` and print a JSON line like split_bench's.
wc_lines() {
    local file="$1" start end lines
    start="$(date +%s%N)"
    lines="$(wc -l <"$file")"
    end="$(date +%s%N)"
    awk -v n="$lines" -v ns="$((end - start))" 'BEGIN {
        printf "{\"bench\":\"wc\",\"lines\":%d,\"wall_s\":%.4f,", n, ns / 1e9
        printf "\"records_per_wall_s\":%.0f}\n", n / (ns / 1e9)
    }'
}

# Run COMMAND... RUNS times, append each JSON line to RESULTS and print the
# line with the median records_per_wall_s.
median_run() {
    local i line lines=()
    for ((i = 0; i < RUNS; i++)); do
        line="$("$@")"
        echo "$line" >>"$RESULTS"
        lines+=("$(json_number "$line" records_per_wall_s) $line")
    done
    printf '%s\n' "${lines[@]}" | sort -n | sed -n "$(((RUNS + 1) / 2))p" |
        cut -d' ' -f2-
}

print_row() {
    local name="$1" rate="$2" pipeline="$3"
    printf '%-34s %12s %10s\n' "$name" "$rate" \
        "$(awk -v a="$rate" -v b="$pipeline" 'BEGIN { printf "%.1f", a / b }')"
}

main() {
    bash "$REPO_DIR/tools/deps.sh"
    install_apt_packages time
    build_podium split_bench parse_bench
    mkdir -p "$(dirname "$RESULTS")"
    check_free_space "$BUILD_DIR"
    TMP_DIR="$(mktemp -d "$BUILD_DIR/limits-bench.XXXXXX")"
    trap cleanup EXIT

    echo "limits.sh: simulating $RACE_SECONDS s of $BENCH_RACERS riders," \
        "duplicates $DUPLICATES" >&2
    local file="$TMP_DIR/records.jsonl" records
    records="$(json_number "$(simulate_recording "$file" "$RACE_SECONDS" \
        "$DUPLICATES")" records)"

    describe_machine >>"$RESULTS"
    echo "limits.sh: podium replay of $records records, batch $BATCH" >&2
    local wall user sys rss pipeline_line
    bench_replay "$file" "$TMP_DIR" "$BATCH" >"$TMP_DIR/times.txt"
    read -r wall user sys rss <"$TMP_DIR/times.txt"
    pipeline_line="$(awk -v n="$records" -v b="$BATCH" -v w="$wall" \
        -v u="$user" -v s="$sys" -v rss="$rss" 'BEGIN {
        printf "{\"bench\":\"podium_replay\",\"records\":%d,\"batch\":%d,", n, b
        printf "\"wall_s\":%.2f,\"cpu_s\":%.2f,", w, u + s
        printf "\"records_per_wall_s\":%.0f,\"records_per_cpu_s\":%.0f,", n / w, n / (u + s)
        printf "\"peak_rss_kb\":%d}", rss
    }')"
    echo "$pipeline_line" >>"$RESULTS"

    echo "limits.sh: split_bench, wc -l and parse_bench, $RUNS runs each" >&2
    local split wc sjson jansson mixed
    split="$(median_run "$BUILD_DIR/bench/split_bench" "$file")"
    wc="$(median_run wc_lines "$file")"
    sjson="$(median_run "$BUILD_DIR/bench/parse_bench" --parser sjson "$file")"
    jansson="$(median_run "$BUILD_DIR/bench/parse_bench" --parser jansson "$file")"
    mixed="$(median_run "$BUILD_DIR/bench/parse_bench" --parser mixed "$file")"

    local pipeline
    pipeline="$(json_number "$pipeline_line" records_per_wall_s)"
    printf '%-34s %12s %10s\n' "$records records" rec/wall_s limit/replay
    print_row "podium replay (whole pipeline)" "$pipeline" "$pipeline"
    print_row "split_bench (read + newlines)" \
        "$(json_number "$split" records_per_wall_s)" "$pipeline"
    print_row "wc -l" "$(json_number "$wc" records_per_wall_s)" "$pipeline"
    print_row "parse_bench sjson (as replay)" \
        "$(json_number "$sjson" records_per_wall_s)" "$pipeline"
    print_row "parse_bench jansson" \
        "$(json_number "$jansson" records_per_wall_s)" "$pipeline"
    print_row "parse_bench mixed (as run)" \
        "$(json_number "$mixed" records_per_wall_s)" "$pipeline"
    echo "limits.sh: results in $RESULTS" >&2
}

main "$@"
