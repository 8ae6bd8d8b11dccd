#!/usr/bin/env bash
# The container's entry point without a container engine. The test builds
# podium with tools/container-build.sh, the build step of the Dockerfile,
# and starts tools/container-entrypoint.sh as the invoking user. Its
# environment holds only PATH, HOME, the AWS variables and PODIUM_*
# variables: the image's ENV values, with the HTTP server on loopback and
# the store in a temporary folder in place of the volume.
#
# podium must log JSON lines, and write its EMF lines, to standard output
# only. `podium healthcheck`, the image's HEALTHCHECK, must exit 1 while
# nothing listens, and while Kinesis is out of reach behind a closed TCP
# gate. It must exit 0 once podium is ready, and 1 again after podium
# stopped. The records put meanwhile must be published to mosquitto.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STREAM=e2e-container
DOCKERFILE="$E2E_SOURCE_DIR/Dockerfile"
PREFIX=""
# The environment of every command that the image would run.
CONTAINER_ENV=()

# Print the value that the runtime stage of the Dockerfile gives NAME.
image_env() {
    local name="$1"
    awk '/^FROM / { n++ } n == 2' "$DOCKERFILE" | grep -o "$name=[^ \\]*" | head -n 1 | cut -d= -f2-
}

free_port() {
    node -e '
        const server = require("net").createServer();
        server.listen(0, "127.0.0.1", () => {
            console.log(server.address().port);
            server.close();
        });
    '
}

# Run a command of the image: the entry point with ARGS, in the
# container's environment.
in_container() {
    env -i "${CONTAINER_ENV[@]}" bash "$E2E_SOURCE_DIR/tools/container-entrypoint.sh" "$@"
}

healthcheck_status() {
    local status=0
    in_container healthcheck >>"$E2E_DIR/healthcheck.log" 2>&1 || status=$?
    echo "$status"
}

healthy() {
    [[ "$(healthcheck_status)" == 0 ]]
}

# telemetry UUID RACER SECOND: print one telemetry record, base64.
telemetry_base64() {
    local uuid="$1" racer="$2" second="$3"
    printf '{"uuid":"%s","event":"update","deviceTimestamp":%d,"second":%d,"raceId":"R-3","name":"Racer %s","racerId":"%s","classId":"A","cadence":90,"resistance":40}' \
        "$uuid" $((1767225600000 + second * 1000)) "$second" "$racer" "$racer" | base64 -w0
}

