#!/usr/bin/env bash
# podium replay: how it reports bad lines, what it accepts as input, and
# where its summary goes. The recordings are made from the golden race of
# tests/data/golden. No peer is needed. Checks:
# 1. Under --on-bad-line fail every bad line of every file is found before
#    the replay fails: the first 20 are reported as FILE:LINE with the
#    reason, then a count of the rest and of all, and nothing is applied.
# 2. A UTF-8 byte order mark is reported by name; lines of only white
#    space, such as an empty last line, are ignored.
# 3. Within one file, a line of a shard whose SequenceNumber (and
#    SubSequenceNumber) is not after the shard's line before it is a bad
#    line, reported with FILE:LINE. Two copies of a recording in one file
#    fail. Under skip they publish what one copy publishes. A
#    SequenceNumber that is empty, not all digits, contains U+0000 or has
#    more than 128 digits, and an arrival time before the epoch or after
#    9999, make bad lines too. Lines with more members than replay
#    reads without a JSON document are checked and replayed like others.
#    A field whose member name differs only in case is missing.
# 4. --speed below 0.001 is rejected with the accepted range.
# 5. With publish.transport=file and publish.file=- the messages alone are
#    on standard output and the summary is on standard error.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

GOLDEN="$E2E_SOURCE_DIR/tests/data/golden/race.jsonl"

# replay NAME ARGS...: podium replay into the store E2E_DIR/NAME.db, writing
# E2E_DIR/NAME.jsonl; stdout to E2E_DIR/NAME.out, stderr to E2E_DIR/NAME.log.
# Returns podium's exit status. Recordings are named *-recording.jsonl, so
# that no publish file is one of them.
replay() {
    local name="$1"
    shift
    "$PODIUM_BIN" replay --set "store.path=$E2E_DIR/$name.db" \
        --set publish.transport=file \
        --set "publish.file=$E2E_DIR/$name.jsonl" "$@" \
        >"$E2E_DIR/$name.out" 2>"$E2E_DIR/$name.log"
}

# expect_replay WANT NAME ARGS...: replay and fail unless it exits WANT.
expect_replay() {
    local want="$1" name="$2" status=0
    shift 2
    replay "$name" "$@" || status=$?
    [[ $status -eq $want ]] ||
        e2e_fail "podium replay ($name) exited $status, expected $want: $(head -c 3000 "$E2E_DIR/$name.log")"
}

# expect_message NAME TEXT: fail unless the stderr of NAME contains TEXT.
expect_message() {
    grep -qF -- "$2" "$E2E_DIR/$1.log" ||
        e2e_fail "podium replay ($1) did not report: $2
it wrote: $(head -c 3000 "$E2E_DIR/$1.log")"
}

# summary_field NAME FIELD: a field of the summary in E2E_DIR/NAME.out.
summary_field() {
    node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))[process.argv[2]])' \
        "$E2E_DIR/$1.out" "$2"
}

# same_messages NAME OTHER: fail unless both publish files end every topic
# with the same message.
same_messages() {
    diff <(bash "$E2E_SOURCE_DIR/tools/golden-summary.sh" "$E2E_DIR/$1.jsonl") \
        <(bash "$E2E_SOURCE_DIR/tools/golden-summary.sh" "$E2E_DIR/$2.jsonl") ||
        e2e_fail "the replay $2 published other last messages than $1: see the differences above"
}

