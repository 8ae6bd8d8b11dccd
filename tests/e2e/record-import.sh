#!/usr/bin/env bash
# podium record --import: aws kinesis get-records output to a recording.
#
# The fixtures in tests/data are two GetRecords pages of one kinesalite
# shard, printed the way AWS CLI v1 prints them, with
# ApproximateArrivalTimestamp as epoch seconds. They are printed again the
# way AWS CLI v2 does, as ISO 8601 text, the second page with the offset
# -08:00. The pages contain a JSON record, binary
# data with a non-ASCII partition key, a KPL aggregate of three user
# records, and an EncryptionType member. Checks:
# 1. Both forms convert to tests/data/get-records-expected.jsonl, line for
#    line. That file is what podium record wrote when it read the same
#    shard from kinesalite.
# 2. podium replay reads the converted recording and splits the aggregate.
# 3. Each kind of bad input exits 1 with the file, the record index and
#    the problem, and writes nothing. Records of one file with the same
#    problem are reported once, with a count. Under --on-bad-record skip
#    the bad records are counted and the good ones written.
# 4. Pages out of order or given twice fail the import with one message
#    per page, also under --on-bad-record skip, which never suggests
#    skipping, and nothing is written.
# 5. Usage errors exit 2.
# No peer is needed.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DATA_DIR="$E2E_SOURCE_DIR/tests/data"
EXPECTED="$DATA_DIR/get-records-expected.jsonl"
SHARD=shardId-000000000000
CLI1_PAGES=("$DATA_DIR/get-records-cli1-page1.json" "$DATA_DIR/get-records-cli1-page2.json")
CLI2_PAGES=("$DATA_DIR/get-records-cli2-page1.json" "$DATA_DIR/get-records-cli2-page2.json")

# run_import NAME ARGS...: podium record --import --out E2E_DIR/NAME.jsonl with
# stderr in E2E_DIR/NAME.log. Returns podium's exit status.
run_import() {
    local name="$1"
    shift
    "$PODIUM_BIN" record --import --out "$E2E_DIR/$name.jsonl" "$@" \
        2>"$E2E_DIR/$name.log"
}

# expect_import WANT NAME ARGS...: import and fail unless it exits WANT.
expect_import() {
    local want="$1" name="$2" status=0
    shift 2
    run_import "$name" "$@" || status=$?
    [[ $status -eq $want ]] ||
        e2e_fail "podium record --import ($name) exited $status, expected $want: $(cat "$E2E_DIR/$name.log")"
}

# expect_message NAME TEXT: fail unless the stderr of NAME contains TEXT.
expect_message() {
    local name="$1" text="$2"
    grep -qF -- "$text" "$E2E_DIR/$name.log" ||
        e2e_fail "podium record --import ($name) did not report: $text
it wrote: $(cat "$E2E_DIR/$name.log")"
}

# summary_field NAME FIELD: a value of the JSON summary line in NAME.log.
summary_field() {
    node -e '
        const lines = require("fs").readFileSync(process.argv[1], "utf8").split("\n");
        const summary = lines.filter((l) => l.startsWith("{")).map(JSON.parse).at(-1);
        console.log(summary[process.argv[2]]);
    ' "$E2E_DIR/$1.log" "$2"
}

# bad_page NAME SCRIPT: write E2E_DIR/NAME.json, the CLI v2 first page after
# the JavaScript SCRIPT changed the parsed document `doc`.
bad_page() {
    local name="$1" script="$2"
    node -e '
        const fs = require("fs");
        const doc = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
        eval(process.argv[2]);
        fs.writeFileSync(process.argv[3], JSON.stringify(doc, null, 4) + "\n");
    ' "${CLI2_PAGES[0]}" "$script" "$E2E_DIR/$name.json"
}

# expect_bad_record NAME SCRIPT MESSAGE: the changed page fails the import
# with MESSAGE, and nothing is written.
expect_bad_record() {
    local name="$1" script="$2" message="$3"
    bad_page "$name" "$script"
    expect_import 1 "$name" --shard-id "$SHARD" "$E2E_DIR/$name.json" "${CLI2_PAGES[1]}"
    expect_message "$name" "$message"
    expect_message "$name" "nothing was written; fix the record or pass --on-bad-record skip"
    [[ ! -e "$E2E_DIR/$name.jsonl" ]] ||
        e2e_fail "podium record --import ($name) wrote $E2E_DIR/$name.jsonl although a record was bad"
}

