#!/usr/bin/env bash
# Install, start and stop the local peers that podium talks to in tests and
# in the demo: kinesalite and kinesis-local (two local Amazon Kinesis APIs)
# and mosquitto (an MQTT broker), also as mosquitto-tls (MQTT over TLS with
# client certificates, as AWS IoT Core requires). They listen on 127.0.0.1
# only, on a free port picked at start.
#
#   tools/peers.sh install                  npm ci in tools/peers, check mosquitto
#   tools/peers.sh start kinesalite DIR     start kinesalite, print its port
#   tools/peers.sh start kinesis-local DIR  start kinesis-local, print its HTTP port
#   tools/peers.sh start mosquitto DIR      start mosquitto, print its port
#   tools/peers.sh start mosquitto-tls DIR  start mosquitto with TLS, print its port
#   tools/peers.sh stop DIR                 stop the peers started in DIR
#   tools/peers.sh status DIR               list the peers in DIR and their state
#
# DIR receives NAME.port, NAME.pid and NAME.log for each peer; stop signals
# only the pids recorded there, and only while they still run that peer.
#
# mosquitto-tls uses the certificates in DIR/tls, which
# tools/make-test-certs.sh makes when DIR/tls/ca.pem does not exist. The
# broker presents server.pem (for 127.0.0.1 and localhost), accepts only
# clients with a certificate signed by ca.pem, and takes a client's common
# name as its user name. A client connects with, for example:
#   mosquitto_sub -h 127.0.0.1 -p PORT --cafile DIR/tls/ca.pem \
#       --cert DIR/tls/client.pem --key DIR/tls/client.key -t 'podium/#'
#
# With PEERS_FAKETIME=1, a Kinesis peer runs under libfaketime (Debian
# package faketime) and reads its clock offset from DIR/faketime.rc, which
# starts as "+0". Writing "+310" there makes the peer's clock run 310 s
# ahead from its next request on, so shard iterators expire without a
# five-minute wait.
set -euo pipefail

TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEERS_DIR="$TOOLS_DIR/peers"
KINESALITE_CLI="$PEERS_DIR/node_modules/kinesalite/cli.js"
KINESIS_LOCAL_DIR="$PEERS_DIR/node_modules/kinesis-local"
MOSQUITTO_BIN="${MOSQUITTO_BIN:-/usr/sbin/mosquitto}"
MAKE_TEST_CERTS="$TOOLS_DIR/make-test-certs.sh"
PEER_NAMES=(kinesalite kinesis-local mosquitto mosquitto-tls)

# Seconds to wait for a started peer to accept requests.
START_TIMEOUT_S=20
# Seconds between SIGTERM and SIGKILL in stop.
STOP_GRACE_S=3
# A free port can be taken by another process before the peer binds it, so
# start tries this many ports before it gives up.
START_ATTEMPTS=3

die() {
    echo "peers: $*" >&2
    exit 1
}

usage() {
    cat >&2 <<EOF
usage: $0 install
       $0 start kinesalite|kinesis-local|mosquitto|mosquitto-tls DIR
       $0 stop DIR
       $0 status DIR
EOF
    exit 2
}

# Print a TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
    node -e '
        const server = require("net").createServer();
        server.listen(0, "127.0.0.1", () => {
            console.log(server.address().port);
            server.close();
        });
    '
}

now_s() {
    date +%s
}

# True while pid runs and its command line contains the given word, so a
# pid that the kernel reused for another program is never signalled.
pid_runs() {
    local pid="$1" word="$2"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$word"
}

print_log_tail() {
    local log="$1"
    if [[ -s "$log" ]]; then
        echo "--- last lines of $log ---" >&2
        tail -n 20 "$log" >&2
        echo "---" >&2
    fi
}

