#!/usr/bin/env bash
# `cmake --install BUILD_DIR --prefix PREFIX` with DESTDIR, for two
# prefixes: the unit lands in PREFIX/lib/systemd/system with
# ExecStart=PREFIX/bin/podium run, the sample configuration in the
# prefix's sysconfdir (/etc for /usr, PREFIX/etc otherwise), and
# systemd-analyze verify has no warnings on the installed unit.
#
#   systemd-install.sh BUILD_DIR
#
# Every file goes under a temporary DESTDIR, never into /usr or /etc.
set -euo pipefail

die() {
    echo "systemd-install: $*" >&2
    exit 1
}

[[ $# -eq 1 ]] || die "usage: $0 BUILD_DIR"
build="$1"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[[ -f "$build/cmake_install.cmake" ]] || die "$build has no cmake_install.cmake: run cmake first"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# check_prefix PREFIX SYSCONFDIR: install under PREFIX into a fresh
# DESTDIR and check where the files land and what the unit runs.
check_prefix() {
    local prefix="$1" sysconfdir="$2"
    local dest="$work/dest${prefix//\//_}"
    mkdir -p "$dest"
    DESTDIR="$dest" cmake --install "$build" --prefix "$prefix" >"$work/install.log" 2>&1 ||
        die "cmake --install --prefix $prefix failed:"$'\n'"$(cat "$work/install.log")"

    local bin="$dest$prefix/bin/podium"
    local unit="$dest$prefix/lib/systemd/system/podium.service"
    local example="$dest$sysconfdir/podium/podium.conf.example"
    [[ -x "$bin" ]] || die "no executable $bin after the install with --prefix $prefix"
    [[ -f "$unit" ]] ||
        die "no unit $unit after the install with --prefix $prefix; installed files:"$'\n'"$(find "$dest" -type f)"
    [[ -f "$example" ]] ||
        die "no sample configuration $example after the install with --prefix $prefix; installed files:"$'\n'"$(find "$dest" -type f)"

    local exec_start
    exec_start="$(grep '^ExecStart=' "$unit")"
    [[ "$exec_start" == "ExecStart=$prefix/bin/podium run" ]] ||
        die "$unit has \"$exec_start\", expected \"ExecStart=$prefix/bin/podium run\""

    # Nothing may land outside DESTDIR's copy of the prefix and sysconfdir.
    local stray
    stray="$(find "$dest" -type f ! -path "$dest$prefix/*" ! -path "$dest$sysconfdir/*")"
    [[ -z "$stray" ]] || die "the install with --prefix $prefix put files outside $prefix and $sysconfdir:"$'\n'"$stray"

    # The installed unit names the binary by its path without DESTDIR, so
    # verify runs on a copy that starts the installed binary.
    bash "$here/systemd-unit.sh" verify "$unit" "$bin" ||
        die "systemd-analyze verify failed on the unit installed with --prefix $prefix"
    echo "systemd-install: --prefix $prefix: $prefix/lib/systemd/system/podium.service runs $prefix/bin/podium, sample in $sysconfdir/podium"
}

check_prefix /opt/podium-test /opt/podium-test/etc
check_prefix /usr /etc
