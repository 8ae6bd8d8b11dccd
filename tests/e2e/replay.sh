#!/usr/bin/env bash
# podium replay: the same recording always publishes the same bytes, and the
# same messages as podium run reading the recording from a stream.
#
# 1. A seeded `podium simulate --out` recording is replayed into fresh
#    stores with publish.transport=file and batch sizes 1, 37 and 10000,
#    and once more with 37, and at --speed 10: every publish file must be
#    byte for byte the same, and --speed 10 must take a tenth of the
#    recording's span of arrival times. The recording split over two
#    shards must publish the same bytes whether the lines of the shards
#    are interleaved or one shard comes first. A second replay on a used
#    store must apply and publish nothing.
# 2. The recording is put to a kinesalite stream and read by podium run.
#    The checker must accept what run published, and the replay must have
#    published the same messages, byte for byte apart from "ts" (the
#    arrival time, which kinesalite sets anew for each put).
# 3. Bad lines: under --on-bad-line fail the replay exits 1, names
#    file:line and the problem, and applies nothing. Under skip it applies
#    every good line and counts the bad ones. An unreadable file and a bad
#    option exit 2, also after a bad line.
# 4. Three records merged into one KPL aggregate (kpl-tool.mjs) are
#    replayed as three user records: same samples and messages as the
#    plain recording, apart from "ts".
# 5. Without a broker the replay exits 1 after --publish-timeout, and a
#    replay on the same store then publishes the messages left behind.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RACERS=40
SECONDS_PER_RACE=30
CLASSES=3
DETERMINISM_TOOL="$E2E_LIB_DIR/determinism-tool.mjs"
KPL_TOOL="$E2E_LIB_DIR/kpl-tool.mjs"

determinism_tool() {
    node "$DETERMINISM_TOOL" "$@"
}

# replay NAME ARGS...: podium replay into the store E2E_DIR/NAME.db, writing
# E2E_DIR/NAME.jsonl; stdout (the summary) to E2E_DIR/NAME.out, stderr to
# E2E_DIR/NAME.log. Returns podium's exit status.
replay() {
    local name="$1"
    shift
    "$PODIUM_BIN" replay --set "store.path=$E2E_DIR/$name.db" \
        --set publish.transport=file \
        --set "publish.file=$E2E_DIR/$name.jsonl" "$@" \
        >"$E2E_DIR/$name.out" 2>"$E2E_DIR/$name.log"
}

# expect_status WANT DESCRIPTION NAME ARGS...: replay and fail unless it
# exits with WANT.
expect_status() {
    local want="$1" what="$2" status=0
    shift 2
    replay "$@" || status=$?
    [[ $status -eq $want ]] ||
        e2e_fail "podium replay $what exited $status, expected $want: see $E2E_DIR/$1.log"
}

# summary_field NAME FIELD: a number from the replay's summary line.
summary_field() {
    node -e 'const s = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); console.log(s[process.argv[2]])' \
        "$E2E_DIR/$1.out" "$2"
}