cmd_install() {
    command -v node >/dev/null 2>&1 ||
        die "node not found: install the Debian packages nodejs and npm (apt-get install nodejs npm)"
    command -v npm >/dev/null 2>&1 ||
        die "npm not found: install the Debian package npm (apt-get install npm)"
    # The stamp is a copy of the lockfile that npm ci installed, so a second
    # run with the same lockfile skips npm and needs no registry.
    local stamp="$PEERS_DIR/node_modules/.installed-package-lock.json"
    if [[ -f "$KINESALITE_CLI" && -f "$KINESIS_LOCAL_DIR/main.js" ]] && cmp -s "$PEERS_DIR/package-lock.json" "$stamp"; then
        echo "peers: npm packages in $PEERS_DIR match package-lock.json"
    else
        # --ignore-scripts skips the native build of leveldown, an optional
        # dependency that kinesalite loads only for --path (on-disk storage).
        (cd "$PEERS_DIR" && npm ci --no-audit --no-fund --ignore-scripts) ||
            die "npm ci in $PEERS_DIR failed: check that the npm registry is reachable"
        cp "$PEERS_DIR/package-lock.json" "$stamp"
    fi
    [[ -f "$KINESALITE_CLI" && -f "$KINESIS_LOCAL_DIR/main.js" ]] ||
        die "npm ci finished but $KINESALITE_CLI or $KINESIS_LOCAL_DIR/main.js is missing"
    [[ -x "$MOSQUITTO_BIN" ]] ||
        die "$MOSQUITTO_BIN not found: install the Debian package mosquitto (apt-get install mosquitto)"
    echo "peers: kinesalite $(node -p "require('$PEERS_DIR/node_modules/kinesalite/package.json').version"), kinesis-local $(node -p "require('$KINESIS_LOCAL_DIR/package.json').version") and $("$MOSQUITTO_BIN" -h 2>&1 | head -n 1) are ready"
}

