#!/usr/bin/env bash
# The commands of step 2 of "To restore" in docs/operations.md, which move
# the database away, must succeed both after a clean stop (SQLite removed
# the -wal and -shm files) and after a crash (both files remain). The test
# runs them in a temporary folder in place of /var/lib/podium.
set -euo pipefail

SOURCE_DIR="${PODIUM_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
DOC="$SOURCE_DIR/docs/operations.md"
NAME=e2e_operations_doc_restore

fail() {
    echo "[$NAME] FAILED: $*" >&2
    exit 1
}

command -v sqlite3 >/dev/null 2>&1 || fail "sqlite3 not found: install the Debian package sqlite3 (tools/deps.sh does)"

# The first sh block after the line that starts step 2 of the restore.
steps="$(awk '
    /^2\. Move `podium.db`/ { in_step = 1; next }
    in_step && /^   ```sh$/ { in_block = 1; next }
    in_block && /^   ```$/ { exit }
    in_block { sub(/^   /, ""); print }
' "$DOC")"
[[ -n "$steps" ]] || fail "no sh block under the step \"2. Move \`podium.db\` ...\" of the restore in $DOC"
[[ "$steps" == *"/var/lib/podium"* ]] || fail "the restore commands do not name /var/lib/podium:"$'\n'"$steps"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# run_steps CASE: run the commands with the folder CASE in place of
# /var/lib/podium.
run_steps() {
    local dir="$work/$1" output
    output="$(bash -euc "${steps//\/var\/lib\/podium/$dir}" 2>&1)" ||
        fail "the restore commands failed in the case \"$1\":"$'\n'"$output"$'\n'"commands:"$'\n'"$steps"
}

# A database in WAL mode, closed cleanly: SQLite removes the -wal and -shm
# files when the last connection closes.
mkdir -p "$work/clean"
sqlite3 "$work/clean/podium.db" "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);" >/dev/null
[[ ! -e "$work/clean/podium.db-wal" ]] || fail "sqlite3 left podium.db-wal after closing the database"
run_steps clean
[[ -f "$work/clean/old/podium.db" ]] || fail "after a clean stop, the restore commands did not move podium.db to old/"
[[ ! -e "$work/clean/podium.db" ]] || fail "after a clean stop, podium.db is still in place"
echo "[$NAME] the restore commands work after a clean stop"

# After a crash the -wal and -shm files remain next to the database.
mkdir -p "$work/crash"
cp "$work/clean/old/podium.db" "$work/crash/podium.db"
echo wal >"$work/crash/podium.db-wal"
echo shm >"$work/crash/podium.db-shm"
run_steps crash
for f in podium.db podium.db-wal podium.db-shm; do
    [[ -f "$work/crash/old/$f" ]] || fail "after a crash, the restore commands did not move $f to old/"
    [[ ! -e "$work/crash/$f" ]] || fail "after a crash, $f is still in place"
done
echo "[$NAME] the restore commands work after a crash"
