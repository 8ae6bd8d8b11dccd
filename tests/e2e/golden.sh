#!/usr/bin/env bash
# The golden race: tests/data/golden/race.jsonl, a seeded recording with
# duplicates, malformed, late and skewed records over 3 shards, replayed
# at --batch-size 1 and 10000. Both publish files, in the form of
# tools/golden-summary.sh (each topic with its message count and last
# message), must equal tests/data/golden/expected.txt byte for byte.
# The comment of tools/make-golden.sh explains when regenerating the two
# files is right.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

GOLDEN_DIR="$E2E_SOURCE_DIR/tests/data/golden"

main() {
    e2e_init e2e_golden
    local size status
    for size in 1 10000; do
        status=0
        "$PODIUM_BIN" replay --batch-size "$size" --progress never \
            --set "store.path=$E2E_DIR/batch-$size.db" --set publish.transport=file \
            --set "publish.file=$E2E_DIR/batch-$size.jsonl" "$GOLDEN_DIR/race.jsonl" \
            >"$E2E_DIR/batch-$size.out" 2>"$E2E_DIR/batch-$size.log" || status=$?
        [[ $status -eq 0 ]] ||
            e2e_fail "podium replay --batch-size $size exited $status: see $E2E_DIR/batch-$size.log"
        bash "$E2E_SOURCE_DIR/tools/golden-summary.sh" "$E2E_DIR/batch-$size.jsonl" \
            >"$E2E_DIR/batch-$size.txt" ||
            e2e_fail "could not summarize $E2E_DIR/batch-$size.jsonl"
        if ! cmp "$GOLDEN_DIR/expected.txt" "$E2E_DIR/batch-$size.txt"; then
            diff <(cut -c1-200 "$GOLDEN_DIR/expected.txt") <(cut -c1-200 "$E2E_DIR/batch-$size.txt") >&2 || true
            e2e_fail "--batch-size $size published other messages than tests/data/golden/expected.txt (first 200 bytes of each line above); see tools/make-golden.sh before regenerating it"
        fi
        e2e_log "--batch-size $size publishes the golden messages: $(cat "$E2E_DIR/batch-$size.out")"
    done
    e2e_log "passed"
}

main "$@"
