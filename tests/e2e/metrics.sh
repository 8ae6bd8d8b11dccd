#!/usr/bin/env bash
# The HTTP server of podium run: /healthz, /readyz and /metrics.
#
# podium starts with kinesalite behind a closed TCP gate, so its first
# ListShards fails and /readyz must return 503 while /healthz returns 200.
# After the gate opens, /readyz returns 200. The test puts 20 telemetry
# records, 3 exact copies of them and 1 record that is not JSON, then reads
# /metrics until podium has read all 24. It checks the counters against
# what was put and the text format line by line. It also checks the 404
# and 405 replies and a request line over the 8 KiB limit, and that a
# client which never ends its request is dropped while others are served.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STREAM=e2e
UNIQUE=20
COPIES=3
INVALID=1
HTTP_PORT=""

# telemetry UUID RACER SECOND: print one telemetry record, base64.
telemetry_base64() {
    local uuid="$1" racer="$2" second="$3"
    printf '{"uuid":"%s","event":"update","deviceTimestamp":%d,"second":%d,"raceId":"R-9","name":"Racer %s","racerId":"%s","classId":"A","cadence":90,"resistance":40}' \
        "$uuid" $((1767225600000 + second * 1000)) "$second" "$racer" "$racer" | base64 -w0
}

http_url() {
    echo "http://127.0.0.1:$HTTP_PORT$1"
}

# Print the HTTP status code of a GET of PATH, with curl's extra arguments.
http_status() {
    local path="$1"
    shift
    curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$@" "$(http_url "$path")"
}

ready() {
    [[ "$(http_status /readyz)" == 200 ]]
}

# raw_status REQUEST: send REQUEST (printf format) on a new connection and
# print the status line of the reply without its CR.
raw_status() {
    local request="$1" fd reply
    exec {fd}<>"/dev/tcp/127.0.0.1/$HTTP_PORT"
    printf "$request" >&"$fd"
    reply="$(timeout 15 head -n 1 <&"$fd" || true)"
    exec {fd}<&-
    echo "${reply%$'\r'}"
}

healthy() {
    [[ "$(http_status /healthz)" == 200 ]]
}

# Print the value of the sample whose name and labels are exactly SERIES.
metric_value() {
    local body="$1" series="$2"
    awk -v series="$series" '$1 == series { print $2; found = 1 } END { exit !found }' <<<"$body"
}