check_same_bytes() {
    local size
    for size in 1 37 10000; do
        expect_status 0 "--batch-size $size" "batch-$size" --batch-size "$size" "$RECORDING"
    done
    expect_status 0 "--batch-size 37 again" batch-37-again --batch-size 37 "$RECORDING"
    [[ -s "$E2E_DIR/batch-1.jsonl" ]] || e2e_fail "the replay published nothing"
    for name in batch-37 batch-10000 batch-37-again; do
        cmp "$E2E_DIR/batch-1.jsonl" "$E2E_DIR/$name.jsonl" ||
            e2e_fail "replays with batch sizes 1 and ${name#batch-} published different bytes"
    done
    e2e_log "batch sizes 1, 37 and 10000 publish the same $(wc -l <"$E2E_DIR/batch-1.jsonl") messages"

    # At --speed 10 the replay takes a tenth of the recording's span of
    # arrival times, and still publishes the same bytes.
    local span_ms started_ms elapsed_ms
    span_ms="$(node -e 'const lines = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map(JSON.parse); const t = lines.map((r) => r.ApproximateArrivalTimestamp); console.log(Math.round((Math.max(...t) - Math.min(...t)) * 1000))' "$RECORDING")"
    started_ms="$(date +%s%3N)"
    expect_status 0 "--speed 10" speed-10 --speed 10 "$RECORDING"
    elapsed_ms=$(($(date +%s%3N) - started_ms))
    ((elapsed_ms >= span_ms / 10 && elapsed_ms < span_ms / 10 + 5000)) ||
        e2e_fail "--speed 10 took $elapsed_ms ms for $span_ms ms of arrival times, expected about $((span_ms / 10)) ms"
    cmp "$E2E_DIR/batch-1.jsonl" "$E2E_DIR/speed-10.jsonl" ||
        e2e_fail "the replay at --speed 10 published other bytes than at --speed 0"
    expect_status 2 "with --speed -1" badspeed --speed -1 "$RECORDING"

    # Every second line moved to a second shard, once interleaved and once
    # with all of the second shard first: the merge by arrival time must
    # apply both in the same order.
    awk 'NR % 2 == 0 { sub(/"ShardId":"shardId-000000000000"/, "\"ShardId\":\"shardId-000000000001\"") } 1' \
        "$RECORDING" >"$E2E_DIR/two-shards.jsonl"
    {
        grep '"ShardId":"shardId-000000000001"' "$E2E_DIR/two-shards.jsonl"
        grep '"ShardId":"shardId-000000000000"' "$E2E_DIR/two-shards.jsonl"
    } >"$E2E_DIR/two-shards-grouped.jsonl"
    expect_status 0 "of two shards" two "$E2E_DIR/two-shards.jsonl"
    expect_status 0 "of two shards grouped" two-grouped "$E2E_DIR/two-shards-grouped.jsonl"
    cmp "$E2E_DIR/two.jsonl" "$E2E_DIR/two-grouped.jsonl" ||
        e2e_fail "two shards published other bytes when the file lists one shard after the other"
    determinism_tool compare --publish "$E2E_DIR/batch-1.jsonl" --other "$E2E_DIR/two.jsonl" ||
        e2e_fail "the recording split over two shards published other messages than in one shard"
    e2e_log "two shards publish the same bytes whatever the order of their lines"
    e2e_log "--speed 10 takes $elapsed_ms ms for $span_ms ms of arrival times and publishes the same bytes"

    # The same store again: every record is a duplicate, nothing is new.
    cp "$E2E_DIR/batch-37.db" "$E2E_DIR/again.db"
    expect_status 0 "on a used store" again "$RECORDING"
    [[ "$(summary_field again applied)" == 0 && "$(summary_field again messages)" == 0 ]] ||
        e2e_fail "a second replay on the same store applied or published something: $(cat "$E2E_DIR/again.out")"
    [[ ! -s "$E2E_DIR/again.jsonl" ]] ||
        e2e_fail "a second replay on the same store published $(wc -l <"$E2E_DIR/again.jsonl") messages"
    [[ "$(sqlite3 "$E2E_DIR/batch-37.db" 'SELECT count(*) FROM checkpoints')" == 0 ]] ||
        e2e_fail "the replay stored checkpoints"

    # Keys that expire after 5 s of stream time are gone for most records
    # when the second replay starts. Their samples are stored, so the
    # second replay still changes and publishes nothing.
    expect_status 0 "with short-lived keys" expiring --set idempotency.expiry_s=5 "$RECORDING"
    cp "$E2E_DIR/expiring.db" "$E2E_DIR/expiring-again.db"
    expect_status 0 "again with short-lived keys" expiring-again --set idempotency.expiry_s=5 "$RECORDING"
    [[ "$(summary_field expiring-again applied)" == 0 && ! -s "$E2E_DIR/expiring-again.jsonl" ]] ||
        e2e_fail "a second replay after the keys expired applied or published something: $(cat "$E2E_DIR/expiring-again.out")"
    e2e_log "a second replay on the same store applies nothing, also after its keys expired"
}