check_every_bad_line() {
    # 13 bad lines in each file, the last one on the last line.
    local first="$E2E_DIR/bad-1-recording.jsonl" second="$E2E_DIR/bad-2-recording.jsonl" n
    head -n 2000 "$GOLDEN" | awk 'NR % 150 == 0 { print "not json"; next } { print }' >"$first"
    tail -n +2001 "$GOLDEN" | awk 'NR % 230 == 0 || NR == 2938 { print "{\"ShardId\":\"x\"}"; next } { print }' >"$second"
    expect_replay 1 bad-lines "$first" "$second"
    for n in 150 300 1950; do
        expect_message bad-lines "bad-1-recording.jsonl:$n: not JSON"
    done
    expect_message bad-lines "bad-2-recording.jsonl:230: SequenceNumber must be a string"
    expect_message bad-lines "bad-2-recording.jsonl:1610: SequenceNumber must be a string"
    expect_message bad-lines "6 more bad lines were not shown"
    expect_message bad-lines "26 bad lines; nothing was applied; fix them or pass --on-bad-line skip to leave them out"
    [[ "$(grep -c '\.jsonl:[0-9]*: ' "$E2E_DIR/bad-lines.log")" == 20 ]] ||
        e2e_fail "podium replay did not report exactly the first 20 bad lines: $(cat "$E2E_DIR/bad-lines.log")"
    [[ ! -s "$E2E_DIR/bad-lines.jsonl" ]] || e2e_fail "podium replay published although lines were bad"
    [[ ! -e "$E2E_DIR/bad-lines.db" ]] ||
        [[ "$(e2e_sample_count "$E2E_DIR/bad-lines.db")" == 0 ]] ||
        e2e_fail "podium replay applied records although lines were bad"

    expect_replay 0 bad-lines-skip --on-bad-line skip "$first" "$second"
    [[ "$(summary_field bad-lines-skip bad_lines)" == 26 ]] ||
        e2e_fail "--on-bad-line skip did not count 26 bad lines: $(cat "$E2E_DIR/bad-lines-skip.out")"
    expect_message bad-lines-skip "skipped 26 bad lines"
    e2e_log "every bad line is found; the first 20 are reported, then counts"
}

check_bom_and_blank_lines() {
    local bom="$E2E_DIR/bom-recording.jsonl" blank="$E2E_DIR/blank-recording.jsonl"
    {
        printf '\xEF\xBB\xBF'
        cat "$GOLDEN"
    } >"$bom"
    expect_replay 1 bom "$bom"
    expect_message bom "bom-recording.jsonl:1: the file starts with a UTF-8 byte order mark (bytes EF BB BF)"

    expect_replay 0 plain "$GOLDEN"
    {
        head -n 100 "$GOLDEN"
        echo
        printf '  \t\r\n'
        tail -n +101 "$GOLDEN"
        echo
    } >"$blank"
    expect_replay 0 blank "$blank"
    [[ "$(summary_field blank bad_lines)" == 0 ]] ||
        e2e_fail "lines of white space were counted as bad: $(cat "$E2E_DIR/blank.out")"
    [[ ! -s "$E2E_DIR/blank.log" ]] || ! grep -q 'blank-recording.jsonl:' "$E2E_DIR/blank.log" ||
        e2e_fail "lines of white space were reported: $(cat "$E2E_DIR/blank.log")"
    cmp "$E2E_DIR/plain.jsonl" "$E2E_DIR/blank.jsonl" ||
        e2e_fail "a recording with empty lines published other bytes than without them"
    e2e_log "a byte order mark is named; empty lines are ignored"
}

check_sequence_order() {
    local twice="$E2E_DIR/twice-recording.jsonl" lines
    lines="$(wc -l <"$GOLDEN")"
    cat "$GOLDEN" "$GOLDEN" >"$twice"
    expect_replay 1 twice "$twice"
    expect_message twice "twice-recording.jsonl:$((lines + 1)): SequenceNumber"
    expect_message twice "; within one file the lines of a shard must be in sequence order, each record once"
    expect_message twice "$lines bad lines; nothing was applied"

    expect_replay 0 twice-skip --on-bad-line skip "$twice"
    [[ "$(summary_field twice-skip kinesis_records)" == "$lines" ]] ||
        e2e_fail "--on-bad-line skip read other records than one copy: $(cat "$E2E_DIR/twice-skip.out")"
    same_messages plain twice-skip

    # User records of one KPL aggregate share a SequenceNumber and count
    # up their SubSequenceNumber; the same one twice is a bad line.
    local subseq="$E2E_DIR/subseq-recording.jsonl"
    head -n 1 "$GOLDEN" | node -e '
const r = JSON.parse(require("fs").readFileSync(0, "utf8"));
for (const sub of [0, 1, 1]) console.log(JSON.stringify({ ...r, SubSequenceNumber: sub }));
' >"$subseq"
    expect_replay 1 subseq "$subseq"
    expect_message subseq "subseq-recording.jsonl:3: SequenceNumber"
    expect_message subseq "SubSequenceNumber 1 of shard"
    expect_message subseq "is not after SequenceNumber"
    expect_message subseq "SubSequenceNumber 1 on line 2"
    expect_message subseq "1 bad line; nothing was applied"
    e2e_log "sequence numbers that go back or repeat in a shard of one file are bad lines"
}

