#!/usr/bin/env bash
# Regenerate the golden race in tests/data/golden/: race.jsonl, a seeded
# recording of `podium simulate --out`, and expected.txt, what
# `podium replay` of it publishes in the form of tools/golden-summary.sh.
# The test e2e_golden replays race.jsonl and compares with expected.txt.
#
# Regenerating is right only when a change is meant to alter these bytes:
# the simulator's output for a seed, or what podium publishes (message
# fields, ranking, rounding, late or quarantine rules, defaults of race.*
# settings). Read `git diff tests/data/golden/expected.txt` before
# committing it and say in the commit why the messages changed. Never
# regenerate just to make e2e_golden pass.
#
#   PODIUM_BIN=build/daemon/podium bash tools/make-golden.sh
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GOLDEN_DIR="$REPO_DIR/tests/data/golden"
PODIUM_BIN="${PODIUM_BIN:-$REPO_DIR/build/daemon/podium}"

[[ -x "$PODIUM_BIN" ]] ||
    { echo "make-golden: $PODIUM_BIN is not an executable file: build podium or set PODIUM_BIN" >&2; exit 2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/podium-golden.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# 80 riders in 3 classes (3 races) for 60 seconds over 3 shards, with 3%
# duplicates, 1% malformed, 1% late records and 5% of the riders with a
# device clock that is off.
"$PODIUM_BIN" simulate --out "$GOLDEN_DIR/race.jsonl" --racers 80 --seconds 60 \
    --classes 3 --shards 3 --seed 2024 --start-ms 1700000000000 \
    --duplicates 0.03 --malformed 0.01 --late 0.01 --skew 0.05 >"$work/simulate.json"
echo "make-golden: simulate summary $(cat "$work/simulate.json")"
"$PODIUM_BIN" replay --progress never --set "store.path=$work/golden.db" \
    --set publish.transport=file --set "publish.file=$work/published.jsonl" \
    "$GOLDEN_DIR/race.jsonl" >"$work/summary.json" 2>"$work/replay.log" ||
    { tail -n 20 "$work/replay.log" >&2; echo "make-golden: podium replay failed" >&2; exit 1; }
bash "$REPO_DIR/tools/golden-summary.sh" "$work/published.jsonl" >"$GOLDEN_DIR/expected.txt"
echo "make-golden: replay summary $(cat "$work/summary.json")"
echo "make-golden: wrote $GOLDEN_DIR/race.jsonl and $GOLDEN_DIR/expected.txt ($(wc -l <"$GOLDEN_DIR/expected.txt") topics)"