check_against_run() {
    KINESIS_SERVER=kinesalite
    KINESIS_PORT="$(bash "$E2E_PEERS" start kinesalite "$E2E_DIR")" ||
        e2e_fail "kinesalite did not start: see $E2E_DIR/kinesalite.log; run 'bash tools/peers.sh install' if the npm packages are missing"
    e2e_create_stream replayed 1
    determinism_tool put --port "$KINESIS_PORT" --stream replayed \
        --recording "$RECORDING" 2>>"$E2E_DIR/determinism-tool.log" ||
        e2e_fail "putting the recording to the stream failed: see $E2E_DIR/determinism-tool.log"
    e2e_start_bg run "$PODIUM_BIN" run \
        --set stream.name=replayed \
        --set "kinesis.endpoint=http://127.0.0.1:$KINESIS_PORT" \
        --set kinesis.poll_interval_ms=200 \
        --set "store.path=$E2E_DIR/run.db" \
        --set publish.transport=file \
        --set "publish.file=$E2E_DIR/run.jsonl" \
        --set race.idle_close_s=3 \
        --set http.listen=127.0.0.1:0
    local pid="$E2E_LAST_PID" status=0
    determinism_tool wait --publish "$E2E_DIR/run.jsonl" --races "$RACES" \
        --seconds "$SECONDS_PER_RACE" --classes "$CLASSES" --timeout-s 60 ||
        e2e_fail "podium run did not publish every race: see $E2E_DIR/run.log"
    kill -TERM "$pid"
    e2e_wait_exit "$pid" 10 "podium run" || status=$?
    [[ $status -eq 0 ]] || e2e_fail "podium run exited $status after SIGTERM: see $E2E_DIR/run.log"

    determinism_tool capture --publish "$E2E_DIR/run.jsonl" --out "$E2E_DIR/run.capture" ||
        e2e_fail "could not convert $E2E_DIR/run.jsonl for the checker"
    e2e_checker verify --stream replayed --capture "$E2E_DIR/run.capture" --seconds "$SECONDS_PER_RACE" ||
        e2e_fail "what podium run published breaks the rules: see the checker's messages above"
    determinism_tool compare --publish "$E2E_DIR/run.jsonl" --other "$E2E_DIR/batch-37.jsonl" ||
        e2e_fail "the replay published other messages than podium run: see the differences above"
    e2e_log "the replay publishes what podium run publishes from the stream, which the checker accepts"
}

check_bad_lines() {
    local bad="$E2E_DIR/bad.jsonl"
    {
        head -n 5 "$RECORDING"
        echo 'not json'
        head -n 10 "$RECORDING" | tail -n 5
        sed -n 11p "$RECORDING" | sed 's/"SequenceNumber":"[0-9]*"/"SequenceNumber":49/'
        sed -n 12p "$RECORDING" | sed 's/"ShardId":"\([^"]*\)"/"ShardId":"\1\\u0000"/'
        tail -n +13 "$RECORDING"
    } >"$bad"

    expect_status 1 "with bad lines" fail "$bad"
    grep -q "bad.jsonl:6: not JSON" "$E2E_DIR/fail.log" ||
        e2e_fail "the replay did not report bad.jsonl:6 as not JSON: $(cat "$E2E_DIR/fail.log")"
    [[ ! -s "$E2E_DIR/fail.jsonl" ]] || e2e_fail "the replay published after a bad line under fail"
    [[ ! -e "$E2E_DIR/fail.db" ]] ||
        [[ "$(e2e_sample_count "$E2E_DIR/fail.db")" == 0 ]] ||
        e2e_fail "the replay applied records although a line was bad"

    expect_status 0 "--on-bad-line skip" skip --on-bad-line skip "$bad"
    grep -q "bad.jsonl:6: not JSON" "$E2E_DIR/skip.log" &&
        grep -q 'bad.jsonl:12: SequenceNumber must be a string of up to 128 decimal digits, got 49' "$E2E_DIR/skip.log" &&
        grep -q 'bad.jsonl:13: ShardId must be a non-empty string without U+0000, got "shardId-[0-9]*?"' "$E2E_DIR/skip.log" &&
        grep -q "skipped 3 bad lines" "$E2E_DIR/skip.log" ||
        e2e_fail "--on-bad-line skip did not report the three bad lines and the count: $(cat "$E2E_DIR/skip.log")"
    local want have
    want="$(($(wc -l <"$RECORDING") - 2))"
    have="$(summary_field skip kinesis_records)"
    [[ "$have" == "$want" ]] || e2e_fail "--on-bad-line skip read $have records, expected $want"

    # The missing file comes after a bad one: it is still a usage error.
    expect_status 2 "of a missing file" missing "$bad" "$E2E_DIR/no-such-file.jsonl"
    grep -q "cannot read .*no-such-file.jsonl" "$E2E_DIR/missing.log" ||
        e2e_fail "a missing file was not named: $(cat "$E2E_DIR/missing.log")"
    expect_status 2 "with --on-bad-line maybe" badopt --on-bad-line maybe "$RECORDING"
    expect_status 2 "without a file" nofile
    e2e_log "bad lines are reported with file:line; fail applies nothing, skip counts them"
}