# Check every line of a /metrics body against the Prometheus text format
# 0.0.4: # HELP and # TYPE lines, samples of a declared family only, each
# family's lines together, counters ending in _total, label values escaped,
# histogram buckets cumulative up to +Inf equal to _count.
check_format() {
    node -e '
        const text = require("fs").readFileSync(0, "utf8");
        const problems = [];
        if (!text.endsWith("\n")) problems.push("the body does not end with a line feed");
        const name = "[a-zA-Z_:][a-zA-Z0-9_:]*";
        const label = `[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\[\\\\"n])*"`;
        const value = "(?:[-+]?(?:[0-9]+(?:\\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|Inf)|NaN)";
        const sampleRe = new RegExp(`^(${name})(?:\\{(${label}(?:,${label})*)?,?\\})? (${value})(?: -?[0-9]+)?$`);
        const typeRe = new RegExp(`^# TYPE (${name}) (counter|gauge|histogram|summary|untyped)$`);
        const helpRe = new RegExp(`^# HELP (${name}) (.*)$`);
        const types = new Map();
        const closed = new Set();
        let current = null;
        const histograms = new Map();
        const familyOf = (sample) => {
            if (types.has(sample)) return sample;
            for (const suffix of ["_bucket", "_sum", "_count"]) {
                const base = sample.slice(0, -suffix.length);
                if (sample.endsWith(suffix) && ["histogram", "summary"].includes(types.get(base))) return base;
            }
            return null;
        };
        const enter = (family, n) => {
            if (family === current) return;
            if (closed.has(family)) problems.push(`line ${n}: family ${family} continues after other families`);
            if (current !== null) closed.add(current);
            current = family;
        };
        text.split("\n").forEach((line, i) => {
            const n = i + 1;
            if (line === "") return;
            let m;
            if ((m = typeRe.exec(line))) {
                if (types.has(m[1])) problems.push(`line ${n}: a second # TYPE for ${m[1]}`);
                types.set(m[1], m[2]);
                if (m[2] === "counter" && !m[1].endsWith("_total")) problems.push(`line ${n}: counter ${m[1]} does not end in _total`);
                enter(m[1], n);
            } else if ((m = helpRe.exec(line))) {
                enter(m[1], n);
            } else if (line.startsWith("#")) {
                problems.push(`line ${n}: a comment that is neither # HELP nor # TYPE: ${line}`);
            } else if ((m = sampleRe.exec(line))) {
                const family = familyOf(m[1]);
                if (family === null) { problems.push(`line ${n}: sample ${m[1]} before its # TYPE`); return; }
                enter(family, n);
                if (types.get(family) === "histogram") {
                    const h = histograms.get(family) ?? { last: -1, inf: null, count: null };
                    const v = Number(m[3]);
                    if (m[1].endsWith("_bucket")) {
                        if (v < h.last) problems.push(`line ${n}: bucket ${v} is below the bucket before it (${h.last})`);
                        h.last = v;
                        if (/le="\+Inf"/.test(m[2] ?? "")) h.inf = v;
                    } else if (m[1].endsWith("_count")) {
                        h.count = v;
                    }
                    histograms.set(family, h);
                }
            } else {
                problems.push(`line ${n}: not a valid sample line: ${JSON.stringify(line)}`);
            }
        });
        for (const [family, h] of histograms) {
            if (h.inf === null || h.inf !== h.count) problems.push(`histogram ${family}: the +Inf bucket (${h.inf}) differs from _count (${h.count})`);
        }
        if (problems.length > 0) { console.error(problems.join("\n")); process.exit(1); }
    '
}