main() {
    e2e_init e2e_container
    [[ ! -e /etc/podium/podium.conf ]] ||
        e2e_fail "/etc/podium/podium.conf exists, and podium would read it: this test needs a configuration from the environment only"

    PREFIX="$E2E_DIR/opt/podium"
    e2e_log "building with tools/container-build.sh"
    bash "$E2E_SOURCE_DIR/tools/container-build.sh" "$PREFIX" >"$E2E_DIR/build.log" 2>&1 ||
        e2e_fail "tools/container-build.sh failed: see $E2E_DIR/build.log"
    [[ -x "$PREFIX/bin/podium" ]] || e2e_fail "tools/container-build.sh installed no $PREFIX/bin/podium"

    local image_listen image_store
    image_listen="$(image_env PODIUM_HTTP_LISTEN)"
    image_store="$(image_env PODIUM_STORE_PATH)"
    [[ "$image_listen" == 0.0.0.0:* ]] ||
        e2e_fail "the image sets PODIUM_HTTP_LISTEN=$image_listen, expected 0.0.0.0:PORT"
    [[ -n "$image_store" ]] || e2e_fail "the image sets no PODIUM_STORE_PATH"
    # Servers of the tests listen on loopback only, so the image's 0.0.0.0
    # becomes 127.0.0.1 with a free port.
    local port volume="$E2E_DIR/volume"
    port="$(free_port)"
    mkdir -p "$volume"

    e2e_start_peers
    e2e_create_stream "$STREAM" 2
    e2e_start_tcp_gate kinesis-gate "$KINESIS_PORT"
    e2e_tcp_gate close

    CONTAINER_ENV=(
        "PATH=$PREFIX/bin:/usr/bin:/bin" "HOME=$E2E_DIR"
        "AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY"
        "AWS_REGION=$AWS_REGION"
        "PODIUM_HTTP_LISTEN=127.0.0.1:$port"
        "PODIUM_STORE_PATH=$E2E_DIR/missing/$(basename "$image_store")"
        "PODIUM_STREAM_NAME=$STREAM"
        "PODIUM_KINESIS_ENDPOINT=http://127.0.0.1:$TCP_GATE_PORT"
        "PODIUM_MQTT_URL=mqtt://127.0.0.1:$MOSQUITTO_PORT"
        "PODIUM_RACE_IDLE_CLOSE_S=3"
        "PODIUM_KINESIS_POLL_INTERVAL_MS=200"
        "PODIUM_METRICS_EMF=on"
        "PODIUM_METRICS_EMF_INTERVAL_S=1"
    )

    # A store folder that does not exist stops the entry point with a
    # message, before podium starts.
    local status=0 out
    out="$(in_container 2>&1)" || status=$?
    [[ $status -eq 2 ]] || e2e_fail "the entry point exited $status without the store folder, expected 2: $out"
    [[ "$out" == *"$E2E_DIR/missing"*"does not exist"* ]] ||
        e2e_fail "the entry point did not say that the store folder is missing: $out"
    CONTAINER_ENV=("${CONTAINER_ENV[@]/PODIUM_STORE_PATH=*/PODIUM_STORE_PATH=$volume/$(basename "$image_store")}")

    out="$(in_container version 2>&1)" || e2e_fail "the entry point with \"version\" failed: $out"
    [[ "$out" == "podium "* ]] || e2e_fail "the entry point with \"version\" printed \"$out\", expected podium's version"

    status="$(healthcheck_status)"
    [[ $status -eq 1 ]] || e2e_fail "podium healthcheck exited $status while nothing listens, expected 1: see $E2E_DIR/healthcheck.log"

    local stdout="$E2E_DIR/stdout.log" stderr="$E2E_DIR/stderr.log"
    # Not through in_container, so that $! is the process that becomes
    # podium: env execs the entry point, which execs podium.
    env -i "${CONTAINER_ENV[@]}" bash "$E2E_SOURCE_DIR/tools/container-entrypoint.sh" \
        </dev/null >"$stdout" 2>"$stderr" &
    local podium_pid=$!
    e2e_track_pid "$podium_pid" "$PREFIX/bin/podium"
    e2e_wait_for 15 "podium logs its HTTP server on standard output" \
        grep -q "HTTP server listening on 127.0.0.1:$port" "$stdout"

    status="$(healthcheck_status)"
    [[ $status -eq 1 ]] ||
        e2e_fail "podium healthcheck exited $status while Kinesis is out of reach, expected 1: see $E2E_DIR/healthcheck.log"
    grep -q 'returned 503' "$E2E_DIR/healthcheck.log" ||
        e2e_fail "podium healthcheck did not report the 503 of /readyz: see $E2E_DIR/healthcheck.log"
    e2e_log "podium healthcheck exits 1 while nothing listens and while podium is not ready"

    local capture="$E2E_DIR/capture.txt"
    e2e_start_capture "$capture"
    e2e_tcp_gate open
    e2e_wait_for 30 "podium healthcheck exits 0 after the gate opened" healthy
    e2e_log "podium healthcheck exits 0 once podium is ready"

    local records=() i
    for ((i = 1; i <= 8; i++)); do
        records+=("p-$i" "$(telemetry_base64 "c-$i" $((i % 4)) $(((i - 1) / 4 + 1)))")
    done
    e2e_put_records "$STREAM" "${records[@]}" >/dev/null
    e2e_wait_for 60 "a leaderboard of race R-3 on mosquitto" grep -q '^podium/races/R-3/leaderboard ' "$capture"
    e2e_wait_for 15 "an EMF line that counts the records" grep -q '"RecordsRead":[1-9]' "$stdout"

    # The entry point runs podium in its own process (exec), as the
    # invoking user, with the store on the volume.
    local uid
    uid="$(awk '/^Uid:/ { print $2 }' "/proc/$podium_pid/status")"
    [[ "$uid" == "$(id -u)" ]] || e2e_fail "podium runs as uid $uid, expected the invoking user's $(id -u)"
    [[ "$(readlink -f "/proc/$podium_pid/exe")" == "$(readlink -f "$PREFIX/bin/podium")" ]] ||
        e2e_fail "process $podium_pid is $(readlink -f "/proc/$podium_pid/exe"), expected the entry point to exec $PREFIX/bin/podium"
    [[ -s "$volume/$(basename "$image_store")" ]] || e2e_fail "podium created no store in the volume $volume"

    kill -TERM "$podium_pid"
    status=0
    e2e_wait_exit "$podium_pid" 20 "podium run" || status=$?
    [[ $status -eq 0 ]] || e2e_fail "podium exited with status $status after SIGTERM, expected 0: see $stdout"
    status="$(healthcheck_status)"
    [[ $status -eq 1 ]] || e2e_fail "podium healthcheck exited $status after podium stopped, expected 1"
    e2e_log "podium stops on SIGTERM, and podium healthcheck exits 1 after"

    [[ ! -s "$stderr" ]] || e2e_fail "podium wrote to standard error, expected everything on standard output: see $stderr"
    node -e '
        const lines = require("fs").readFileSync(process.argv[1], "utf8").split("\n").filter((l) => l !== "");
        let logs = 0, emf = 0;
        lines.forEach((line, i) => {
            let doc;
            try {
                doc = JSON.parse(line);
            } catch (e) {
                console.error(`line ${i + 1} of standard output is not JSON: ${line}`);
                process.exit(1);
            }
            if (typeof doc.level === "string" && typeof doc.message === "string") logs++;
            else if (typeof doc._aws === "object") emf++;
            else {
                console.error(`line ${i + 1} of standard output is neither a log line nor an EMF line: ${line}`);
                process.exit(1);
            }
        });
        if (!lines.some((l) => l.includes("received signal 15"))) {
            console.error("standard output has no log line of the stop");
            process.exit(1);
        }
        console.log(`${logs} log lines and ${emf} EMF lines on standard output`);
        if (logs === 0 || emf === 0) process.exit(1);
    ' "$stdout" || e2e_fail "standard output is not JSON log and EMF lines: see the line above and $stdout"
    e2e_log "passed"
}

main "$@"