check_field_forms() {
    # Line 1 is good; lines 2 to 7 are bad; line 8 is good with the longest
    # SequenceNumber allowed.
    local forms="$E2E_DIR/forms-recording.jsonl" n
    head -n 1 "$GOLDEN" | node -e '
const r = JSON.parse(require("fs").readFileSync(0, "utf8"));
const lines = [
  r,
  { ...r, SequenceNumber: "" },
  { ...r, SequenceNumber: "49a1" },
  { ...r, SequenceNumber: "49\u00001" },
  { ...r, SequenceNumber: "9".repeat(129) },
  { ...r, SequenceNumber: "9".repeat(128), ApproximateArrivalTimestamp: -0.001 },
  { ...r, SequenceNumber: "9".repeat(128), ApproximateArrivalTimestamp: 253402300799.001 },
  { ...r, SequenceNumber: "9".repeat(128) },
];
for (const line of lines) console.log(JSON.stringify(line));
' >"$forms"
    expect_replay 1 forms "$forms"
    for n in 2 3 4 5; do
        expect_message forms "forms-recording.jsonl:$n: SequenceNumber must be a string of up to 128 decimal digits"
    done
    for n in 6 7; do
        expect_message forms "forms-recording.jsonl:$n: ApproximateArrivalTimestamp must be a number of seconds since the epoch"
    done
    expect_message forms "6 bad lines; nothing was applied"
    e2e_log "SequenceNumber and ApproximateArrivalTimestamp out of form are bad lines"
}

check_many_members() {
    # Lines with more members than podium replay reads without building a
    # JSON document take the slower path, which must accept and reject the
    # same lines with the same messages. Line 1 is good; line 2 has a bad
    # SequenceNumber and line 3 a repeated member name, each among 20
    # extra members.
    local many="$E2E_DIR/many-recording.jsonl" one="$E2E_DIR/one-recording.jsonl"
    head -n 1 "$GOLDEN" >"$one"
    head -n 1 "$GOLDEN" | node -e '
const r = JSON.parse(require("fs").readFileSync(0, "utf8"));
const extra = {};
for (let i = 0; i < 20; i++) extra["x" + i] = i;
const lines = [
  JSON.stringify({ ...r, ...extra }),
  JSON.stringify({ ...r, ...extra, SequenceNumber: "49a1" }),
  JSON.stringify({ ...r, ...extra }).replace("}", ",\"x3\":0}"),
];
for (const line of lines) console.log(line);
' >"$many"
    expect_replay 1 many "$many"
    expect_message many "many-recording.jsonl:2: SequenceNumber must be a string of up to 128 decimal digits, got \"49a1\""
    expect_message many "many-recording.jsonl:3: not JSON: duplicate object key \"x3\" at byte"
    expect_message many "2 bad lines; nothing was applied"
    [[ ! -s "$E2E_DIR/many.jsonl" ]] ||
        e2e_fail "a replay with bad lines published messages: $(head -c 500 "$E2E_DIR/many.jsonl")"

    expect_replay 0 many-skip --on-bad-line skip "$many"
    expect_replay 0 one "$one"
    cmp "$E2E_DIR/one.jsonl" "$E2E_DIR/many-skip.jsonl" ||
        e2e_fail "a line with 20 extra members published other messages than the same line without them"
    e2e_log "lines with many members are read like lines with few"
}

