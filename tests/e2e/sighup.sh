#!/usr/bin/env bash
# SIGHUP makes podium run read its configuration again.
#
# podium logs to log.file. The test renames that file away, as logrotate
# does, and sends SIGHUP: the lines that follow go to a new file at the
# configured path and none to the renamed one. It then raises log.level to
# debug in the configuration file, and after SIGHUP debug lines appear.
# The same SIGHUP logs one warning for outbox.max, which needs a restart.
# Finally it breaks the configuration file: after SIGHUP podium logs one
# error line, keeps running with debug logging, and stops with status 0
# on SIGTERM.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STREAM=e2e

e2e_init sighup
e2e_start_peers
e2e_create_stream "$STREAM" 1

LOG_DIR="$E2E_DIR/logs"
LOG_FILE="$LOG_DIR/podium.log"
CONFIG="$E2E_DIR/podium.conf"
mkdir -p "$LOG_DIR"

# write_config LEVEL [LINE]: the configuration file with log.level LEVEL
# and LINE.
write_config() {
    printf 'log.level = %s\nlog.file = %s\n%s\n' "$1" "$LOG_FILE" "${2:-}" >"$CONFIG.tmp"
    mv "$CONFIG.tmp" "$CONFIG"
}

# count_lines FILE TEXT: print the number of lines of FILE that contain
# TEXT (0 when FILE does not exist).
count_lines() {
    if [[ -f "$1" ]]; then
        grep -cF -- "$2" "$1" || true
    else
        echo 0
    fi
}

has_line() {
    [[ "$(count_lines "$1" "$2")" -gt 0 ]]
}

write_config info
mapfile -t settings < <(e2e_podium_run_settings "$STREAM")
# ListShards every 5 s logs a debug line, so a debug level shows quickly.
e2e_start_bg podium-stderr "$PODIUM_BIN" run --config "$CONFIG" "${settings[@]}" \
    --set kinesis.shard_sync_interval_s=5
PODIUM_PID=$E2E_LAST_PID
e2e_wait_for 30 "podium logs that it is ready to $LOG_FILE" \
    has_line "$LOG_FILE" '"message":"ready: '
[[ ! -s "$E2E_DIR/podium-stderr.log" ]] ||
    e2e_fail "podium wrote to standard error although log.file is set: see $E2E_DIR/podium-stderr.log"

e2e_log "rotating the log file"
mv "$LOG_FILE" "$LOG_FILE.1"
rotated_lines="$(e2e_line_count "$LOG_FILE.1")"
kill -HUP "$PODIUM_PID"
e2e_wait_for 15 "a new $LOG_FILE with the reload line" \
    has_line "$LOG_FILE" 'reloaded the configuration on SIGHUP: log.level info'
[[ "$(e2e_line_count "$LOG_FILE.1")" -eq "$rotated_lines" ]] ||
    e2e_fail "podium wrote to the renamed $LOG_FILE.1 after SIGHUP"
[[ "$(count_lines "$LOG_FILE" '"level":"debug"')" -eq 0 ]] ||
    e2e_fail "debug lines at log.level info"

e2e_log "raising log.level to debug and changing outbox.max"
write_config debug 'outbox.max = 500'
kill -HUP "$PODIUM_PID"
e2e_wait_for 15 "the reload line with log.level debug" \
    has_line "$LOG_FILE" 'reloaded the configuration on SIGHUP: log.level debug'
# outbox.max is not applied live, and one warning says it needs a restart.
[[ "$(count_lines "$LOG_FILE" 'outbox.max = 500 changed in the configuration')" -eq 1 ]] ||
    e2e_fail "expected one warning that outbox.max needs a restart: see $LOG_FILE"
e2e_wait_for 15 "a debug line after the reload" \
    has_line "$LOG_FILE" '"level":"debug"'

e2e_log "breaking the configuration file"
printf 'log.level = loud\nlog.file = %s\n' "$LOG_FILE" >"$CONFIG"
debug_lines="$(count_lines "$LOG_FILE" '"level":"debug"')"
kill -HUP "$PODIUM_PID"
e2e_wait_for 15 "the reload error line" \
    has_line "$LOG_FILE" 'failed to reload the configuration on SIGHUP'
# A debug line that follows shows that the running level is still debug.
more_debug_lines() {
    [[ "$(count_lines "$LOG_FILE" '"level":"debug"')" -gt "$debug_lines" ]]
}
e2e_wait_for 15 "a debug line after the failed reload" more_debug_lines
errors="$(count_lines "$LOG_FILE" '"level":"error"')"
[[ "$errors" -eq 1 ]] ||
    e2e_fail "expected 1 error line after the broken configuration, found $errors: see $LOG_FILE"
grep -F '"level":"error"' "$LOG_FILE" | grep -qF 'log.level' ||
    e2e_fail "the error line does not name log.level: $(grep -F '"level":"error"' "$LOG_FILE")"
e2e_pid_alive "$PODIUM_PID" || e2e_fail "podium exited after the broken configuration"

kill -TERM "$PODIUM_PID"
status=0
e2e_wait_exit "$PODIUM_PID" 15 podium || status=$?
[[ "$status" -eq 0 ]] || e2e_fail "podium exited with status $status after SIGTERM"
e2e_log "passed"