check_conversion() {
    local name
    expect_import 0 cli1 --shard-id "$SHARD" "${CLI1_PAGES[@]}"
    expect_import 0 cli2 --shard-id "$SHARD" "${CLI2_PAGES[@]}"
    for name in cli1 cli2; do
        diff -u "$EXPECTED" "$E2E_DIR/$name.jsonl" ||
            e2e_fail "the $name pages did not convert to $EXPECTED: see the differences above"
        [[ "$(summary_field "$name" records)" == 4 && "$(summary_field "$name" bad_records)" == 0 ]] ||
            e2e_fail "the summary of $name does not count 4 records and 0 bad ones: $(cat "$E2E_DIR/$name.log")"
    done

    # Standard output, and the pages of CLI v1 and v2 mixed.
    "$PODIUM_BIN" record --import --shard-id "$SHARD" --out - \
        "${CLI2_PAGES[0]}" "${CLI1_PAGES[1]}" >"$E2E_DIR/stdout.jsonl" 2>"$E2E_DIR/stdout.log" ||
        e2e_fail "podium record --import --out - failed: $(cat "$E2E_DIR/stdout.log")"
    cmp "$EXPECTED" "$E2E_DIR/stdout.jsonl" ||
        e2e_fail "podium record --import --out - wrote other bytes than $EXPECTED"
    e2e_log "get-records output of AWS CLI v1 and v2 converts to the expected recording"
}

check_replay() {
    local status=0
    "$PODIUM_BIN" replay --set "store.path=$E2E_DIR/replay.db" \
        --set publish.transport=file --set "publish.file=$E2E_DIR/replay-publish.jsonl" \
        "$E2E_DIR/cli2.jsonl" >"$E2E_DIR/replay.out" 2>"$E2E_DIR/replay.log" || status=$?
    [[ $status -eq 0 ]] || e2e_fail "podium replay of the converted recording exited $status: see $E2E_DIR/replay.log"
    local counts
    counts="$(node -e 'const s = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); console.log(`${s.lines} ${s.bad_lines} ${s.kinesis_records} ${s.user_records}`)' "$E2E_DIR/replay.out")"
    # 4 Kinesis records, one of them an aggregate of 3 user records.
    [[ "$counts" == "4 0 4 6" ]] ||
        e2e_fail "podium replay read lines, bad lines, Kinesis records and user records $counts, expected 4 0 4 6: $(cat "$E2E_DIR/replay.out")"
    e2e_log "podium replay reads the converted recording and splits its aggregate"
}

check_bad_documents() {
    printf '{"Records": [\n' >"$E2E_DIR/truncated.json"
    expect_import 1 truncated --shard-id "$SHARD" "$E2E_DIR/truncated.json"
    expect_message truncated "truncated.json: not JSON:"
    expect_message truncated "at line 2, column 1; expected the output of aws kinesis get-records"

    printf '{"records": []}\n' >"$E2E_DIR/lowercase.json"
    expect_import 1 lowercase --shard-id "$SHARD" "$E2E_DIR/lowercase.json"
    expect_message lowercase "lowercase.json: no Records array at the top level (got an object)"

    printf '{"Records": {"SequenceNumber": "1"}}\n' >"$E2E_DIR/object.json"
    expect_import 1 object --shard-id "$SHARD" "$E2E_DIR/object.json"
    expect_message object "object.json: no Records array at the top level (got an object)"

    # A bad document fails also under skip: skipping covers records only.
    expect_import 1 truncated-skip --shard-id "$SHARD" --on-bad-record skip \
        "${CLI2_PAGES[0]}" "$E2E_DIR/truncated.json"
    expect_message truncated-skip "nothing was written to $E2E_DIR/truncated-skip.jsonl"
    [[ ! -e "$E2E_DIR/truncated-skip.jsonl" ]] ||
        e2e_fail "a file that is not JSON still produced a recording under --on-bad-record skip"

    # An empty page is valid: get-records often returns no records.
    printf '{"Records": [], "NextShardIterator": "AAAA", "MillisBehindLatest": 0}\n' >"$E2E_DIR/empty.json"
    expect_import 0 empty --shard-id "$SHARD" "$E2E_DIR/empty.json"
    [[ -e "$E2E_DIR/empty.jsonl" && ! -s "$E2E_DIR/empty.jsonl" ]] ||
        e2e_fail "an empty page did not give an empty recording"
    e2e_log "bad documents are reported with the file and, for JSON errors, line and column"
}

