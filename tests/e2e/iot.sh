#!/usr/bin/env bash
# End to end with publish.transport=iot. podium simulate puts 30 riders x
# 40 seconds in 2 classes to a 2-shard kinesalite stream; podium run
# publishes the leaderboards to tests/iot-publish-server.js, a stand-in for
# the AWS IoT data plane that checks every request's SigV4 signature with
# the smithy signer and fails some of the first requests with 500, 503,
# 429, 403, connection resets and slow replies. The checker then compares what the
# server accepted with the leaderboards it computes from the stream, and
# podium's log must not contain the secret key, the session token or a
# signature.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STREAM=e2e-iot
SECONDS_PER_RACE=40
IOT_SERVER="$E2E_SOURCE_DIR/tests/iot-publish-server.js"

# Credentials that only this test uses, so a match in the log is a leak.
# kinesalite accepts any signature and ignores the session token.
export AWS_SECRET_ACCESS_KEY='e2eIotSecret/Key+NotAnywhereElse0123'
export AWS_SESSION_TOKEN='e2eIotSessionToken/OnlyHere+0123=='

# Start the IoT server and set IOT_PORT once it has written its port.
start_iot_server() {
    local port_file="$E2E_DIR/iot.port"
    e2e_start_bg iot-server node -r "$E2E_SOURCE_DIR/tools/force-loopback.cjs" "$IOT_SERVER" \
        --port-file "$port_file" --log "$E2E_DIR/iot-requests.jsonl" \
        --rules "$E2E_DIR/iot-rules.json" --capture "$E2E_DIR/capture.txt"
    local pid="$E2E_LAST_PID" deadline=$((SECONDS + 15))
    until [[ -s "$port_file" ]]; do
        e2e_pid_alive "$pid" ||
            e2e_fail "the IoT server exited before it wrote its port: see $E2E_DIR/iot-server.log; run 'bash tools/peers.sh install' if npm packages are missing"
        ((SECONDS < deadline)) ||
            e2e_fail "the IoT server wrote no port to $port_file within 15s: see $E2E_DIR/iot-server.log"
        sleep 0.1
    done
    IOT_PORT="$(cat "$port_file")"
    e2e_log "IoT server on 127.0.0.1:$IOT_PORT"
}

# Print a summary of the server's request log and fail when any request
# had a bad signature or no fault rule fired.
check_requests() {
    node -e '
        const lines = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n");
        const requests = lines.map((line) => JSON.parse(line));
        const bad = requests.filter((r) => r.signature !== "ok");
        const faults = {};
        for (const r of requests) if (r.fault) faults[r.fault] = (faults[r.fault] || 0) + 1;
        const published = requests.filter((r) => r.published).length;
        console.log(`${requests.length} requests, ${published} published, faults ${JSON.stringify(faults)}`);
        if (bad.length > 0) {
            console.error(`${bad.length} requests had a bad signature, the first: ${JSON.stringify(bad[0])}`);
            process.exit(1);
        }
        for (const f of ["500", "503", "429", "403", "reset", "slow"]) {
            if (!faults[f]) { console.error(`the fault ${f} never fired`); process.exit(1); }
        }
    ' "$E2E_DIR/iot-requests.jsonl"
}

# Fail when podium's log contains a credential or a signature.
check_log_has_no_secrets() {
    local log="$E2E_DIR/podium.log" needle
    for needle in "$AWS_SECRET_ACCESS_KEY" "$AWS_SESSION_TOKEN" "Signature=" "AWS4-HMAC-SHA256"; do
        if grep -qF -- "$needle" "$log"; then
            e2e_fail "podium's log $log contains '${needle:0:12}...', which must never be logged"
        fi
    done
    if grep -qi 'authorization' "$log"; then
        e2e_fail "podium's log $log mentions an Authorization header"
    fi
    grep -q '"level":"warn".*HTTP 429' "$log" ||
        e2e_fail "podium's log $log has no warning for the HTTP 429 replies"
}

main() {
    e2e_init e2e_iot
    KINESIS_SERVER=kinesalite
    KINESIS_PORT="$(bash "$E2E_PEERS" start kinesalite "$E2E_DIR")" ||
        e2e_fail "kinesalite did not start: see $E2E_DIR/kinesalite.log; run 'bash tools/peers.sh install' if the npm packages are missing"
    e2e_log "kinesalite on 127.0.0.1:$KINESIS_PORT"
    e2e_create_stream "$STREAM" 2

    # Faults spread over the first 60 requests with successes between
    # them. A long run of failures would make podium pause for up to 30 s,
    # as it should when the endpoint is down.
    printf '%s\n' '[{"fault":"500","skip":2,"times":1},
        {"fault":"429","skip":5,"times":2},
        {"fault":"403","skip":10,"times":1},
        {"fault":"reset","skip":15,"times":1},
        {"fault":"slow","delay_ms":300,"skip":20,"times":5},
        {"fault":"503","skip":30,"times":1},
        {"fault":"429","skip":40,"times":1},
        {"fault":"500","skip":50,"times":2}]' >"$E2E_DIR/iot-rules.json"
    start_iot_server

    e2e_log "podium simulate: 30 riders, $SECONDS_PER_RACE seconds, 2 classes, 5% duplicates"
    "$PODIUM_BIN" simulate --racers 30 --seconds "$SECONDS_PER_RACE" --classes 2 --seed 11 \
        --duplicates 0.05 --stream "$STREAM" \
        --set "kinesis.endpoint=http://127.0.0.1:$KINESIS_PORT" \
        </dev/null >>"$E2E_DIR/simulate.log" 2>&1 ||
        e2e_fail "podium simulate exited with status $?: see $E2E_DIR/simulate.log"

    e2e_log "podium run with publish.transport=iot"
    e2e_start_bg podium "$PODIUM_BIN" run \
        --set "stream.name=$STREAM" \
        --set "kinesis.endpoint=http://127.0.0.1:$KINESIS_PORT" \
        --set "store.path=$E2E_DIR/podium.db" \
        --set publish.transport=iot \
        --set "iot.endpoint=http://127.0.0.1:$IOT_PORT" \
        --set race.idle_close_s=3 \
        --set kinesis.poll_interval_ms=200 \
        --set http.listen=127.0.0.1:0 \
        --set log.level=debug
    local podium_pid="$E2E_LAST_PID"

    e2e_checker wait --stream "$STREAM" --capture "$E2E_DIR/capture.txt" \
        --seconds "$SECONDS_PER_RACE" --idle-s 3 --timeout-s 180 ||
        e2e_fail "not every leaderboard reached the IoT server: see the checker's message above and $E2E_DIR/podium.log"

    e2e_pid_alive "$podium_pid" ||
        e2e_fail "podium run exited before SIGTERM: see $E2E_DIR/podium.log"
    kill -TERM "$podium_pid"
    local status=0
    e2e_wait_exit "$podium_pid" 10 "podium run" || status=$?
    if [[ $status -ne 0 ]]; then
        e2e_fail "podium run exited with status $status after SIGTERM, expected 0: see $E2E_DIR/podium.log"
    fi
    e2e_log "podium run exited 0 after SIGTERM"

    e2e_checker verify --stream "$STREAM" --capture "$E2E_DIR/capture.txt" \
        --seconds "$SECONDS_PER_RACE" ||
        e2e_fail "the leaderboards the IoT server accepted do not match the rules: see the checker's messages above"
    check_requests || e2e_fail "the IoT server's request log $E2E_DIR/iot-requests.jsonl fails the checks above"
    check_log_has_no_secrets
    e2e_log "passed"
}

main "$@"
