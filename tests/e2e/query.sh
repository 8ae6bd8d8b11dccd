#!/usr/bin/env bash
# podium query against a real store. podium simulate puts 6 riders x 10
# seconds in 2 classes (one race per class, every rider sending "final") to
# a kinesalite stream, and podium run publishes to mosquitto. While podium
# run still has the database open, podium query must print the last results
# and class leaderboard that reached the broker, byte for byte, and the
# class history that the samples define; then the same after podium stops.
# Bad arguments must exit 2 and unknown ids 1, each with a message.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STREAM=e2e-query
SECONDS_PER_RACE=10

# The payload of the last line on TOPIC in the capture file.
last_payload() {
    local capture="$1" topic="$2"
    grep "^$topic " "$capture" | tail -n 1 | cut -d' ' -f2-
}

# query_expect STATUS OUT_FILE ARGS...: run podium query and fail unless it
# exits with STATUS. stdout goes to OUT_FILE, stderr to OUT_FILE.err.
query_expect() {
    local expected="$1" out="$2"
    shift 2
    local status=0
    "$PODIUM_BIN" query "$@" --set "store.path=$E2E_DIR/podium.db" \
        >"$out" 2>"$out.err" || status=$?
    if [[ $status -ne $expected ]]; then
        e2e_fail "podium query $* exited with status $status, expected $expected; stderr: $(cat "$out.err")"
    fi
}

# Compare the class history that podium query prints for a class with the
# samples of that class in the store: with one race per class, the best
# output of each rider at each second is the rider's sample there.
check_history() {
    local class="$1" out="$E2E_DIR/history-$1.json"
    query_expect 0 "$out" class-history --class "$class"
    e2e_sample_rows "$E2E_DIR/podium.db" '${j(s.classId)}|${s.second}|${j(s.racerId)}|${u(s.output)}|${j(s.raceId)}' |
        awk -F'|' -v class="$class" '$1 == class' | cut -d'|' -f2- >"$E2E_DIR/samples-$class.txt"
    node -e '
        const fs = require("fs");
        const [out, rows, classId] = process.argv.slice(1);
        const doc = JSON.parse(fs.readFileSync(out, "utf8"));
        const units = (n) => Math.round(n * 10000);
        const got = doc.entries.map((e) => `${e.second}|${e.racerId}|${units(e.output)}|${e.raceId}`).sort();
        const want = fs.readFileSync(rows, "utf8").trim().split("\n").sort();
        if (String(doc.classId) !== classId) {
            console.error(`classId ${doc.classId}, expected ${classId}`);
            process.exit(1);
        }
        if (JSON.stringify(got) !== JSON.stringify(want)) {
            console.error(`history differs from the samples:\n got  ${got.slice(0, 5).join(" ")}\n want ${want.slice(0, 5).join(" ")}`);
            process.exit(1);
        }
        for (let i = 1; i < doc.entries.length; i++) {
            const a = doc.entries[i - 1], b = doc.entries[i];
            if (a.second > b.second || (a.second === b.second && a.output < b.output)) {
                console.error(`entries ${i - 1} and ${i} are out of order`);
                process.exit(1);
            }
        }
    ' "$out" "$E2E_DIR/samples-$class.txt" "$class" ||
        e2e_fail "podium query class-history --class $class does not match the samples: see $out"

    query_expect 0 "$out.racer" class-history --class "$class" --racer "$(head -n 1 "$E2E_DIR/samples-$class.txt" | cut -d'|' -f2)"
    query_expect 0 "$out.second" class-history --class "$class" --second 3
    local racer_count second_count
    racer_count="$(grep -o '"second":' "$out.racer" | wc -l)"
    second_count="$(grep -o '"second":3,' "$out.second" | wc -l)"
    [[ "$racer_count" -eq $SECONDS_PER_RACE ]] ||
        e2e_fail "--racer listed $racer_count seconds, expected $SECONDS_PER_RACE: see $out.racer"
    [[ "$second_count" -eq 3 ]] ||
        e2e_fail "--second 3 listed $second_count riders of class $class, expected 3: see $out.second"
}

