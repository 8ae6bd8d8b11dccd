#!/usr/bin/env bash
# podium run with metrics.emf=on against kinesalite and mosquitto. The
# test puts known records to a 2-shard stream: 20 records, 3 copies of
# them and 1 invalid one. Once podium has nothing left to do, it takes
# /metrics and stops podium. Standard output must then contain only EMF
# lines, which emf-check.mjs checks against the specification's structure.
# Their counters must add up to the /metrics values and to what was put.
# Settings that cannot work together must exit 2 with a message.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STREAM=e2e-emf
NAMESPACE="podium/e2e test"
UNIQUE=20
COPIES=3
INVALID=1

# telemetry UUID RACER SECOND: print one telemetry record, base64.
telemetry_base64() {
    local uuid="$1" racer="$2" second="$3"
    printf '{"uuid":"%s","event":"update","deviceTimestamp":%d,"second":%d,"raceId":"R-7","name":"Racer %s","racerId":"%s","classId":"A","cadence":90,"resistance":40}' \
        "$uuid" $((1767225600000 + second * 1000)) "$second" "$racer" "$racer" | base64 -w0
}

# Print the value of the sample SERIES in a /metrics body.
metric_value() {
    local body="$1" series="$2"
    awk -v series="$series" '$1 == series { print $2; found = 1 } END { exit !found }' <<<"$body"
}

# expect_config_error WHAT MESSAGE_PART SETTING...: podium run with the
# settings must exit 2 and name the problem on standard error.
expect_config_error() {
    local what="$1" part="$2"
    shift 2
    local status=0 err="$E2E_DIR/config-error.txt"
    "$PODIUM_BIN" run --set stream.name=x "$@" >/dev/null 2>"$err" || status=$?
    [[ $status -eq 2 ]] || e2e_fail "$what: podium run exited $status, expected 2: $(cat "$err")"
    grep -qF -- "$part" "$err" ||
        e2e_fail "$what: the error does not contain \"$part\": $(cat "$err")"
}

