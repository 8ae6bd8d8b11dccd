#!/usr/bin/env bash
# tools/demo.sh interrupted with SIGINT, as Ctrl-C in a terminal does: the
# demo runs in a process group of its own with podium from this build, and
# once it shows the leaderboards the whole group gets SIGINT. The demo must
# exit 130, say that it was interrupted and not that the races did not
# finish in time, and stop every process that it started.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
    e2e_init e2e_demo_signal
    local out="$E2E_DIR/demo.out"

    # A background job of a script starts with SIGINT ignored, and bash
    # cannot trap a signal ignored at entry, so restore the default action
    # and start a process group, as a terminal would, before running bash.
    TMPDIR="$E2E_DIR" python3 -c '
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.setsid()
os.execvp(sys.argv[1], sys.argv[1:])
' bash "$E2E_SOURCE_DIR/tools/demo.sh" </dev/null >"$out" 2>&1 &
    local pid=$!
    e2e_track_pid "$pid" bash
    e2e_wait_for 180 "the demo showing leaderboards (see $out)" grep -q 'podium run; leaderboards' "$out"

    kill -INT -- "-$pid"
    local status=0
    e2e_wait_exit "$pid" 60 "tools/demo.sh" || status=$?
    [[ $status -eq 130 ]] || e2e_fail "tools/demo.sh exited $status after SIGINT, expected 130: $(cat "$out")"
    grep -q '^demo: interrupted by SIGINT$' "$out" ||
        e2e_fail "tools/demo.sh did not say that SIGINT interrupted it: $(cat "$out")"
    ! grep -q 'not every race' "$out" ||
        e2e_fail "tools/demo.sh blamed the races after SIGINT: $(cat "$out")"
    grep -q 'stopped podium, kinesalite and mosquitto' "$out" ||
        e2e_fail "tools/demo.sh did not stop what it started: $(cat "$out")"

    local work_dir
    work_dir="$(sed -n 's|^demo: database: \(.*\)/podium.db$|\1|p' "$out")"
    [[ -n "$work_dir" ]] || e2e_fail "tools/demo.sh did not print its database path: $(cat "$out")"
    ! pgrep -f -- "$work_dir" >/dev/null ||
        e2e_fail "processes of the demo still run: $(pgrep -af -- "$work_dir")"
    e2e_log "SIGINT ends the demo with status 130, the right reason and nothing left running"
    e2e_log "passed"
}

main "$@"