# Wait until the Kinesis peer name on port responds to ListStreams, or fail
# when pid exits or the deadline passes.
wait_kinesis() {
    local name="$1" port="$2" pid="$3" log="$4"
    local deadline=$(($(now_s) + START_TIMEOUT_S))
    while (($(now_s) < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            print_log_tail "$log"
            echo "peers: $name (pid $pid) exited before it responded on port $port" >&2
            return 1
        fi
        if "$TOOLS_DIR/kinesis-call.sh" "$port" ListStreams '{}' >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    print_log_tail "$log"
    echo "peers: $name (pid $pid) did not respond on port $port within ${START_TIMEOUT_S}s" >&2
    return 1
}

wait_kinesalite() {
    wait_kinesis kinesalite "$@"
}

wait_kinesis-local() {
    wait_kinesis kinesis-local "$@"
}

# Wait until the broker NAME has opened its listener and the port accepts a
# TCP connection, or fail when pid exits or the deadline passes.
wait_mqtt_broker() {
    local name="$1" port="$2" pid="$3" log="$4"
    local deadline=$(($(now_s) + START_TIMEOUT_S))
    while (($(now_s) < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            print_log_tail "$log"
            echo "peers: $name (pid $pid) exited before it listened on port $port" >&2
            return 1
        fi
        if grep -q ' running$' "$log" 2>/dev/null &&
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    print_log_tail "$log"
    echo "peers: $name (pid $pid) did not accept connections on port $port within ${START_TIMEOUT_S}s" >&2
    return 1
}

wait_mosquitto() {
    wait_mqtt_broker mosquitto "$@"
}

# The TCP probe makes mosquitto log a failed TLS handshake, which is
# harmless.
wait_mosquitto-tls() {
    wait_mqtt_broker mosquitto-tls "$@"
}

# Print the environment assignments that run a peer under libfaketime with
# DIR/faketime.rc as its clock offset, or nothing without PEERS_FAKETIME=1.
faketime_env() {
    local dir="$1" lib
    [[ "${PEERS_FAKETIME:-0}" == 1 ]] || return 0
    lib="$(compgen -G '/usr/lib/*/faketime/libfaketimeMT.so.1' | head -n 1 || true)"
    [[ -n "$lib" ]] ||
        die "libfaketimeMT.so.1 not found: install the Debian package faketime (apt-get install faketime)"
    [[ -f "$dir/faketime.rc" ]] || echo "+0" >"$dir/faketime.rc"
    echo "LD_PRELOAD=$lib"
    echo "FAKETIME_TIMESTAMP_FILE=$dir/faketime.rc"
    # Read the file on every clock call, so a new offset applies at once.
    echo "FAKETIME_NO_CACHE=1"
}

# Start one peer on a free port in the background. Prints its pid.
launch_kinesalite() {
    local dir="$1" port="$2" fake=()
    [[ -f "$KINESALITE_CLI" ]] ||
        die "$KINESALITE_CLI not found: run 'bash tools/peers.sh install' first"
    mapfile -t fake < <(faketime_env "$dir")
    env "${fake[@]}" PEER_IGNORE_ABORTED=1 nohup node -r "$TOOLS_DIR/force-loopback.cjs" "$KINESALITE_CLI" \
        --port "$port" --createStreamMs 50 --deleteStreamMs 50 \
        --updateStreamMs 50 --shardLimit 50 \
        </dev/null >>"$dir/kinesalite.log" 2>&1 &
    echo "$!"
}

# kinesis-local also opens a TLS port, which podium's tests do not use; it
# gets a second free port. It looks for its certificate in the working
# directory unless KINESIS_MOCK_CERT_PATH names it, and its clock is the
# monotonic one, which libfaketime moves as well.
launch_kinesis-local() {
    local dir="$1" port="$2" fake=() tls_port
    [[ -f "$KINESIS_LOCAL_DIR/main.js" ]] ||
        die "$KINESIS_LOCAL_DIR/main.js not found: run 'bash tools/peers.sh install' first"
    mapfile -t fake < <(faketime_env "$dir")
    tls_port="$(free_port)"
    env "${fake[@]}" KINESIS_MOCK_PLAIN_PORT="$port" KINESIS_MOCK_TLS_PORT="$tls_port" \
        KINESIS_MOCK_CERT_PATH="$KINESIS_LOCAL_DIR/server.json" \
        CREATE_STREAM_DURATION=50ms DELETE_STREAM_DURATION=50ms \
        SPLIT_SHARD_DURATION=50ms MERGE_SHARDS_DURATION=50ms \
        UPDATE_SHARD_COUNT_DURATION=50ms \
        nohup node -r "$TOOLS_DIR/force-loopback.cjs" "$KINESIS_LOCAL_DIR/main.js" \
        </dev/null >>"$dir/kinesis-local.log" 2>&1 &
    echo "$!"
}

launch_mosquitto() {
    local dir="$1" port="$2"
    [[ -x "$MOSQUITTO_BIN" ]] ||
        die "$MOSQUITTO_BIN not found: install the Debian package mosquitto (apt-get install mosquitto)"
    cat >"$dir/mosquitto.conf" <<EOF
per_listener_settings true
listener $port 127.0.0.1
allow_anonymous true
persistence false
log_dest stderr
max_queued_messages 0
EOF
    # max_queued_messages 0 lifts the default limit of 1000 QoS 1 messages
    # queued for a slow subscriber; past it mosquitto drops messages, and a
    # test that captures every leaderboard must see them all.
    # mosquitto started as root switches to the user "mosquitto" before it
    # opens log files, so its log goes to stderr and the shell writes it.
    nohup "$MOSQUITTO_BIN" -c "$dir/mosquitto.conf" \
        </dev/null >>"$dir/mosquitto.log" 2>&1 &
    echo "$!"
}

# Fail unless every folder from / down to dir lets other users in, because
# mosquitto started as root reads its key file as the user "mosquitto".
check_traversable() {
    local dir="$1" path="" part mode
    local -a parts
    [[ "$(id -u)" -eq 0 ]] || return 0
    IFS=/ read -r -a parts <<<"${dir#/}"
    for part in "${parts[@]}"; do
        path="$path/$part"
        # The last letter of "drwxrwxrwt" is x or t when others may enter.
        mode="$(stat -c %A "$path")"
        [[ "${mode: -1}" == [xt] ]] ||
            die "other users cannot enter $path, so mosquitto, which runs as the user mosquitto, cannot read its key in $dir: run 'chmod o+x $path' or use a folder under /tmp"
    done
}

launch_mosquitto-tls() {
    local dir="$1" port="$2" tls="$1/tls"
    [[ -x "$MOSQUITTO_BIN" ]] ||
        die "$MOSQUITTO_BIN not found: install the Debian package mosquitto (apt-get install mosquitto)"
    if [[ ! -f "$tls/ca.pem" ]]; then
        bash "$MAKE_TEST_CERTS" "$tls" >&2 ||
            die "tools/make-test-certs.sh $tls failed"
    fi
    # mosquitto started as root switches to the user "mosquitto" before it
    # reads the TLS key file, so that user must be able to enter DIR (which
    # mktemp -d makes 0700) and read the key. make-test-certs.sh makes its
    # throw-away keys world-readable for the same reason.
    chmod o+x "$dir"
    check_traversable "$tls"
    # tls_version is the oldest version accepted, so TLS 1.3 works too.
    # Every client needs a certificate signed by ca.pem and has its common
    # name as user name, so allow_anonymous lets in only such clients. The
    # other lines are those of the mosquitto peer.
    cat >"$dir/mosquitto-tls.conf" <<EOF
per_listener_settings true
listener $port 127.0.0.1
cafile $tls/ca.pem
certfile $tls/server.pem
keyfile $tls/server.key
require_certificate true
use_identity_as_username true
tls_version tlsv1.2
allow_anonymous true
persistence false
log_dest stderr
max_queued_messages 0
EOF
    nohup "$MOSQUITTO_BIN" -c "$dir/mosquitto-tls.conf" \
        </dev/null >>"$dir/mosquitto-tls.log" 2>&1 &
    echo "$!"
}

cmd_start() {
    local name="$1" dir="$2"
    case "$name" in
    kinesalite | kinesis-local | mosquitto | mosquitto-tls) ;;
    *) die "unknown peer '$name': expected kinesalite, kinesis-local, mosquitto or mosquitto-tls" ;;
    esac
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    if [[ -f "$dir/$name.pid" ]] && pid_runs "$(cat "$dir/$name.pid")" "$name"; then
        die "$name already runs in $dir (pid $(cat "$dir/$name.pid")): run '$0 stop $dir' first"
    fi

    local attempt port pid
    for ((attempt = 1; attempt <= START_ATTEMPTS; attempt++)); do
        port="$(free_port)"
        echo "peers: starting $name on 127.0.0.1:$port (attempt $attempt)" >>"$dir/$name.log"
        pid="$("launch_$name" "$dir" "$port")"
        echo "$pid" >"$dir/$name.pid"
        if "wait_$name" "$port" "$pid" "$dir/$name.log"; then
            echo "$port" >"$dir/$name.port"
            echo "$port"
            return 0
        fi
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$dir/$name.pid"
    done
    die "$name did not start after $START_ATTEMPTS attempts: see $dir/$name.log"
}

stop_one() {
    local name="$1" dir="$2"
    local pid_file="$dir/$name.pid"
    [[ -f "$pid_file" ]] || return 0
    local pid
    pid="$(cat "$pid_file")"
    if ! pid_runs "$pid" "$name"; then
        rm -f "$pid_file"
        return 0
    fi

    kill -TERM "$pid" 2>/dev/null || true
    # kinesis-local closes its listeners on SIGTERM but never exits.
    local grace="$STOP_GRACE_S"
    [[ "$name" == kinesis-local ]] && grace=1
    local deadline=$(($(now_s) + grace))
    while pid_runs "$pid" "$name" && (($(now_s) < deadline)); do
        sleep 0.1
    done
    if pid_runs "$pid" "$name"; then
        [[ "$name" == kinesis-local ]] ||
            echo "peers: $name (pid $pid) still runs ${grace}s after SIGTERM, sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pid_file"
}

cmd_stop() {
    local dir="$1"
    [[ -d "$dir" ]] || return 0
    local name
    for name in "${PEER_NAMES[@]}"; do
        stop_one "$name" "$dir"
    done
}

cmd_status() {
    local dir="$1"
    local name pid port
    for name in "${PEER_NAMES[@]}"; do
        if [[ ! -f "$dir/$name.pid" ]]; then
            echo "$name: not running (no pid file in $dir)"
            continue
        fi
        pid="$(cat "$dir/$name.pid")"
        port="$(cat "$dir/$name.port" 2>/dev/null || echo '?')"
        if pid_runs "$pid" "$name"; then
            echo "$name: running, pid $pid, 127.0.0.1:$port, log $dir/$name.log"
        else
            echo "$name: stopped (pid $pid is gone), log $dir/$name.log"
        fi
    done
}

main() {
    [[ $# -ge 1 ]] || usage
    local command="$1"
    shift
    case "$command" in
    install)
        [[ $# -eq 0 ]] || usage
        cmd_install
        ;;
    start)
        [[ $# -eq 2 ]] || usage
        cmd_start "$1" "$2"
        ;;
    stop)
        [[ $# -eq 1 ]] || usage
        cmd_stop "$1"
        ;;
    status)
        [[ $# -eq 1 ]] || usage
        cmd_status "$1"
        ;;
    *)
        usage
        ;;
    esac
}

main "$@"