main() {
    e2e_init e2e_emf

    expect_config_error "EMF and publish.file=-" "metrics.emf and publish.file=- both write to standard output" \
        --set metrics.emf=on --set publish.transport=file --set publish.file=-
    expect_config_error "a namespace in AWS/" 'invalid value for metrics.emf_namespace: "AWS/Kinesis"' \
        --set metrics.emf_namespace=AWS/Kinesis
    expect_config_error "an interval of 0" 'invalid value for metrics.emf_interval_s: "0"' \
        --set metrics.emf_interval_s=0
    e2e_log "settings that cannot work exit 2 with a message"

    e2e_start_peers
    e2e_create_stream "$STREAM" 2

    local settings=() log="$E2E_DIR/podium.log" emf="$E2E_DIR/emf.jsonl"
    mapfile -t settings < <(e2e_podium_run_settings "$STREAM")
    # Standard output and standard error apart: logs must not reach the
    # EMF lines.
    "$PODIUM_BIN" run "${settings[@]}" --set metrics.emf=on \
        --set metrics.emf_interval_s=1 --set "metrics.emf_namespace=$NAMESPACE" \
        </dev/null >"$emf" 2>>"$log" &
    local podium_pid=$!
    e2e_track_pid "$podium_pid" "$PODIUM_BIN"
    local port
    port="$(e2e_podium_http_port "$log")" || exit 1

    local records=() i
    for ((i = 1; i <= UNIQUE; i++)); do
        records+=("p-$i" "$(telemetry_base64 "m-$i" $((i % 4)) $(((i - 1) / 4 + 1)))")
    done
    for ((i = 1; i <= COPIES; i++)); do
        records+=("p-$i" "$(telemetry_base64 "m-$i" $((i % 4)) $(((i - 1) / 4 + 1)))")
    done
    records+=("p-invalid" "$(printf 'not json' | base64 -w0)")
    e2e_put_records "$STREAM" "${records[@]}" >/dev/null
    local total=$((UNIQUE + COPIES + INVALID))
    e2e_log "put $UNIQUE records, $COPIES copies and $INVALID invalid record"

    # Nothing left to do: every record read, the race closed (its results
    # published), every message acknowledged, and the message count the
    # same over two readings.
    local body="" before="" deadline=$((SECONDS + 90))
    while ((SECONDS < deadline)); do
        body="$(curl -s --max-time 10 "http://127.0.0.1:$port/metrics")" || true
        local read built acked
        read="$(metric_value "$body" podium_records_read_total || echo 0)"
        built="$(metric_value "$body" podium_messages_built_total || echo 0)"
        acked="$(metric_value "$body" podium_publish_acked_total || echo 0)"
        if [[ "$read" == "$total" && "$built" == "$acked" && "$built" == "$before" ]] &&
            grep -q '"RecordsRead":[1-9]' "$emf"; then
            break
        fi
        before="$built"
        body=""
        sleep 4
    done
    [[ -n "$body" ]] || e2e_fail "podium did not settle with $total records read and every message acknowledged within 90s: see $log"
    printf '%s\n' "$body" >"$E2E_DIR/metrics.txt"
    e2e_log "podium settled: $(metric_value "$body" podium_messages_built_total) messages built and acknowledged"

    kill -TERM "$podium_pid"
    local status=0
    e2e_wait_exit "$podium_pid" 20 "podium run" || status=$?
    [[ $status -eq 0 ]] || e2e_fail "podium run exited with status $status after SIGTERM, expected 0: see $log"

    grep -q '"level"' "$emf" && e2e_fail "a log line reached standard output: see $emf"
    grep -q 'writing EMF metrics in namespace' "$log" ||
        e2e_fail "podium did not log that it writes EMF metrics: see $log"
    node "$E2E_LIB_DIR/emf-check.mjs" "$emf" "$E2E_DIR/metrics.txt" "$NAMESPACE" "$STREAM" \
        shardId-000000000000 shardId-000000000001 ||
        e2e_fail "the EMF lines do not match the specification or /metrics: see the lines above, $emf and $E2E_DIR/metrics.txt"

    # The sums match what was put, not only /metrics.
    local sums
    sums="$(node -e '
        const sums = {};
        for (const line of require("fs").readFileSync(process.argv[1], "utf8").split("\n")) {
            if (line === "") continue;
            const doc = JSON.parse(line);
            for (const { Name } of doc._aws.CloudWatchMetrics[0].Metrics) sums[Name] = (sums[Name] ?? 0) + doc[Name];
        }
        console.log(`${sums.RecordsRead} ${sums.Duplicates} ${sums["RecordsRejected.not_json"]}`);
    ' "$emf")"
    [[ "$sums" == "$total $COPIES $INVALID" ]] ||
        e2e_fail "RecordsRead, Duplicates and RecordsRejected.not_json add up to \"$sums\", expected \"$total $COPIES $INVALID\""

    # Standard output whose reader has gone: a write error, not the end of
    # podium. The FIFO's only reader closes it right after podium opens it.
    # The file transport, because libmosquitto ignores SIGPIPE on its own.
    local fifo="$E2E_DIR/emf.fifo" gone_log="$E2E_DIR/podium-gone.log" reader
    mkfifo "$fifo"
    "$PODIUM_BIN" run "${settings[@]}" --set "store.path=$E2E_DIR/gone.db" \
        --set publish.transport=file --set "publish.file=$E2E_DIR/gone.jsonl" \
        --set metrics.emf=on --set metrics.emf_interval_s=1 \
        </dev/null >"$fifo" 2>>"$gone_log" &
    podium_pid=$!
    e2e_track_pid "$podium_pid" "$PODIUM_BIN"
    exec {reader}<"$fifo"
    exec {reader}<&-
    e2e_wait_for 20 "the EMF write error in $gone_log" \
        grep -q 'failed to write the EMF metrics to standard output' "$gone_log"
    e2e_pid_alive "$podium_pid" ||
        e2e_fail "podium ended when the reader of its standard output went away: see $gone_log"
    kill -TERM "$podium_pid"
    status=0
    e2e_wait_exit "$podium_pid" 20 "podium run" || status=$?
    [[ $status -eq 0 ]] || e2e_fail "podium run exited with status $status after SIGTERM with a closed standard output, expected 0: see $gone_log"
    e2e_log "a closed standard output is a logged write error"
    e2e_log "passed"
}

main "$@"
