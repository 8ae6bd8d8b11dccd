# Helpers for the end-to-end tests; source this file from a test script.
#
# e2e_init creates the work folder E2E_DIR under $PODIUM_E2E_WORK_ROOT (or
# $TMPDIR) and sets a trap that, on exit, stops every process started with
# e2e_start_bg and the peers in E2E_DIR. The folder is removed when the
# test passes and kept, with the tails of its logs printed, when it fails.
# A peer that cannot start fails the test; nothing is skipped.

E2E_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
E2E_SOURCE_DIR="${PODIUM_SOURCE_DIR:-$(cd "$E2E_LIB_DIR/../.." && pwd)}"
E2E_PEERS="$E2E_SOURCE_DIR/tools/peers.sh"
E2E_KINESIS_CALL="$E2E_SOURCE_DIR/tools/kinesis-call.sh"
E2E_CHECKER="$E2E_LIB_DIR/checker.mjs"
E2E_FAULT_PROXY="$E2E_SOURCE_DIR/tests/kinesis-fault-proxy.js"

# Seconds a started process gets between SIGTERM and SIGKILL in cleanup.
E2E_STOP_GRACE_S=5

E2E_DIR=""
E2E_NAME=""
E2E_BG_PIDS=()
# The local Kinesis API that e2e_start_peers started (kinesalite or
# kinesis-local) and its plain HTTP port.
KINESIS_SERVER=""
KINESIS_PORT=""
MOSQUITTO_PORT=""
# The port of the fault proxy that e2e_start_fault_proxy started last.
FAULT_PROXY_PORT=""

# Test credentials. kinesalite and kinesis-local accept any signature, but
# both read a 12-digit access key id as an account id, so the key id has
# letters.
export AWS_ACCESS_KEY_ID=AKIDEXAMPLE
export AWS_SECRET_ACCESS_KEY=SECRETEXAMPLE
export AWS_REGION=us-east-1
# No test may reach the link-local credential services of EC2 and ECS:
# the instance metadata endpoint is a closed loopback port unless a test
# starts its own stand-in, and no container credentials are inherited.
export AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:9
unset AWS_CONTAINER_CREDENTIALS_RELATIVE_URI AWS_CONTAINER_CREDENTIALS_FULL_URI

e2e_log() {
    echo "[$E2E_NAME $(date +%H:%M:%S)] $*"
}

# Fail the test with a message. Cleanup prints the log tails.
e2e_fail() {
    echo "[${E2E_NAME:-e2e}] FAILED: $*" >&2
    exit 1
}