main() {
    e2e_init e2e_metrics
    e2e_start_peers
    e2e_create_stream "$STREAM" 2
    e2e_start_tcp_gate kinesis-gate "$KINESIS_PORT"
    e2e_tcp_gate close

    local settings=() log="$E2E_DIR/podium.log"
    mapfile -t settings < <(e2e_podium_run_settings "$STREAM")
    e2e_start_bg podium "$PODIUM_BIN" run "${settings[@]}" \
        --set "kinesis.endpoint=http://127.0.0.1:$TCP_GATE_PORT"
    local podium_pid="$E2E_LAST_PID"
    HTTP_PORT="$(e2e_podium_http_port "$log")" || exit 1
    e2e_log "podium serves HTTP on 127.0.0.1:$HTTP_PORT"

    local code
    code="$(http_status /healthz)"
    [[ "$code" == 200 ]] || e2e_fail "GET /healthz returned $code before ready, expected 200"
    code="$(http_status /readyz)"
    [[ "$code" == 503 ]] ||
        e2e_fail "GET /readyz returned $code while Kinesis is unreachable, expected 503"
    local reason
    reason="$(curl -s --max-time 10 "$(http_url /readyz)")"
    [[ "$reason" == *ListShards* ]] ||
        e2e_fail "GET /readyz before the first ListShards returned \"$reason\", expected a reason that names ListShards"

    e2e_tcp_gate open
    e2e_wait_for 30 "GET /readyz returns 200 after the gate opened" ready

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

    local body="" deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)); do
        body="$(curl -s --max-time 10 "$(http_url /metrics)")" || true
        [[ "$(metric_value "$body" podium_records_read_total || true)" == "$total" ]] && break
        sleep 0.2
    done
    [[ "$(metric_value "$body" podium_records_read_total || true)" == "$total" ]] ||
        e2e_fail "podium_records_read_total did not reach $total within 60s: see $E2E_DIR/metrics.txt"
    printf '%s\n' "$body" >"$E2E_DIR/metrics.txt"

    local expected
    for expected in \
        "podium_records_applied_total $UNIQUE" \
        "podium_duplicates_total $COPIES" \
        "podium_records_rejected_total{reason=\"not_json\"} $INVALID" \
        "podium_records_rejected_total{reason=\"missing_field\"} 0" \
        "podium_kinesis_errors_total{cause=\"throttled\"} 0" \
        "podium_ready 1"; do
        local series="${expected% *}" want="${expected##* }" got
        got="$(metric_value "$body" "$series")" ||
            e2e_fail "/metrics has no sample $series: see $E2E_DIR/metrics.txt"
        [[ "$got" == "$want" ]] ||
            e2e_fail "/metrics has $series $got, expected $want: see $E2E_DIR/metrics.txt"
    done
    # The gate was closed for the first ListShards, so at least one
    # connection error was counted.
    local errors
    errors="$(metric_value "$body" 'podium_kinesis_errors_total{cause="connection_errors"}')" ||
        e2e_fail "/metrics has no connection_errors sample: see $E2E_DIR/metrics.txt"
    ((errors >= 1)) ||
        e2e_fail "podium_kinesis_errors_total{cause=\"connection_errors\"} is $errors after ListShards failed behind the closed gate, expected 1 or more"
    # Each record that is neither a copy nor invalid has exactly one
    # outcome. Which one (applied or late_amended) depends on when each
    # shard's records arrive, so only the sum is fixed.
    local outcomes
    outcomes="$(awk '$1 ~ /^podium_record_outcomes_total[{]/ { sum += $2 } END { print sum + 0 }' <<<"$body")"
    [[ "$outcomes" == "$UNIQUE" ]] ||
        e2e_fail "podium_record_outcomes_total sums to $outcomes over its outcomes, expected $UNIQUE: see $E2E_DIR/metrics.txt"
    local series
    for series in 'podium_records_late_total{result="amended"}' 'podium_records_late_total{result="dropped"}' \
        'podium_records_late_total{result="too_late"}' 'podium_records_quarantined_total{reason="skew"}' \
        'podium_records_quarantined_total{reason="jump"}' 'podium_sample_conflicts_total{kept="stored"}' \
        'podium_sample_conflicts_total{kept="new"}' 'podium_publish_failures_total{cause="timeout"}'; do
        metric_value "$body" "$series" >/dev/null ||
            e2e_fail "/metrics has no sample $series: see $E2E_DIR/metrics.txt"
    done
    local shard
    for shard in shardId-000000000000 shardId-000000000001; do
        metric_value "$body" "podium_shard_millis_behind_latest{shard_id=\"$shard\"}" >/dev/null ||
            e2e_fail "/metrics has no MillisBehindLatest gauge of $shard: see $E2E_DIR/metrics.txt"
    done
    local name
    for name in podium_kinesis_get_records_calls_total podium_batch_commit_duration_seconds_count \
        podium_publish_sent_total podium_publish_acked_total podium_publish_resent_total \
        podium_outbox_depth; do
        metric_value "$body" "$name" >/dev/null ||
            e2e_fail "/metrics has no sample $name: see $E2E_DIR/metrics.txt"
    done
    (($(metric_value "$body" podium_batch_commit_duration_seconds_count) >= 1)) ||
        e2e_fail "podium_batch_commit_duration_seconds_count is 0 after $total records committed"
    check_format <<<"$body" ||
        e2e_fail "/metrics is not valid Prometheus text format: see the lines above and $E2E_DIR/metrics.txt"
    e2e_log "metrics match what was put and the format is valid"

    code="$(http_status /nope)"
    [[ "$code" == 404 ]] || e2e_fail "GET /nope returned $code, expected 404"
    code="$(http_status /metrics -X POST)"
    [[ "$code" == 405 ]] || e2e_fail "POST /metrics returned $code, expected 405"
    code="$(http_status /healthz -I)"
    [[ "$code" == 200 ]] || e2e_fail "HEAD /healthz returned $code, expected 200"
    local long_path
    long_path="/$(head -c 9000 /dev/zero | tr '\0' a)"
    code="$(http_status "$long_path")"
    [[ "$code" == 431 ]] || e2e_fail "GET of a 9001-byte path returned $code, expected 431"
    code="$(http_status /healthz)"
    [[ "$code" == 200 ]] || e2e_fail "GET /healthz returned $code after the over-long request, expected 200"

    # Raw requests for the parser's cases that curl does not send.
    local case want got
    for case in \
        'GET /healthz HTTP/1.0\n\n|HTTP/1.1 200 OK' \
        'GET /healthz?probe=1 HTTP/1.1\r\nHost: x\r\n\r\n|HTTP/1.1 200 OK' \
        'GET /healthz HTTP/2.0\r\n\r\n|HTTP/1.1 400 Bad Request' \
        'GET healthz HTTP/1.1\r\n\r\n|HTTP/1.1 400 Bad Request' \
        'GET /healthz\r\n\r\n|HTTP/1.1 400 Bad Request' \
        'G(T /healthz HTTP/1.1\r\n\r\n|HTTP/1.1 400 Bad Request' \
        'G\0T /healthz HTTP/1.1\r\n\r\n|HTTP/1.1 400 Bad Request' \
        'GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n|HTTP/1.1 400 Bad Request' \
        'DELETE /readyz HTTP/1.1\r\n\r\n|HTTP/1.1 405 Method Not Allowed'; do
        want="${case#*|}"
        got="$(raw_status "${case%%|*}")"
        [[ "$got" == "$want" ]] ||
            e2e_fail "the request '${case%%|*}' got \"$got\", expected \"$want\""
    done

    # A client that connects and never ends its request: others are still
    # served, and podium closes it after its request timeout (5 s).
    exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT"
    printf 'GET /metrics HTTP/1.1\r\nHost: x\r\n' >&3
    code="$(http_status /healthz)"
    [[ "$code" == 200 ]] || e2e_fail "GET /healthz returned $code while a slow client was connected, expected 200"
    local status=0
    timeout 30 cat <&3 >"$E2E_DIR/slow-client.txt" || status=$?
    exec 3<&-
    [[ $status -eq 0 ]] ||
        e2e_fail "podium did not close a connection without a whole request within 30s (timeout exit status $status)"
    [[ ! -s "$E2E_DIR/slow-client.txt" ]] ||
        e2e_fail "podium replied to a request that never ended: see $E2E_DIR/slow-client.txt"
    grep -q 'did not send a whole request' "$log" ||
        e2e_fail "podium did not log why it closed the slow connection: see $log"
    e2e_log "404, 405, HEAD, 431 and the slow client behave"

    # 32 idle connections reach the limit, so podium closes a 33rd at once
    # without reading its request. Once they are gone, requests are served
    # again. The idle ones stay open for the 5 s request timeout, far longer
    # than this takes.
    local idle=() fd
    for ((i = 0; i < 32; i++)); do
        exec {fd}<>"/dev/tcp/127.0.0.1/$HTTP_PORT"
        idle+=("$fd")
    done
    local over=""
    over="$(curl -s --max-time 10 "$(http_url /healthz)" 2>&1)" || true
    for fd in "${idle[@]}"; do
        exec {fd}<&-
    done
    [[ -z "$over" ]] ||
        e2e_fail "a 33rd connection got \"$over\" while 32 were open, expected it closed without a reply"
    grep -q 'the limit of 32 open connections was reached' "$log" ||
        e2e_fail "podium did not log that it closed a connection over the limit of 32: see $log"
    e2e_wait_for 15 "GET /healthz returns 200 after the idle connections closed" healthy
    e2e_log "a connection over the limit of 32 is closed, and later ones are served"

    kill -TERM "$podium_pid"
    status=0
    e2e_wait_exit "$podium_pid" 10 "podium run" || status=$?
    [[ $status -eq 0 ]] ||
        e2e_fail "podium run exited with status $status after SIGTERM, expected 0: see $log"
    e2e_log "passed"
}

main "$@"