check_bad_records() {
    expect_bad_record no-seq 'delete doc.Records[1].SequenceNumber' \
        "no-seq.json: Records[1]: SequenceNumber is missing"
    expect_bad_record number-seq 'doc.Records[0].SequenceNumber = 4968' \
        "number-seq.json: Records[0]: SequenceNumber must be a string of up to 129 decimal digits, got 4968"
    expect_bad_record no-arrival 'delete doc.Records[2].ApproximateArrivalTimestamp' \
        "no-arrival.json: Records[2]: ApproximateArrivalTimestamp is missing"
    expect_bad_record bad-date 'doc.Records[0].ApproximateArrivalTimestamp = "2026-02-30T00:40:25.243000+00:00"' \
        'bad-date.json: Records[0]: ApproximateArrivalTimestamp "2026-02-30T00:40:25.243000+00:00" is not a valid calendar date and time'
    expect_bad_record no-offset 'doc.Records[1].ApproximateArrivalTimestamp = "2026-12-05T00:40:25.245000"' \
        'no-offset.json: Records[1]: ApproximateArrivalTimestamp "2026-12-05T00:40:25.245000" has no UTC offset'
    expect_bad_record micro 'doc.Records[1].ApproximateArrivalTimestamp = "2026-12-05T00:40:25.245001+00:00"' \
        "has digits below the millisecond, but Kinesis arrival times have millisecond precision"
    expect_bad_record bool-arrival 'doc.Records[1].ApproximateArrivalTimestamp = true' \
        "bool-arrival.json: Records[1]: ApproximateArrivalTimestamp true must be ISO 8601 text or a number of seconds since the epoch"
    expect_bad_record negative 'doc.Records[1].ApproximateArrivalTimestamp = -5' \
        "negative.json: Records[1]: ApproximateArrivalTimestamp -5 is before 1970-01-01"
    expect_bad_record bad-base64 'doc.Records[2].Data = "84mawgoC*zEK"' \
        'bad-base64.json: Records[2]: Data is not valid base64 (standard alphabet, with padding): "84mawgoC*zEK"'
    expect_bad_record no-data 'delete doc.Records[0].Data' \
        "no-data.json: Records[0]: Data is missing"
    expect_bad_record no-key 'delete doc.Records[0].PartitionKey' \
        "no-key.json: Records[0]: PartitionKey is missing"
    expect_bad_record empty-key 'doc.Records[0].PartitionKey = ""' \
        'empty-key.json: Records[0]: PartitionKey must be a string of 1 to 1024 bytes without U+0000, got ""'
    expect_bad_record not-object 'doc.Records[1] = "record"' \
        'not-object.json: Records[1]: expected a JSON object, got "record"'
    # Three records with the same problem: one line with a count.
    bad_page no-data-all 'for (const r of doc.Records) delete r.Data'
    expect_import 1 no-data-all --shard-id "$SHARD" "$E2E_DIR/no-data-all.json"
    expect_message no-data-all "no-data-all.json: Records[0] and 2 more records: Data is missing; nothing was written; fix the records or pass --on-bad-record skip"
    [[ "$(grep -c 'Data is missing' "$E2E_DIR/no-data-all.log")" == 1 ]] ||
        e2e_fail "three records without Data were not reported in one line: $(cat "$E2E_DIR/no-data-all.log")"
    e2e_log "each kind of bad record is reported with its file and index, and nothing is written"
}

# expect_order_failure NAME MESSAGE ARGS...: the import exits 1 under both
# modes with MESSAGE in one line, never suggests skip, and writes nothing.
# MESSAGE is the start of the line; the line must end with what to do.
expect_order_failure() {
    local name="$1" message="$2" mode
    shift 2
    for mode in fail skip; do
        expect_import 1 "$name-$mode" --shard-id "$SHARD" --on-bad-record "$mode" "$@"
        expect_message "$name-$mode" "$message"
        [[ "$(grep -c 'is not after' "$E2E_DIR/$name-$mode.log")" == 1 ]] ||
            e2e_fail "podium record --import ($name-$mode) did not report the order in one line: $(cat "$E2E_DIR/$name-$mode.log")"
        ! grep -q -- "--on-bad-record skip" "$E2E_DIR/$name-$mode.log" ||
            e2e_fail "podium record --import ($name-$mode) suggested --on-bad-record skip for pages out of order: $(cat "$E2E_DIR/$name-$mode.log")"
        [[ ! -e "$E2E_DIR/$name-$mode.jsonl" ]] ||
            e2e_fail "podium record --import ($name-$mode) wrote a recording although pages were out of order"
    done
}