check_member_names() {
    # Member names match by exact bytes: each field renamed to a name of
    # the same length in another case is missing. Line 1 is good, with a
    # "subSequenceNumber" that is only an extra member; lines 2 to 6 lack
    # one field each.
    local names="$E2E_DIR/names-recording.jsonl"
    head -n 1 "$GOLDEN" | node -e '
const r = JSON.parse(require("fs").readFileSync(0, "utf8"));
const renamed = (from, to) => {
  const out = {};
  for (const [k, v] of Object.entries(r)) out[k === from ? to : k] = v;
  return out;
};
const lines = [
  { ...r, subSequenceNumber: 1 },
  renamed("ShardId", "shardId"),
  renamed("SequenceNumber", "sequenceNumber"),
  renamed("ApproximateArrivalTimestamp", "approximateArrivalTimestamp"),
  renamed("PartitionKey", "partitionKey"),
  renamed("Data", "data"),
];
for (const line of lines) console.log(JSON.stringify(line));
' >"$names"
    expect_replay 1 names "$names"
    expect_message names "names-recording.jsonl:2: ShardId must be a non-empty string without U+0000, got nothing"
    expect_message names "names-recording.jsonl:3: SequenceNumber must be a string of up to 128 decimal digits, got nothing"
    expect_message names "names-recording.jsonl:4: ApproximateArrivalTimestamp must be a number of seconds since the epoch, such as 1620824038.331, got nothing"
    expect_message names "names-recording.jsonl:5: PartitionKey must be a non-empty string without U+0000 of at most 1024 bytes, got nothing"
    expect_message names "names-recording.jsonl:6: Data must be a base64 string, got nothing"
    expect_message names "5 bad lines; nothing was applied"
    e2e_log "fields match by exact member name"
}

check_speed_range() {
    # The file does not exist, so a value wrongly accepted fails on the
    # file instead of replaying for years.
    local speed missing="$E2E_DIR/no-such-recording.jsonl"
    for speed in 1e-9 0.0009 -1 2000000; do
        expect_replay 2 "speed-$speed" --speed "$speed" "$missing"
        expect_message "speed-$speed" "invalid --speed \"$speed\": expected 0 (as fast as possible) or a factor of real time from 0.001 to 1000000"
    done
    # 0.001 passes the option check; the missing file then ends the run.
    expect_replay 2 speed-min --speed 0.001 "$missing"
    expect_message speed-min "cannot read $missing"
    e2e_log "--speed accepts 0 and 0.001 to 1000000"
}

check_messages_on_stdout() {
    "$PODIUM_BIN" replay --set "store.path=$E2E_DIR/stdout.db" --set publish.transport=file \
        "$GOLDEN" >"$E2E_DIR/stdout.out" 2>"$E2E_DIR/stdout.log" ||
        e2e_fail "podium replay with publish.file=- failed: see $E2E_DIR/stdout.log"
    cmp "$E2E_DIR/plain.jsonl" "$E2E_DIR/stdout.out" ||
        e2e_fail "standard output contains more than the messages with publish.file=-: $(grep -v '^{"topic"' "$E2E_DIR/stdout.out" | head -c 500)"
    grep -q '^{"files":1,"lines":' "$E2E_DIR/stdout.log" ||
        e2e_fail "the summary is not on standard error with publish.file=-: $(tail -c 1000 "$E2E_DIR/stdout.log")"
    e2e_log "with publish.file=- the messages alone go to standard output"
}

main() {
    e2e_init e2e_replay_lines
    check_every_bad_line
    check_bom_and_blank_lines
    check_sequence_order
    check_field_forms
    check_many_members
    check_member_names
    check_speed_range
    check_messages_on_stdout
    e2e_log "passed"
}

main "$@"
