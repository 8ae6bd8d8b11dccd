#!/usr/bin/env bash
# End to end over MQTT with TLS and client certificates, as AWS IoT Core
# requires them. podium simulate puts 20 riders x 30 seconds in 2 classes
# to a 2-shard kinesalite stream, and podium run publishes to the peer
# mosquitto-tls, which accepts only clients with a certificate of the test
# CA.
#
# 1. TLS files that are missing or do not belong together are configuration
#    errors: podium run exits 2 and names the setting and the file.
# 2. With a client certificate of another CA, the broker rejects every
#    handshake: podium logs the failure as an error, publishes nothing and
#    keeps the leaderboards in its outbox.
# 3. With the right certificate, on the same store, every leaderboard
#    arrives, and the checker compares them with the rules.
# No file that podium wrote may contain a line of a private key.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STREAM=e2e-tls
SECONDS_PER_RACE=30

# expect_config_error NAME EXPECTED SETTING...: podium run with the TLS
# settings of e2e_podium_tls_settings followed by SETTING... must exit 2
# and print EXPECTED.
expect_config_error() {
    local name="$1" expected="$2"
    shift 2
    local out="$E2E_DIR/$name.out" settings=() tls=() status=0
    mapfile -t settings < <(e2e_podium_run_settings "$STREAM")
    mapfile -t tls < <(e2e_podium_tls_settings)
    "$PODIUM_BIN" run "${settings[@]}" "${tls[@]}" "$@" </dev/null >"$out" 2>&1 || status=$?
    [[ $status -eq 2 ]] ||
        e2e_fail "podium run with $name exited with status $status, expected 2: see $out"
    grep -qF -- "$expected" "$out" ||
        e2e_fail "podium run with $name did not print '$expected'; it printed: $(cat "$out")"
    e2e_expect_no_key_material "$out"
    e2e_log "$name: exit 2, $(head -n 1 "$out")"
}

# Stop podium run with SIGTERM and fail unless it exits 0.
stop_podium() {
    local pid="$1" status=0
    e2e_pid_alive "$pid" ||
        e2e_fail "podium run exited before SIGTERM: see $E2E_DIR/podium.log"
    kill -TERM "$pid"
    e2e_wait_exit "$pid" 15 "podium run" || status=$?
    [[ $status -eq 0 ]] ||
        e2e_fail "podium run exited with status $status after SIGTERM, expected 0: see $E2E_DIR/podium.log"
}

main() {
    e2e_init e2e_mqtt_tls
    KINESIS_SERVER=kinesalite
    KINESIS_PORT="$(bash "$E2E_PEERS" start kinesalite "$E2E_DIR")" ||
        e2e_fail "kinesalite did not start: see $E2E_DIR/kinesalite.log; run 'bash tools/peers.sh install' if the npm packages are missing"
    e2e_log "kinesalite on 127.0.0.1:$KINESIS_PORT"
    e2e_start_mosquitto_tls
    # e2e_podium_run_settings sets mqtt.url to mqtt://127.0.0.1:$MOSQUITTO_PORT,
    # which must be valid before e2e_podium_tls_settings replaces it.
    MOSQUITTO_PORT="$MOSQUITTO_TLS_PORT"
    e2e_create_stream "$STREAM" 2

    expect_config_error missing-ca \
        "cannot read mqtt.ca_file $E2E_TLS_DIR/absent.pem: No such file or directory" \
        --set "mqtt.ca_file=$E2E_TLS_DIR/absent.pem"
    expect_config_error mismatched-key \
        "mqtt.key_file $E2E_TLS_DIR/other-client.key does not match the certificate in mqtt.cert_file $E2E_TLS_DIR/client.pem" \
        --set "mqtt.key_file=$E2E_TLS_DIR/other-client.key"

    local capture="$E2E_DIR/capture.txt"
    e2e_start_tls_capture "$capture"

    e2e_log "podium simulate: 20 riders, $SECONDS_PER_RACE seconds, 2 classes"
    "$PODIUM_BIN" simulate --racers 20 --seconds "$SECONDS_PER_RACE" --classes 2 --seed 5 \
        --duplicates 0.02 --stream "$STREAM" \
        --set "kinesis.endpoint=http://127.0.0.1:$KINESIS_PORT" \
        </dev/null >>"$E2E_DIR/simulate.log" 2>&1 ||
        e2e_fail "podium simulate exited with status $?: see $E2E_DIR/simulate.log"

    local settings=() tls=()
    mapfile -t settings < <(e2e_podium_run_settings "$STREAM")
    mapfile -t tls < <(e2e_podium_tls_settings other-client)
    e2e_log "podium run with a client certificate of another CA"
    e2e_start_bg podium "$PODIUM_BIN" run "${settings[@]}" "${tls[@]}" --set log.level=debug
    local podium_pid="$E2E_LAST_PID"
    e2e_wait_for 30 "a TLS handshake failure in $E2E_DIR/podium.log" \
        grep -q '"level":"error".*TLS handshake failed' "$E2E_DIR/podium.log"
    e2e_wait_for 30 "leaderboards in podium's outbox" \
        test "$(e2e_sql "$E2E_DIR/podium.db" 'SELECT count(*) FROM outbox')" -gt 0
    stop_podium "$podium_pid"
    if grep -v '^podium/e2e-probe ' "$capture" | grep -q .; then
        e2e_fail "a leaderboard reached the broker without an accepted client certificate: see $capture"
    fi
    grep -q 'OpenSSL Error.*certificate verify failed' "$E2E_DIR/mosquitto-tls.log" ||
        e2e_fail "mosquitto-tls did not log that it rejected the client certificate: see $E2E_DIR/mosquitto-tls.log"
    e2e_log "rejected as expected; $(e2e_sql "$E2E_DIR/podium.db" 'SELECT count(*) FROM outbox') leaderboards wait in the outbox"

    mapfile -t tls < <(e2e_podium_tls_settings client)
    e2e_log "podium run with the client certificate of the test CA"
    e2e_start_bg podium "$PODIUM_BIN" run "${settings[@]}" "${tls[@]}" --set log.level=debug
    podium_pid="$E2E_LAST_PID"
    e2e_checker wait --stream "$STREAM" --capture "$capture" \
        --seconds "$SECONDS_PER_RACE" --idle-s 3 --timeout-s 120 ||
        e2e_fail "not every leaderboard arrived over TLS: see the checker's message above and $E2E_DIR/podium.log"
    stop_podium "$podium_pid"
    e2e_log "podium run exited 0 after SIGTERM"

    e2e_checker verify --stream "$STREAM" --capture "$capture" --seconds "$SECONDS_PER_RACE" ||
        e2e_fail "the leaderboards published over TLS do not match the rules: see the checker's messages above"
    grep -q "connected to 127.0.0.1:$MOSQUITTO_TLS_PORT as client" "$E2E_DIR/podium.log" ||
        e2e_fail "podium's log $E2E_DIR/podium.log has no line for the TLS connection"
    grep -q "u'podium-test-client'" "$E2E_DIR/mosquitto-tls.log" ||
        e2e_fail "mosquitto-tls did not log the client certificate's name as the user: see $E2E_DIR/mosquitto-tls.log"
    e2e_expect_no_key_material "$E2E_DIR/podium.log"
    e2e_log "passed"
}

main "$@"
