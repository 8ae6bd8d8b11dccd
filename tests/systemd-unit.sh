#!/usr/bin/env bash
# Check the systemd unit that CMake configured, with systemd-analyze
# (Debian package systemd):
#
#   systemd-unit.sh verify UNIT PODIUM_BIN    systemd-analyze verify prints nothing
#   systemd-unit.sh security UNIT MAX         the exposure level is at most MAX
#
# verify checks that ExecStart= names an executable, so it runs on a copy
# of UNIT whose ExecStart= runs PODIUM_BIN.
set -euo pipefail

die() {
    echo "systemd-unit: $*" >&2
    exit 1
}

[[ $# -eq 3 ]] || die "usage: $0 verify UNIT PODIUM_BIN | security UNIT MAX"
mode="$1"
unit="$2"
command -v systemd-analyze >/dev/null 2>&1 ||
    die "systemd-analyze not found: install the Debian package systemd (tools/deps.sh does)"
[[ -f "$unit" ]] || die "unit file $unit not found: run cmake first"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
name="$(basename "$unit")"

case "$mode" in
verify)
    bin="$3"
    [[ -x "$bin" ]] || die "podium binary $bin not found or not executable"
    grep -q '^ExecStart=[^ ]*/podium run$' "$unit" ||
        die "$unit has no line 'ExecStart=/PATH/podium run'"
    sed "s|^ExecStart=[^ ]*/podium run\$|ExecStart=$bin run|" "$unit" >"$work/$name"
    output="$(systemd-analyze verify --man=no "$work/$name" 2>&1)" ||
        die "systemd-analyze verify failed:"$'\n'"$output"
    [[ -z "$output" ]] ||
        die "systemd-analyze verify printed warnings:"$'\n'"$output"
    echo "systemd-unit: systemd-analyze verify $name: no warnings"
    ;;
security)
    max="$3"
    output="$(systemd-analyze security --offline=yes --no-pager "$unit" 2>&1)" ||
        die "systemd-analyze security failed:"$'\n'"$output"
    level="$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$output")"
    [[ -n "$level" ]] ||
        die "no 'Overall exposure level' line in the output:"$'\n'"$output"
    if ! awk -v level="$level" -v max="$max" 'BEGIN { exit !(level <= max) }'; then
        echo "$output" >&2
        die "exposure level $level of $name is above $max: see the rows marked ✗ above"
    fi
    echo "systemd-unit: exposure level of $name: $level (at most $max)"
    ;;
*)
    die "unknown mode \"$mode\": expected verify or security"
    ;;
esac