e2e_print_logs() {
    local log
    for log in "$E2E_DIR"/*.log; do
        [[ -s "$log" ]] || continue
        echo "--- last 30 lines of $log ---" >&2
        tail -n 30 "$log" >&2
    done
}

e2e_cleanup() {
    local status=$?
    set +e
    local pid
    for pid in "${E2E_BG_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    local deadline=$((SECONDS + E2E_STOP_GRACE_S))
    for pid in "${E2E_BG_PIDS[@]}"; do
        while e2e_pid_alive "$pid" && ((SECONDS < deadline)); do
            sleep 0.1
        done
        if e2e_pid_alive "$pid"; then
            echo "[$E2E_NAME] pid $pid still runs ${E2E_STOP_GRACE_S}s after SIGTERM, sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null
        fi
    done
    if [[ -n "$E2E_DIR" ]]; then
        bash "$E2E_PEERS" stop "$E2E_DIR"
        if [[ $status -eq 0 && "${PODIUM_E2E_KEEP:-0}" != 1 ]]; then
            rm -rf "$E2E_DIR"
        else
            e2e_print_logs
            echo "[$E2E_NAME] exit status $status; logs and capture kept in $E2E_DIR" >&2
        fi
    fi
    exit "$status"
}

# Create the work folder and the cleanup trap. Fails when PODIUM_BIN is not
# an executable file.
e2e_init() {
    E2E_NAME="$1"
    if [[ -z "${PODIUM_BIN:-}" || ! -x "${PODIUM_BIN:-}" ]]; then
        e2e_fail "PODIUM_BIN='${PODIUM_BIN:-}' is not an executable file: build podium and run this test through ctest"
    fi
    local command package
    for command in node:nodejs curl:curl sqlite3:sqlite3 mosquitto_sub:mosquitto-clients mosquitto_pub:mosquitto-clients; do
        package="${command#*:}"
        command="${command%%:*}"
        command -v "$command" >/dev/null 2>&1 ||
            e2e_fail "$command not found: install the Debian package $package, or run 'bash tools/deps.sh'"
    done
    local root="${PODIUM_E2E_WORK_ROOT:-${TMPDIR:-/tmp}}"
    mkdir -p "$root"
    E2E_DIR="$(mktemp -d "$root/$E2E_NAME.XXXXXX")"
    trap e2e_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    e2e_log "work folder $E2E_DIR"
}

# Fail the test unless name is a Kinesis server that tools/peers.sh starts.
e2e_check_kinesis_server() {
    local name="$1"
    case "$name" in
    kinesalite | kinesis-local) ;;
    *) e2e_fail "invalid Kinesis server '$name': expected kinesalite or kinesis-local" ;;
    esac
}

# e2e_start_peers [SERVER]: start the Kinesis server SERVER (kinesalite, the
# default, or kinesis-local) and mosquitto.
e2e_start_peers() {
    local server="${1:-kinesalite}"
    e2e_check_kinesis_server "$server"
    KINESIS_SERVER="$server"
    KINESIS_PORT="$(bash "$E2E_PEERS" start "$server" "$E2E_DIR")" ||
        e2e_fail "$server did not start: see $E2E_DIR/$server.log; run 'bash tools/peers.sh install' if the npm packages are missing"
    MOSQUITTO_PORT="$(bash "$E2E_PEERS" start mosquitto "$E2E_DIR")" ||
        e2e_fail "mosquitto did not start: see $E2E_DIR/mosquitto.log; install the Debian package mosquitto if it is missing"
    e2e_log "$server on 127.0.0.1:$KINESIS_PORT, mosquitto on 127.0.0.1:$MOSQUITTO_PORT"
}

# e2e_start_fault_proxy NAME: start tests/kinesis-fault-proxy.js in front of
# the Kinesis server of e2e_start_peers and set FAULT_PROXY_PORT. The proxy
# reads its rules from E2E_DIR/NAME-rules.json, which does not exist (no
# faults) until e2e_set_fault_rules writes it, and appends every request
# and GetRecords reply to E2E_DIR/NAME-requests.jsonl.
e2e_start_fault_proxy() {
    local name="$1"
    local port_file="$E2E_DIR/$name.port"
    rm -f "$port_file"
    e2e_start_bg "$name" node -r "$E2E_SOURCE_DIR/tools/force-loopback.cjs" "$E2E_FAULT_PROXY" \
        "$KINESIS_PORT" "$E2E_DIR/$name-rules.json" "$E2E_DIR/$name-requests.jsonl" "$port_file"
    local pid="$E2E_LAST_PID" deadline=$((SECONDS + 15))
    until [[ -s "$port_file" ]]; do
        e2e_pid_alive "$pid" ||
            e2e_fail "the fault proxy $name exited before it wrote its port: see $E2E_DIR/$name.log"
        ((SECONDS < deadline)) ||
            e2e_fail "the fault proxy $name wrote no port to $port_file within 15s: see $E2E_DIR/$name.log"
        sleep 0.1
    done
    FAULT_PROXY_PORT="$(cat "$port_file")"
    e2e_log "fault proxy $name on 127.0.0.1:$FAULT_PROXY_PORT in front of port $KINESIS_PORT"
}

# e2e_set_fault_rules NAME JSON: replace the rules of the fault proxy NAME.
# The file is renamed into place, so the proxy never reads half of it, and
# the proxy applies the rules from its next request on with fresh counters.
e2e_set_fault_rules() {
    local name="$1" rules="$2"
    local file="$E2E_DIR/$name-rules.json"
    printf '%s\n' "$rules" >"$file.tmp"
    mv "$file.tmp" "$file"
}

e2e_kinesis() {
    bash "$E2E_KINESIS_CALL" "$KINESIS_PORT" "$@"
}

# e2e_put_record STREAM DATA PARTITION_KEY [EXPLICIT_HASH_KEY]: put one
# record straight to the Kinesis server and print "SHARD_ID SEQUENCE_NUMBER".
e2e_put_record() {
    local stream="$1" data="$2" partition_key="$3" hash_key="${4:-}"
    local body reply
    body="{\"StreamName\":\"$stream\",\"PartitionKey\":\"$partition_key\",\"Data\":\"$(printf '%s' "$data" | base64 -w0)\""
    [[ -z "$hash_key" ]] || body+=",\"ExplicitHashKey\":\"$hash_key\""
    body+="}"
    reply="$(e2e_kinesis PutRecord "$body" 2>&1)" ||
        e2e_fail "PutRecord to $stream on port $KINESIS_PORT failed: $reply"
    if [[ "$reply" =~ \"ShardId\":\"([^\"]+)\" ]]; then
        local shard="${BASH_REMATCH[1]}"
        if [[ "$reply" =~ \"SequenceNumber\":\"([0-9]+)\" ]]; then
            echo "$shard ${BASH_REMATCH[1]}"
            return 0
        fi
    fi
    e2e_fail "PutRecord to $stream returned no ShardId and SequenceNumber: $reply"
}

# e2e_put_records STREAM PARTITION_KEY DATA_BASE64 [PARTITION_KEY DATA_BASE64]...:
# put the records with one PutRecords call straight to the Kinesis server
# and print "SHARD_ID SEQUENCE_NUMBER" for each, in the order given. Fails
# the test when any record was not put.
e2e_put_records() {
    local stream="$1"
    shift
    (($# > 0 && $# % 2 == 0)) ||
        e2e_fail "e2e_put_records expects PARTITION_KEY DATA_BASE64 pairs after the stream name, got $# arguments"
    local count=$(($# / 2)) body="{\"StreamName\":\"$stream\",\"Records\":[" separator="" reply
    while (($# > 0)); do
        body+="$separator{\"PartitionKey\":\"$1\",\"Data\":\"$2\"}"
        separator=","
        shift 2
    done
    body+="]}"
    reply="$(e2e_kinesis PutRecords "$body" 2>&1)" ||
        e2e_fail "PutRecords of $count records to $stream on port $KINESIS_PORT failed: $reply"
    node -e '
        const [text, count] = process.argv.slice(1);
        const reply = JSON.parse(text);
        const records = reply.Records ?? [];
        if (reply.FailedRecordCount !== 0 || records.length !== Number(count)) {
            console.error(`expected ${count} records put, got FailedRecordCount ${reply.FailedRecordCount} and ${records.length} results`);
            process.exit(1);
        }
        for (const record of records) {
            console.log(`${record.ShardId} ${record.SequenceNumber}`);
        }
    ' "$reply" "$count" ||
        e2e_fail "PutRecords to $stream did not put every record: $reply"
}

# e2e_sql DB SQL: run a query on podium's store while podium writes to it,
# waiting up to 5 s for its locks.
e2e_sql() {
    sqlite3 -cmd '.timeout 5000' "$1" "$2"
}

# e2e_samples DB [OPTIONS]: print the stored samples of DB as
# `podium query samples` does, one JSON object per line, or nothing when it
# has none. OPTIONS go to the query (--race ID, --racer ID, --second N).
e2e_samples() {
    local db="$1" err="$E2E_DIR/query-samples.err" rc=0
    shift
    "$PODIUM_BIN" query samples --set "store.path=$db" "$@" 2>"$err" || rc=$?
    if ((rc == 1)) && grep -q "^podium query: no samples stored" "$err"; then
        return 0
    fi
    ((rc == 0)) || e2e_fail "podium query samples failed on $db: $(cat "$err")"
}

# e2e_sample_count DB: the number of stored samples of DB.
e2e_sample_count() {
    local rows
    rows="$(e2e_samples "$1")"
    if [[ -z "$rows" ]]; then
        echo 0
    else
        wc -l <<<"$rows"
    fi
}

# e2e_uuid_count DB UUID: how many stored samples of DB have this uuid.
e2e_uuid_count() {
    local rows
    rows="$(e2e_samples "$1")"
    grep -cF "\"uuid\":\"$2\"," <<<"$rows" || true
}

# e2e_sample_rows DB TEMPLATE: print TEMPLATE, a JavaScript template
# literal, for each stored sample s of DB. u(n) gives n in 1/10000, and
# j(v) the JSON text of an id, as the records write it.
e2e_sample_rows() {
    local rows="$E2E_DIR/sample-rows.jsonl"
    e2e_samples "$1" >"$rows"
    node -e '
        const fs = require("fs");
        const u = (n) => Math.round(n * 10000);
        const j = (v) => JSON.stringify(v);
        const row = new Function("s", "u", "j", "return `" + process.argv[2] + "`;");
        for (const line of fs.readFileSync(process.argv[1], "utf8").split("\n")) {
            if (line !== "") console.log(row(JSON.parse(line), u, j));
        }
    ' "$rows" "$2"
}

# Create a stream and wait until it is ACTIVE.
e2e_create_stream() {
    local stream="$1" shards="$2"
    e2e_kinesis CreateStream "{\"StreamName\":\"$stream\",\"ShardCount\":$shards}" >/dev/null ||
        e2e_fail "CreateStream $stream with $shards shards failed on $KINESIS_SERVER port $KINESIS_PORT"
    local deadline=$((SECONDS + 15)) summary=""
    while ((SECONDS < deadline)); do
        summary="$(e2e_kinesis DescribeStreamSummary "{\"StreamName\":\"$stream\"}" 2>&1)" || true
        if [[ "$summary" == *'"StreamStatus":"ACTIVE"'* ]]; then
            return 0
        fi
        sleep 0.1
    done
    e2e_fail "stream $stream did not become ACTIVE within 15s; last DescribeStreamSummary: $summary"
}

# Remember a background process for cleanup. E2E_DIR/processes.txt gets a
# line "PID EXECUTABLE", so tools/test.sh can stop the process when ctest
# kills this script on a timeout before its trap runs.
e2e_track_pid() {
    local pid="$1" executable="$2"
    E2E_BG_PIDS+=("$pid")
    echo "$pid $(readlink -f "$(command -v "$executable")")" >>"$E2E_DIR/processes.txt"
}

# Start a command in the background with stdout and stderr in
# E2E_DIR/NAME.log. Sets E2E_LAST_PID; cleanup stops the process.
e2e_start_bg() {
    local name="$1"
    shift
    "$@" </dev/null >>"$E2E_DIR/$name.log" 2>&1 &
    E2E_LAST_PID=$!
    e2e_track_pid "$E2E_LAST_PID" "$1"
}

# Subscribe to podium/# with QoS 1; every message becomes a line
# "TOPIC PAYLOAD" in FILE. Returns once a probe message published to
# podium/e2e-probe shows up in FILE, so no later message can be missed.
e2e_start_capture() {
    local file="$1"
    : >"$file"
    mosquitto_sub -h 127.0.0.1 -p "$MOSQUITTO_PORT" -t 'podium/#' -q 1 -v \
        </dev/null >"$file" 2>>"$E2E_DIR/mosquitto_sub.log" &
    E2E_LAST_PID=$!
    e2e_track_pid "$E2E_LAST_PID" mosquitto_sub

    local deadline=$((SECONDS + 15))
    while ! grep -q '^podium/e2e-probe ' "$file"; do
        if ((SECONDS >= deadline)); then
            e2e_fail "mosquitto_sub on port $MOSQUITTO_PORT received no probe message within 15s: see $E2E_DIR/mosquitto_sub.log"
        fi
        mosquitto_pub -h 127.0.0.1 -p "$MOSQUITTO_PORT" -q 1 -t podium/e2e-probe -m probe ||
            e2e_fail "mosquitto_pub to port $MOSQUITTO_PORT failed"
        sleep 0.2
    done
}

# True while pid runs and is not a zombie.
e2e_pid_alive() {
    local pid="$1"
    [[ -r "/proc/$pid/stat" ]] || return 1
    local state
    # The state follows the command name, which is in parentheses.
    state="$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
    [[ -n "$state" && "$state" != Z ]]
}

# e2e_wait_for SECONDS DESCRIPTION COMMAND...: run COMMAND every 0.2 s until
# it succeeds; fail the test when SECONDS pass first.
e2e_wait_for() {
    local timeout_s="$1" description="$2"
    shift 2
    local deadline=$((SECONDS + timeout_s))
    while ! "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            e2e_fail "timed out after ${timeout_s}s waiting for: $description"
        fi
        sleep 0.2
    done
}

# Print the number of lines in a file (0 when it does not exist).
e2e_line_count() {
    local file="$1"
    if [[ -f "$file" ]]; then
        wc -l <"$file"
    else
        echo 0
    fi
}

# Wait up to SECONDS for pid to exit and return its exit status; fail the
# test when it still runs then.
e2e_wait_exit() {
    local pid="$1" timeout_s="$2" what="$3"
    local deadline=$((SECONDS + timeout_s))
    while e2e_pid_alive "$pid"; do
        if ((SECONDS >= deadline)); then
            e2e_fail "$what (pid $pid) still runs ${timeout_s}s after SIGTERM"
        fi
        sleep 0.1
    done
    local status=0
    wait "$pid" || status=$?
    return "$status"
}

e2e_checker() {
    node "$E2E_CHECKER" "$@" --port "$KINESIS_PORT"
}

# The settings every podium run of the tests uses. The HTTP server for
# health and metrics takes a free port so that tests can run in parallel.
e2e_podium_run_settings() {
    local stream="$1"
    printf '%s\n' \
        --set "stream.name=$stream" \
        --set "kinesis.endpoint=http://127.0.0.1:$KINESIS_PORT" \
        --set "store.path=$E2E_DIR/podium.db" \
        --set publish.transport=mqtt \
        --set "mqtt.url=mqtt://127.0.0.1:$MOSQUITTO_PORT" \
        --set race.idle_close_s=3 \
        --set kinesis.poll_interval_ms=200 \
        --set http.listen=127.0.0.1:0
}

# e2e_podium_http_port LOG: wait up to 15 s until the podium run writing
# LOG logged the address of its HTTP server, and print the port.
e2e_podium_http_port() {
    local log="$1" deadline=$((SECONDS + 15)) line
    while ((SECONDS < deadline)); do
        line="$(grep -o 'HTTP server listening on 127\.0\.0\.1:[0-9]*' "$log" | head -n 1 || true)"
        if [[ -n "$line" ]]; then
            echo "${line##*:}"
            return 0
        fi
        sleep 0.1
    done
    e2e_fail "podium logged no \"HTTP server listening on\" line within 15s: see $log"
}

# e2e_metric PORT SERIES: print the value of the sample SERIES (name and
# labels exactly as podium writes them) from /metrics on PORT; returns 1
# when the sample is missing.
e2e_metric() {
    local port="$1" series="$2" body
    body="$(curl -s --max-time 10 "http://127.0.0.1:$port/metrics")" || return 1
    awk -v series="$series" '$1 == series { print $2; found = 1 } END { exit !found }' <<<"$body"
}

# ---- MQTT over TLS (peer mosquitto-tls) ----

# The port of the peer mosquitto-tls and the folder of its certificates,
# set by e2e_start_mosquitto_tls.
MOSQUITTO_TLS_PORT=""
E2E_TLS_DIR=""

# Start the peer mosquitto-tls, with throw-away certificates in
# E2E_DIR/tls (see tools/make-test-certs.sh for the files).
e2e_start_mosquitto_tls() {
    MOSQUITTO_TLS_PORT="$(bash "$E2E_PEERS" start mosquitto-tls "$E2E_DIR")" ||
        e2e_fail "mosquitto-tls did not start: see $E2E_DIR/mosquitto-tls.log; install the Debian packages mosquitto and openssl if they are missing"
    E2E_TLS_DIR="$E2E_DIR/tls"
    e2e_log "mosquitto-tls on 127.0.0.1:$MOSQUITTO_TLS_PORT, certificates in $E2E_TLS_DIR"
}

# Print, one a line, the arguments of mosquitto_sub and mosquitto_pub that
# connect to mosquitto-tls with the client certificate NAME (default
# client).
e2e_tls_client_args() {
    local name="${1:-client}"
    printf '%s\n' -h 127.0.0.1 -p "$MOSQUITTO_TLS_PORT" \
        --cafile "$E2E_TLS_DIR/ca.pem" \
        --cert "$E2E_TLS_DIR/$name.pem" --key "$E2E_TLS_DIR/$name.key"
}

# e2e_start_tls_capture FILE: e2e_start_capture over TLS, against
# mosquitto-tls with the client certificate "client".
e2e_start_tls_capture() {
    local file="$1" args=()
    mapfile -t args < <(e2e_tls_client_args)
    : >"$file"
    mosquitto_sub "${args[@]}" -t 'podium/#' -q 1 -v \
        </dev/null >"$file" 2>>"$E2E_DIR/mosquitto_sub.log" &
    E2E_LAST_PID=$!
    e2e_track_pid "$E2E_LAST_PID" mosquitto_sub

    local deadline=$((SECONDS + 15))
    while ! grep -q '^podium/e2e-probe ' "$file"; do
        if ((SECONDS >= deadline)); then
            e2e_fail "mosquitto_sub on TLS port $MOSQUITTO_TLS_PORT received no probe message within 15s: see $E2E_DIR/mosquitto_sub.log and $E2E_DIR/mosquitto-tls.log"
        fi
        mosquitto_pub "${args[@]}" -q 1 -t podium/e2e-probe -m probe ||
            e2e_fail "mosquitto_pub to TLS port $MOSQUITTO_TLS_PORT failed"
        sleep 0.2
    done
}

# Print the --set flags that make podium publish to mosquitto-tls over
# mqtts:// with the client certificate NAME (default client). They go after
# e2e_podium_run_settings, whose mqtt.url they override.
e2e_podium_tls_settings() {
    local name="${1:-client}"
    printf '%s\n' \
        --set "mqtt.url=mqtts://127.0.0.1:$MOSQUITTO_TLS_PORT" \
        --set "mqtt.ca_file=$E2E_TLS_DIR/ca.pem" \
        --set "mqtt.cert_file=$E2E_TLS_DIR/$name.pem" \
        --set "mqtt.key_file=$E2E_TLS_DIR/$name.key"
}

# e2e_expect_no_key_material FILE: fail when FILE contains a line of the
# base64 body of any private key in E2E_TLS_DIR.
e2e_expect_no_key_material() {
    local file="$1" key line
    for key in "$E2E_TLS_DIR"/*.key; do
        while IFS= read -r line; do
            [[ "$line" == -----* || ${#line} -lt 16 ]] && continue
            if grep -qF -- "$line" "$file"; then
                e2e_fail "$file contains a line of the private key $key, which must never be logged"
            fi
        done <"$key"
    done
}

# ---- Alleycat messages and a TCP gate ----

# e2e_start_alleycat_capture FILE [TOPIC]: like e2e_start_capture, and
# subscribed to TOPIC (default alleycat-subscribe) on the same connection,
# so FILE has the Alleycat messages in arrival order among podium/#.
e2e_start_alleycat_capture() {
    local file="$1" topic="${2:-alleycat-subscribe}"
    : >"$file"
    mosquitto_sub -h 127.0.0.1 -p "$MOSQUITTO_PORT" -t 'podium/#' -t "$topic" -q 1 -v \
        </dev/null >"$file" 2>>"$E2E_DIR/mosquitto_sub.log" &
    E2E_LAST_PID=$!
    e2e_track_pid "$E2E_LAST_PID" mosquitto_sub

    local deadline=$((SECONDS + 15))
    while ! grep -q '^podium/e2e-probe ' "$file"; do
        ((SECONDS < deadline)) ||
            e2e_fail "mosquitto_sub on port $MOSQUITTO_PORT received no probe message within 15s: see $E2E_DIR/mosquitto_sub.log"
        mosquitto_pub -h 127.0.0.1 -p "$MOSQUITTO_PORT" -q 1 -t podium/e2e-probe -m probe ||
            e2e_fail "mosquitto_pub to port $MOSQUITTO_PORT failed"
        sleep 0.2
    done
}

# The port and pid of the gate that e2e_start_tcp_gate started last.
TCP_GATE_PORT=""
TCP_GATE_PID=""

# e2e_start_tcp_gate NAME TARGET_PORT: start tests/e2e/tcp-gate.mjs in
# front of TARGET_PORT, open, and set TCP_GATE_PORT and TCP_GATE_PID.
# e2e_tcp_gate close|open then takes the target away and brings it back.
e2e_start_tcp_gate() {
    local name="$1" target="$2"
    local port_file="$E2E_DIR/$name.port"
    rm -f "$port_file"
    e2e_start_bg "$name" node "$E2E_LIB_DIR/tcp-gate.mjs" "$target" "$port_file"
    TCP_GATE_PID="$E2E_LAST_PID"
    local deadline=$((SECONDS + 15))
    until [[ -s "$port_file" ]]; do
        e2e_pid_alive "$TCP_GATE_PID" ||
            e2e_fail "the TCP gate $name exited before it wrote its port: see $E2E_DIR/$name.log"
        ((SECONDS < deadline)) ||
            e2e_fail "the TCP gate $name wrote no port to $port_file within 15s: see $E2E_DIR/$name.log"
        sleep 0.1
    done
    TCP_GATE_PORT="$(cat "$port_file")"
    e2e_log "TCP gate $name on 127.0.0.1:$TCP_GATE_PORT in front of port $target"
}

e2e_tcp_gate() {
    case "$1" in
    close) kill -USR1 "$TCP_GATE_PID" ;;
    open) kill -USR2 "$TCP_GATE_PID" ;;
    *) e2e_fail "e2e_tcp_gate expects close or open, got '$1'" ;;
    esac
}