check_publish_timeout() {
    # Nothing listens on port 1, so no message can be acknowledged.
    local started=$SECONDS status=0
    "$PODIUM_BIN" replay --set "store.path=$E2E_DIR/unpublished.db" \
        --set publish.transport=mqtt --set mqtt.url=mqtt://127.0.0.1:1 \
        --publish-timeout 2 "$RECORDING" \
        >"$E2E_DIR/unpublished.out" 2>"$E2E_DIR/unpublished.log" || status=$?
    [[ $status -eq 1 ]] ||
        e2e_fail "a replay without a broker exited $status, expected 1: see $E2E_DIR/unpublished.log"
    ((SECONDS - started < 20)) || e2e_fail "--publish-timeout 2 took $((SECONDS - started)) s"
    grep -q "were not acknowledged within 2 s" "$E2E_DIR/unpublished.log" ||
        e2e_fail "the replay did not say that messages were not acknowledged: see $E2E_DIR/unpublished.log"

    # The same store with a working transport: the messages left in the
    # outbox go out, and the replay adds nothing of its own.
    cp "$E2E_DIR/unpublished.db" "$E2E_DIR/resent.db"
    expect_status 0 "after a publish timeout" resent "$RECORDING"
    [[ "$(summary_field resent applied)" == 0 ]] ||
        e2e_fail "the replay after a publish timeout applied records again"
    cmp "$E2E_DIR/batch-1.jsonl" "$E2E_DIR/resent.jsonl" ||
        e2e_fail "the messages left in the outbox were not published with the bytes of a normal replay"
    [[ "$(sqlite3 "$E2E_DIR/resent.db" 'SELECT count(*) FROM outbox')" == 0 ]] ||
        e2e_fail "delivered messages are still in the outbox"
    e2e_log "--publish-timeout exits 1 and the next replay publishes what was left"
}

check_kpl() {
    # Lines 2 to 4 become one aggregate with the arrival time of line 4.
    local kpl="$E2E_DIR/kpl-recording.jsonl" args=() line
    for line in 2 3 4; do
        args+=("$(sed -n "${line}p" "$RECORDING" | node -e 'const r = JSON.parse(require("fs").readFileSync(0, "utf8")); console.log(r.PartitionKey)')")
        args+=("$(sed -n "${line}p" "$RECORDING" | node -e 'const r = JSON.parse(require("fs").readFileSync(0, "utf8")); console.log(Buffer.from(r.Data, "base64").toString())')")
    done
    local data
    data="$(node "$KPL_TOOL" aggregate "${args[@]}")" || e2e_fail "kpl-tool could not build the aggregate"
    {
        head -n 1 "$RECORDING"
        sed -n 4p "$RECORDING" | node -e 'const r = JSON.parse(require("fs").readFileSync(0, "utf8")); r.Data = process.argv[1]; console.log(JSON.stringify(r))' "$data"
        tail -n +5 "$RECORDING"
    } >"$kpl"
    expect_status 0 "of a KPL aggregate" kpl "$kpl"
    [[ "$(summary_field kpl kinesis_records)" == "$(($(wc -l <"$RECORDING") - 2))" &&
        "$(summary_field kpl user_records)" == "$(wc -l <"$RECORDING")" ]] ||
        e2e_fail "the aggregate was not split into 3 user records: $(cat "$E2E_DIR/kpl.out")"
    [[ "$(e2e_sample_rows "$E2E_DIR/kpl.db" '${j(s)}')" == \
        "$(e2e_sample_rows "$E2E_DIR/batch-37.db" '${j(s)}')" ]] ||
        e2e_fail "the KPL recording stored other samples than the plain one"
    determinism_tool compare --publish "$E2E_DIR/batch-37.jsonl" --other "$E2E_DIR/kpl.jsonl" ||
        e2e_fail "the KPL recording published other messages than the plain one"
    e2e_log "a KPL aggregate in a recording is split into its user records"
}

main() {
    e2e_init e2e_replay
    RECORDING="$E2E_DIR/recording.jsonl"
    # Device times end before now, so podium run finds no record ahead of
    # its arrival time at kinesalite.
    local summary start_ms
    start_ms=$((($(date +%s) - 60) * 1000))
    summary="$("$PODIUM_BIN" simulate --out "$RECORDING" --racers "$RACERS" \
        --seconds "$SECONDS_PER_RACE" --classes "$CLASSES" --seed 11 \
        --duplicates 0.05 --start-ms "$start_ms" 2>>"$E2E_DIR/simulate.log")" ||
        e2e_fail "podium simulate exited with status $?: see $E2E_DIR/simulate.log"
    RACES="$(node -e 'console.log(JSON.parse(process.argv[1]).races.join(","))' "$summary")" ||
        e2e_fail "podium simulate printed no race ids: $summary"

    check_same_bytes
    check_bad_lines
    check_kpl
    check_publish_timeout
    check_against_run
    e2e_log "passed"
}

main "$@"
