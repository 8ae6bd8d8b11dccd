#!/usr/bin/env bash
# podium replay stopped by SIGINT or SIGTERM, and log lines next to its
# progress bar. The golden race of tests/data/golden is replayed at
# --speed 5 with --progress always, so the bar is drawn on standard error
# (a file here) while the pipeline logs a warning for every rejected
# record. Checks:
# 1. SIGINT once messages were published: exit status 130, one log line
#    that says the replay was interrupted, the summary with
#    "interrupted":true and fewer records applied than read, and no bar
#    left open at the end of standard error.
# 2. Every log line on standard error starts at the start of a line: the
#    bar is erased before it (carriage return, erase to end of line) and
#    no bar text comes before its '{'.
# 3. A second replay on the same store finishes the race: the last message
#    of every topic is the one of an uninterrupted replay.
# 4. SIGTERM gives exit status 143 and the same summary field.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RECORDING="$E2E_SOURCE_DIR/tests/data/golden/race.jsonl"

# replay_args NAME: the settings of a replay into E2E_DIR/NAME.db that
# publishes to E2E_DIR/NAME.jsonl.
replay_args() {
    printf '%s\n' --set "store.path=$E2E_DIR/$1.db" --set publish.transport=file \
        --set "publish.file=$E2E_DIR/$1.jsonl"
}

# summary_field NAME FIELD: a field of the summary in E2E_DIR/NAME.out.
summary_field() {
    node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))[process.argv[2]])' \
        "$E2E_DIR/$1.out" "$2"
}

# interrupt NAME SIGNAL: start a slow replay, send SIGNAL once it has
# published a message, and return its exit status.
interrupt() {
    local name="$1" signal="$2" args=()
    mapfile -t args < <(replay_args "$name")
    "$PODIUM_BIN" replay --speed 5 --progress always "${args[@]}" "$RECORDING" \
        >"$E2E_DIR/$name.out" 2>"$E2E_DIR/$name.log" &
    local pid=$!
    e2e_track_pid "$pid" "$PODIUM_BIN"
    e2e_wait_for 60 "a message in $E2E_DIR/$name.jsonl" test -s "$E2E_DIR/$name.jsonl"
    kill "-$signal" "$pid"
    local status=0
    e2e_wait_exit "$pid" 30 "podium replay" || status=$?
    return "$status"
}

# Each log line, taken after the last carriage return of its line and
# without an erase-to-end-of-line sequence before it, must start with '{'.
check_log_lines_start_lines() {
    node -e '
const text = require("fs").readFileSync(process.argv[1], "utf8");
let bad = 0;
for (const line of text.split("\n")) {
  if (!line.includes("{\"level\"")) continue;
  const shown = line.slice(line.lastIndexOf("\r") + 1).replace(/^\x1b\[K/, "");
  if (!shown.startsWith("{\"level\"")) {
    if (bad++ < 3) console.error(`a log line does not start its line: ${JSON.stringify(line.slice(0, 200))}`);
  }
}
process.exit(bad > 0 ? 1 : 0);
' "$1"
}

check_sigint() {
    local status=0
    interrupt first INT || status=$?
    [[ $status -eq 130 ]] || e2e_fail "podium replay exited $status after SIGINT, expected 130: see $E2E_DIR/first.log"
    [[ "$(summary_field first interrupted)" == true ]] ||
        e2e_fail "the summary after SIGINT lacks \"interrupted\":true: $(cat "$E2E_DIR/first.out")"
    (($(summary_field first applied) < $(summary_field first user_records))) ||
        e2e_fail "the replay applied every record although SIGINT came first: $(cat "$E2E_DIR/first.out")"
    [[ "$(grep -c 'replay interrupted by SIGINT' "$E2E_DIR/first.log")" == 1 ]] ||
        e2e_fail "the replay did not log one line that SIGINT interrupted it: $(tail -c 2000 "$E2E_DIR/first.log" | cat -v)"
    grep -q 'stay in the outbox and go out with the next run or replay' "$E2E_DIR/first.log" ||
        e2e_fail "the interrupted replay did not say where unacknowledged messages go"
    grep -q $'\r''podium replay: replaying' "$E2E_DIR/first.log" ||
        e2e_fail "--progress always drew no bar: $(head -c 2000 "$E2E_DIR/first.log" | cat -v)"
    [[ "$(tail -c 1 "$E2E_DIR/first.log" | od -An -c | tr -d ' ')" == '\n' ]] ||
        e2e_fail "standard error ends inside a line after SIGINT, so the bar was left open: $(tail -c 300 "$E2E_DIR/first.log" | cat -v)"
    e2e_log "SIGINT stops the replay with status 130, one log line and the summary"

    check_log_lines_start_lines "$E2E_DIR/first.log" ||
        e2e_fail "log lines were written on the line of the progress bar: see $E2E_DIR/first.log"
    e2e_log "every log line starts at the start of a line"
}

check_second_replay() {
    local args=()
    mapfile -t args < <(replay_args first)
    "$PODIUM_BIN" replay "${args[@]}" "$RECORDING" >"$E2E_DIR/second.out" 2>"$E2E_DIR/second.log" ||
        e2e_fail "the replay after SIGINT failed: see $E2E_DIR/second.log"
    [[ "$(summary_field second interrupted)" == false ]] ||
        e2e_fail "the summary of a whole replay does not say \"interrupted\":false: $(cat "$E2E_DIR/second.out")"
    mapfile -t args < <(replay_args whole)
    "$PODIUM_BIN" replay "${args[@]}" "$RECORDING" >"$E2E_DIR/whole.out" 2>"$E2E_DIR/whole.log" ||
        e2e_fail "the uninterrupted replay failed: see $E2E_DIR/whole.log"
    diff <(bash "$E2E_SOURCE_DIR/tools/golden-summary.sh" "$E2E_DIR/whole.jsonl") \
        <(bash "$E2E_SOURCE_DIR/tools/golden-summary.sh" "$E2E_DIR/first.jsonl") ||
        e2e_fail "the replay after SIGINT did not end with the messages of an uninterrupted replay: see the differences above"
    e2e_log "a second replay on the same store finishes what SIGINT stopped"
}

check_sigterm() {
    local status=0
    interrupt term TERM || status=$?
    [[ $status -eq 143 ]] || e2e_fail "podium replay exited $status after SIGTERM, expected 143: see $E2E_DIR/term.log"
    [[ "$(summary_field term interrupted)" == true ]] ||
        e2e_fail "the summary after SIGTERM lacks \"interrupted\":true: $(cat "$E2E_DIR/term.out")"
    grep -q 'replay interrupted by SIGTERM' "$E2E_DIR/term.log" ||
        e2e_fail "the replay did not log that SIGTERM interrupted it: $(tail -c 2000 "$E2E_DIR/term.log" | cat -v)"
    e2e_log "SIGTERM stops the replay with status 143"
}

main() {
    e2e_init e2e_replay_signal
    check_sigint
    check_second_replay
    check_sigterm
    e2e_log "passed"
}

main "$@"