# Each query's output must be the last message published on its topic.
check_messages() {
    local capture="$1" topic id kind option checked=0
    while read -r topic; do
        checked=$((checked + 1))
        id="$(cut -d/ -f3 <<<"$topic")"
        case "$topic" in
        podium/races/*) kind=results option=--race ;;
        *) kind=class-leaderboard option=--class ;;
        esac
        query_expect 0 "$E2E_DIR/query.out" "$kind" "$option" "$id"
        if [[ "$(cat "$E2E_DIR/query.out")" != "$(last_payload "$capture" "$topic")" ]]; then
            e2e_fail "podium query $kind $option $id differs from the last message on $topic: see $E2E_DIR/query.out and $capture"
        fi
    done < <(grep -oE '^podium/(races/[^/ ]+/results|classes/[^/ ]+/leaderboard) ' "$capture" | sort -u)
    [[ $checked -eq 4 ]] ||
        e2e_fail "the capture has $checked results and class leaderboard topics, expected 4: see $capture"
    e2e_log "podium query printed the last message of all $checked topics"
}

check_errors() {
    local out="$E2E_DIR/error.out"
    query_expect 2 "$out" results
    grep -q 'missing --race ID' "$out.err" || e2e_fail "no message for a missing --race: $(cat "$out.err")"
    query_expect 2 "$out" class-history --class 1 --second 0
    grep -q "invalid --second '0'" "$out.err" || e2e_fail "no message for --second 0: $(cat "$out.err")"
    query_expect 2 "$out" leaderboard --class 1
    grep -q 'unknown query "leaderboard"' "$out.err" || e2e_fail "no message for an unknown query: $(cat "$out.err")"
    query_expect 2 "$out" class-leaderboard --class 1 --race 2
    grep -q -- '--race does not apply' "$out.err" || e2e_fail "no message for --race on a class query: $(cat "$out.err")"
    query_expect 1 "$out" results --race 999
    grep -q 'no results stored for race 999' "$out.err" || e2e_fail "no message for an unknown race: $(cat "$out.err")"
    # The string "1" is not the number 1.
    query_expect 1 "$out" class-leaderboard --class '"1"'
    grep -q 'no leaderboard stored for class "1"' "$out.err" || e2e_fail "no message for class \"1\": $(cat "$out.err")"
    query_expect 2 "$out" samples --class 1
    grep -q -- '--class does not apply' "$out.err" || e2e_fail "no message for --class on a samples query: $(cat "$out.err")"
    query_expect 1 "$out" samples --race 999
    grep -q 'no samples stored for race 999' "$out.err" || e2e_fail "no message for samples of an unknown race: $(cat "$out.err")"
    [[ ! -s "$out" ]] || e2e_fail "a failed query printed to stdout: $(cat "$out")"
}

# podium query samples with filters prints the lines of the whole list that
# match them, in the same order.
check_samples_filters() {
    local out="$E2E_DIR/samples.out" all="$E2E_DIR/samples-all.jsonl"
    query_expect 0 "$all" samples
    local first race racer
    first="$(head -n 1 "$all")"
    race="$(node -p 'JSON.stringify(JSON.parse(process.argv[1]).raceId)' "$first")"
    racer="$(node -p 'JSON.stringify(JSON.parse(process.argv[1]).racerId)' "$first")"
    query_expect 0 "$out" samples --race "$race" --racer "$racer" --second 3
    [[ "$(wc -l <"$out")" == 1 ]] && grep -q '"second":3,' "$out" ||
        e2e_fail "podium query samples --race $race --racer $racer --second 3 printed: $(cat "$out")"
    query_expect 0 "$out" samples --race "$race"
    grep -F "\"raceId\":$race," "$all" | cmp -s - "$out" ||
        e2e_fail "podium query samples --race $race is not the lines of race $race in the whole list"
    node -e '
        const lines = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n");
        const keys = lines.map((l) => { const s = JSON.parse(l); return [JSON.stringify(s.raceId), JSON.stringify(s.racerId), s.second]; });
        for (let i = 1; i < keys.length; i++) {
            const a = keys[i - 1], b = keys[i];
            if (!(a[0] < b[0] || (a[0] === b[0] && (a[1] < b[1] || (a[1] === b[1] && a[2] < b[2]))))) {
                console.error(`lines ${i} and ${i + 1} are not in (raceId, racerId, second) order`);
                process.exit(1);
            }
        }
    ' "$all" || e2e_fail "podium query samples printed keys twice or out of order: see $all"
    e2e_log "podium query samples: $(wc -l <"$all") samples, filters and order checked"
}

main() {
    e2e_init e2e_query
    e2e_start_peers
    e2e_create_stream "$STREAM" 1

    local capture="$E2E_DIR/capture.txt"
    e2e_start_capture "$capture"

    "$PODIUM_BIN" simulate --racers 6 --seconds "$SECONDS_PER_RACE" --classes 2 --seed 3 \
        --stream "$STREAM" --set "kinesis.endpoint=http://127.0.0.1:$KINESIS_PORT" \
        </dev/null >>"$E2E_DIR/simulate.log" 2>&1 ||
        e2e_fail "podium simulate exited with status $?: see $E2E_DIR/simulate.log"

    local settings=()
    mapfile -t settings < <(e2e_podium_run_settings "$STREAM")
    e2e_start_bg podium "$PODIUM_BIN" run "${settings[@]}"
    local podium_pid="$E2E_LAST_PID"

    e2e_wait_for 60 "the results of both races and both class leaderboards" \
        bash -c "[[ \$(grep -cE '^podium/(races/[^/]+/results|classes/[^/]+/leaderboard) ' '$capture') -ge 4 ]]"
    # Let the class boards settle: each race's results may raise them.
    sleep 2

    e2e_log "querying while podium run has the database open"
    e2e_pid_alive "$podium_pid" || e2e_fail "podium run exited early: see $E2E_DIR/podium.log"
    check_messages "$capture"
    check_history 1
    check_history 2
    check_errors
    check_samples_filters

    kill -TERM "$podium_pid"
    e2e_wait_exit "$podium_pid" 10 "podium run" ||
        e2e_fail "podium run did not exit 0 after SIGTERM: see $E2E_DIR/podium.log"

    e2e_log "querying after podium run stopped"
    check_messages "$capture"
    check_history 1
    e2e_log "passed"
}

main "$@"