check_page_order() {
    local first_seq=49680845386884555466420232698140796803033244228453924866
    expect_order_failure swapped-pages \
        "get-records-cli2-page1.json: Records[0]: SequenceNumber $first_seq is not after 49680845386884555466420232698144423580492088390855950338 of ${CLI2_PAGES[1]} Records[0], nor are 2 later records; the pages are out of order or one is given twice; give the pages of one shard in the order they were read, each once" \
        "${CLI2_PAGES[1]}" "${CLI2_PAGES[0]}"
    expect_order_failure page-twice \
        "get-records-cli2-page1.json: Records[0]: SequenceNumber $first_seq is not after 49680845386884555466420232698143214654672473486803337218 of ${CLI2_PAGES[0]} Records[2], nor are 2 later records; the pages are out of order or one is given twice; give the pages of one shard in the order they were read, each once" \
        "${CLI2_PAGES[0]}" "${CLI2_PAGES[0]}"
    bad_page swapped 'doc.Records.reverse()'
    expect_order_failure swapped-records \
        "swapped.json: Records[1]: SequenceNumber 49680845386884555466420232698142005728852858857628631042 is not after 49680845386884555466420232698143214654672473486803337218 of $E2E_DIR/swapped.json Records[0], nor is 1 later record; the records of this page are out of order or repeated, which get-records never returns; give the page as aws kinesis get-records printed it" \
        "$E2E_DIR/swapped.json"
    e2e_log "pages out of order or given twice fail the import once per page, also under skip"
}

check_skip() {
    bad_page two-bad 'doc.Records[0].Data = "!"; delete doc.Records[2].PartitionKey'
    expect_import 0 skip --shard-id "$SHARD" --on-bad-record skip \
        "$E2E_DIR/two-bad.json" "${CLI2_PAGES[1]}"
    expect_message skip "two-bad.json: Records[0]: Data is not valid base64 (standard alphabet, with padding): \"!\"; record skipped"
    expect_message skip "two-bad.json: Records[2]: PartitionKey is missing; record skipped"
    expect_message skip "skipped 2 bad records"
    [[ "$(summary_field skip records)" == 2 && "$(summary_field skip bad_records)" == 2 ]] ||
        e2e_fail "the summary under skip does not count 2 records and 2 bad ones: $(cat "$E2E_DIR/skip.log")"
    sed -n '2p;4p' "$EXPECTED" | cmp - "$E2E_DIR/skip.jsonl" ||
        e2e_fail "under --on-bad-record skip the good records were not written as expected: $(cat "$E2E_DIR/skip.jsonl")"
    e2e_log "--on-bad-record skip writes the good records and counts the bad ones"
}

check_usage() {
    expect_import 2 no-shard "${CLI2_PAGES[@]}"
    expect_message no-shard "--import needs --shard-id ID"
    expect_import 2 no-files --shard-id "$SHARD"
    expect_message no-files "--import needs at least one file"
    expect_import 2 missing --shard-id "$SHARD" "${CLI2_PAGES[0]}" "$E2E_DIR/no-such-page.json"
    expect_message missing "cannot read $E2E_DIR/no-such-page.json"
    expect_import 2 with-idle --shard-id "$SHARD" --until-idle 5 "${CLI2_PAGES[@]}"
    expect_message with-idle "--until-idle does not apply to --import"
    expect_import 2 bad-mode --shard-id "$SHARD" --on-bad-record maybe "${CLI2_PAGES[@]}"
    expect_message bad-mode 'invalid --on-bad-record "maybe": expected fail or skip'
    local status=0
    "$PODIUM_BIN" record --import --shard-id "$SHARD" "${CLI2_PAGES[@]}" 2>"$E2E_DIR/no-out.log" || status=$?
    [[ $status -eq 2 ]] && grep -qF -- "--out FILE is missing" "$E2E_DIR/no-out.log" ||
        e2e_fail "podium record --import without --out exited $status: $(cat "$E2E_DIR/no-out.log")"
    status=0
    "$PODIUM_BIN" record --out "$E2E_DIR/x.jsonl" "${CLI2_PAGES[0]}" 2>"$E2E_DIR/files-live.log" || status=$?
    [[ $status -eq 2 ]] && grep -qF "only goes with --import" "$E2E_DIR/files-live.log" ||
        e2e_fail "podium record with a file but without --import exited $status: $(cat "$E2E_DIR/files-live.log")"
    e2e_log "usage errors exit 2 with the reason"
}

main() {
    e2e_init e2e_record_import
    check_conversion
    check_replay
    check_bad_documents
    check_bad_records
    check_page_order
    check_skip
    check_usage
    e2e_log "passed"
}

main "$@"
