#!/usr/bin/env bash
# Build idem_bench (RelWithDebInfo, in build-bench-idem) and measure the
# cost per record of the idempotency table at 1, 10 and 50 million rows
# with the cache off. The first size (1 million rows) runs again with a
# cache of 1024 entries, and again with --deferred: new records claimed
# with idem_claim_deferred(), whose rows are written completed, many to
# one INSERT, as the pipeline writes them. Prints a table of this run and
# appends the JSON lines to bench/results/idem-DATE.jsonl: a line
# describing the machine, then one line per run.
#
# The databases go to a temporary folder inside build-bench-idem, on the
# same file system as the repository, and are removed on exit. The 50 million
# row database takes about 10 GB, so the script rejects a file system with
# less than 20 GB free. The whole run took about 6 minutes on the machine
# described in docs/BENCHMARKS.md, most of it in the 50 million row prefill.
#
# Environment (for a quick trial run):
#   IDEM_BENCH_PREFILLS  prefill sizes, default "1000000 10000000 50000000"
#   IDEM_BENCH_MEASURE   new records measured per run, default 200000
#   IDEM_BENCH_RESULTS   results file, default bench/results/idem-DATE.jsonl
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Not build-bench, whose Release build the other scripts use.
BUILD_DIR="$REPO_DIR/build-bench-idem"
PREFILLS="${IDEM_BENCH_PREFILLS:-1000000 10000000 50000000}"
MEASURE="${IDEM_BENCH_MEASURE:-200000}"
BATCH=1000
CACHE_ENTRIES=1024
CACHED_PREFILL="${PREFILLS%% *}"
DEFAULT_RESULTS="$REPO_DIR/bench/results/idem-$(date -u +%Y-%m-%d).jsonl"
RESULTS="${IDEM_BENCH_RESULTS:-$DEFAULT_RESULTS}"
MIN_FREE_GB=20
RUN_TIMEOUT_S=7200

source "$REPO_DIR/bench/lib.sh"

build() {
    cmake -S "$REPO_DIR" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DPODIUM_WERROR=ON >/dev/null
    cmake --build "$BUILD_DIR" --target idem_bench -j2
}

# Run idem_bench once on a new database and append its JSON line to
# RESULTS.
# run_one PREFILL CACHE [--deferred]
run_one() {
    local prefill="$1" cache="$2" db="$TMP_DIR/idem-$1-$2.db" line
    shift 2
    echo "run.sh: prefill $prefill rows, measure $MEASURE, batch $BATCH," \
        "cache $cache $* ($(date -u +%H:%M:%S) UTC)" >&2
    line="$(timeout "$RUN_TIMEOUT_S" "$BUILD_DIR/bench/idem_bench" \
        --db "$db" --prefill "$prefill" --measure "$MEASURE" \
        --batch "$BATCH" --cache "$cache" "$@")"
    rm -f "$db" "$db-wal" "$db-shm"
    echo "$line" >>"$RESULTS"
}

# print_table FIRST: the table of the runs from line FIRST of RESULTS on.
print_table() {
    local line
    printf '%10s %6s %8s %10s %10s %10s %10s %10s %8s %10s\n' rows cache \
        deferred ns/record ns/dup ns/expire bytes/rec idx_B/row rebuild_s rss_MiB
    while read -r line; do
        [[ "$line" == '{"bench"'* ]] || continue
        printf '%10s %6s %8s %10s %10s %10s %10s %10s %8s %10s\n' \
            "$(json_number "$line" rows_before)" \
            "$(json_number "$line" cache)" \
            "$(json_literal "$line" deferred)" \
            "$(json_number "$line" new_ns_per_record)" \
            "$(json_number "$line" dup_ns_per_lookup)" \
            "$(json_number "$line" expire_ns_per_row)" \
            "$(json_number "$line" write_bytes_per_record)" \
            "$(json_number "$line" index_bytes_per_row)" \
            "$(json_number "$line" rebuild_s)" \
            "$(( $(json_number "$line" peak_rss_kb) / 1024 ))"
    done < <(tail -n "+$1" "$RESULTS")
}

main() {
    local prefill
    build
    mkdir -p "$(dirname "$RESULTS")"
    check_free_space "$BUILD_DIR"
    TMP_DIR="$(mktemp -d "$BUILD_DIR/idem-bench.XXXXXX")"
    trap 'rm -rf "$TMP_DIR"' EXIT

    # Append, as the other scripts do, so that earlier runs of the day
    # stay; the table shows this run's lines only.
    local first=1
    [[ ! -f "$RESULTS" ]] || first=$(($(wc -l <"$RESULTS") + 1))
    describe_machine >>"$RESULTS"
    for prefill in $PREFILLS; do
        run_one "$prefill" 0
    done
    run_one "$CACHED_PREFILL" "$CACHE_ENTRIES"
    run_one "$CACHED_PREFILL" 0 --deferred
    print_table "$first"
    echo "run.sh: results in $RESULTS" >&2
}

main "$@"
