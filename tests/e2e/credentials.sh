#!/usr/bin/env bash
# AWS credential sources and podium check-config.
#
# 1. Profiles in a temporary HOME, as the AWS CLI reads them, and
#    check-config's settings with their sources, masking and errors.
# 2. Container credentials from tests/e2e/creds-server.mjs on 127.0.0.1,
#    which checks the Authorization header: check-config names the source
#    without a request, and --fetch-credentials fetches them.
# 3. The instance metadata service (IMDSv2) at an override endpoint on
#    127.0.0.1: without aws.imds it gets no request, even when no other
#    source exists; with aws.imds = on it serves the credentials.
# 4. podium run with container credentials that expire seconds after the
#    start: the refresh fails once (a warning), then brings a new key, and
#    every Kinesis request after the first one signed with the new key is
#    signed with it. Then the key is rotated out of band: the IoT stand-in
#    returns 403, podium fetches the credentials again and every
#    leaderboard arrives.
# No output or log file of podium may contain a secret key, a session
# token or the authorization token, also at log level debug.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STREAM=e2e-credentials
SECONDS_PER_RACE=15
CREDS_SERVER="$E2E_LIB_DIR/creds-server.mjs"
IOT_SERVER="$E2E_SOURCE_DIR/tests/iot-publish-server.js"

# Secrets that only this test uses, so a match in podium's output is a leak.
SECRET_PROFILE='e2eCredsProfileSecret/OnlyHere+0123456789'
TOKEN_PROFILE='e2eCredsProfileSessionToken/OnlyHere+01=='
SECRET_A='e2eCredsSecretA/OnlyHere+0123456789abcdef'
TOKEN_A='e2eCredsSessionTokenA/OnlyHere+0123=='
SECRET_B='e2eCredsSecretB/OnlyHere+0123456789abcdef'
TOKEN_B='e2eCredsSessionTokenB/OnlyHere+0123=='
SECRET_C='e2eCredsSecretC/OnlyHere+0123456789abcdef'
TOKEN_C='e2eCredsSessionTokenC/OnlyHere+0123=='
AUTH_TOKEN='e2eCredsAuthorizationToken-OnlyHere-0123'
URL_PASSWORD='e2eCredsUrlPassword0123'
MQTT_PASSWORD='e2eCredsMqttPassword0123'
ENDPOINT_PASSWORD='e2eCredsEndpointPassword0123'
ALL_SECRETS=("$SECRET_PROFILE" "$TOKEN_PROFILE" "$SECRET_A" "$TOKEN_A"
    "$SECRET_B" "$TOKEN_B" "$SECRET_C" "$TOKEN_C" "$AUTH_TOKEN" "$URL_PASSWORD"
    "$MQTT_PASSWORD" "$ENDPOINT_PASSWORD")

# The environment credentials of lib.sh would come first in the chain.
ENV_KEY_ID="$AWS_ACCESS_KEY_ID"
ENV_SECRET="$AWS_SECRET_ACCESS_KEY"
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE

OUT=""
ERR=""
STATUS=0
RUN_COUNT=0

# check NAME ARGS...: run podium with ARGS; its standard output and error
# go to E2E_DIR/podium-NAME.out and .err, whose paths are in OUT and ERR,
# and its exit status to STATUS.
check() {
    local name="$1"
    shift
    RUN_COUNT=$((RUN_COUNT + 1))
    OUT="$E2E_DIR/podium-$name.out"
    ERR="$E2E_DIR/podium-$name.err"
    STATUS=0
    "$PODIUM_BIN" "$@" </dev/null >"$OUT" 2>"$ERR" || STATUS=$?
}

expect_status() {
    local expected="$1" what="$2"
    [[ "$STATUS" -eq "$expected" ]] ||
        e2e_fail "$what: exit status $STATUS, expected $expected; see $OUT and $ERR"
}

# expect_line FILE TEXT: FILE has a line that is exactly TEXT.
expect_line() {
    local file="$1" text="$2"
    grep -qxF -- "$text" "$file" ||
        e2e_fail "$file has no line '$text'"
}

# expect_text FILE TEXT: FILE contains TEXT.
expect_text() {
    local file="$1" text="$2"
    grep -qF -- "$text" "$file" ||
        e2e_fail "$file does not contain '$text'"
}

# start_creds_server NAME PLAN: start creds-server.mjs with the JSON PLAN
# and set CREDS_PORT. Its requests go to E2E_DIR/NAME-requests.jsonl.
start_creds_server() {
    local name="$1" plan="$2"
    local port_file="$E2E_DIR/$name.port"
    printf '%s\n' "$plan" >"$E2E_DIR/$name-plan.json"
    e2e_start_bg "$name" node "$CREDS_SERVER" "$E2E_DIR/$name-plan.json" \
        "$E2E_DIR/$name-requests.jsonl" "$port_file"
    e2e_wait_for 15 "$name to write its port to $port_file" test -s "$port_file"
    CREDS_PORT="$(cat "$port_file")"
    e2e_log "$name on 127.0.0.1:$CREDS_PORT"
}

# set_plan NAME PLAN: replace the plan of a running credentials server.
set_plan() {
    printf '%s\n' "$2" >"$E2E_DIR/$1-plan.json.tmp"
    mv "$E2E_DIR/$1-plan.json.tmp" "$E2E_DIR/$1-plan.json"
}

# A reply of the credentials server: KEY SECRET TOKEN [EXPIRES_IN_S].
creds_reply() {
    local expiry=""
    [[ -z "${4:-}" ]] || expiry=",\"expires_in_s\":$4"
    printf '{"key":"%s","secret":"%s","token":"%s"%s}' "$1" "$2" "$3" "$expiry"
}

# ---- 1. profiles and check-config -------------------------------------

test_profiles() {
    local home="$E2E_DIR/home"
    mkdir -p "$home/.aws"
    cat >"$home/.aws/credentials" <<EOF
# keys of the team
[default]
aws_access_key_id = AKIDPROFILEDEFAULT
aws_secret_access_key = $SECRET_PROFILE
EOF
    cat >"$home/.aws/config" <<EOF
[default]
region = us-east-1

; production, with keys in capitals and ':' as the delimiter
[profile prod]
AWS_ACCESS_KEY_ID = AKIDPROFILEPROD
aws_secret_access_key: $SECRET_PROFILE
aws_session_token = $TOKEN_PROFILE
s3 =
    max_concurrent_requests = 10

[profile broken]
aws_access_key_id = AKIDPROFILEBROKEN
EOF
    export HOME="$home"

    check profile-default check-config
    expect_status 0 "check-config with the default profile"
    expect_line "$OUT" "# credentials: profile \"default\" in $home/.aws/credentials (aws_access_key_id ****AULT)"

    AWS_PROFILE=prod check profile-prod check-config
    expect_status 0 "check-config with AWS_PROFILE=prod"
    expect_line "$OUT" "# credentials: profile \"prod\" in $home/.aws/config (aws_access_key_id ****PROD)"

    AWS_PROFILE=staging check profile-missing check-config
    expect_status 2 "check-config with a profile that does not exist"
    expect_text "$ERR" "AWS_PROFILE is \"staging\", but neither $home/.aws/credentials nor $home/.aws/config has that profile"

    AWS_PROFILE=broken check profile-broken check-config
    expect_status 2 "check-config with a profile without its secret key"
    expect_text "$ERR" "profile \"broken\" in $home/.aws/config (line 13) has aws_access_key_id but no aws_secret_access_key"

    AWS_PROFILE=staging check profile-run run --set stream.name=x
    expect_status 2 "podium run with a profile that does not exist"
    expect_text "$ERR" 'AWS_PROFILE is "staging"'

    AWS_ACCESS_KEY_ID="$ENV_KEY_ID" check env-half check-config
    expect_status 2 "check-config with AWS_ACCESS_KEY_ID alone"
    expect_text "$ERR" "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"
    export HOME="$E2E_DIR/empty-home"
    mkdir -p "$HOME"
    e2e_log "profiles: default, AWS_PROFILE, a missing profile and a missing secret"
}

# A URL with a password is rejected, and the error shows it masked: from
# --set, the file, the environment and a line without '=', in check-config
# and run. The final sweep checks that no output contains the passwords.
test_url_passwords() {
    local conf="$E2E_DIR/podium-url-password.conf"
    printf '%s\n' "mqtt.url = mqtt://user:$MQTT_PASSWORD@127.0.0.1:1883" >"$conf"
    local command
    for command in check-config run; do
        AWS_ACCESS_KEY_ID="$ENV_KEY_ID" AWS_SECRET_ACCESS_KEY="$ENV_SECRET" \
            check "mqtt-url-set-$command" "$command" --set stream.name=s \
            --set "mqtt.url=mqtt://user:$MQTT_PASSWORD@127.0.0.1:1883"
        expect_status 2 "$command with a password in mqtt.url"
        expect_text "$ERR" 'invalid value for mqtt.url: "mqtt://user:****@127.0.0.1:1883": a user name or password in the URL is not supported'
        expect_text "$ERR" "use mqtts:// with mqtt.cert_file and mqtt.key_file"

        AWS_ACCESS_KEY_ID="$ENV_KEY_ID" AWS_SECRET_ACCESS_KEY="$ENV_SECRET" \
            check "mqtt-url-file-$command" "$command" --config "$conf" --set stream.name=s
        expect_status 2 "$command with a password in mqtt.url of the file"
        expect_text "$ERR" "\"mqtt://user:****@127.0.0.1:1883\""

        AWS_ACCESS_KEY_ID="$ENV_KEY_ID" AWS_SECRET_ACCESS_KEY="$ENV_SECRET" \
            PODIUM_MQTT_URL="mqtt://:$MQTT_PASSWORD@127.0.0.1:1883" \
            check "mqtt-url-env-$command" "$command" --set stream.name=s
        expect_status 2 "$command with a password in PODIUM_MQTT_URL"
        expect_text "$ERR" "\"mqtt://:****@127.0.0.1:1883\""

        AWS_ACCESS_KEY_ID="$ENV_KEY_ID" AWS_SECRET_ACCESS_KEY="$ENV_SECRET" \
            check "endpoint-ftp-$command" "$command" --set stream.name=s \
            --set "kinesis.endpoint=ftp://u:$ENDPOINT_PASSWORD@h"
        expect_status 2 "$command with an ftp:// kinesis.endpoint with a password"
        expect_text "$ERR" 'invalid value for kinesis.endpoint: "ftp://u:****@h"'

        AWS_ACCESS_KEY_ID="$ENV_KEY_ID" AWS_SECRET_ACCESS_KEY="$ENV_SECRET" \
            check "endpoint-escape-$command" "$command" --set stream.name=s \
            --set "iot.endpoint=https://operator:$URL_PASSWORD%zz@[bad"
        expect_status 2 "$command with a password and a bad escape in iot.endpoint"
        expect_text "$ERR" 'invalid value for iot.endpoint: "https://operator:****@[bad"'

        AWS_ACCESS_KEY_ID="$ENV_KEY_ID" AWS_SECRET_ACCESS_KEY="$ENV_SECRET" \
            check "line-$command" "$command" --set "mqtt.url mqtt://user:$MQTT_PASSWORD@h:1883"
        expect_status 2 "$command with a --set without '='"
        expect_text "$ERR" 'invalid line "mqtt.url mqtt://user:****@h:1883"'
    done
    local secret
    for secret in "$MQTT_PASSWORD" "$ENDPOINT_PASSWORD" "$URL_PASSWORD"; do
        if grep -lF -- "$secret" "$E2E_DIR"/podium-*-check-config.* "$E2E_DIR"/podium-*-run.*; then
            e2e_fail "the files above contain the password '$secret'"
        fi
    done
    e2e_log "check-config and run: URL passwords are masked in the errors"
}

test_check_config() {
    local conf="$E2E_DIR/podium.conf"
    printf '%s\n' '# test configuration' 'race.idle_close_s = 5' >"$conf"

    AWS_ACCESS_KEY_ID="$ENV_KEY_ID" AWS_SECRET_ACCESS_KEY="$ENV_SECRET" \
        AWS_REGION=eu-west-1 PODIUM_LEADERBOARD_TOP_N=7 \
        PODIUM_STREAM_NAM=misspelt \
        check sources check-config --config "$conf" --set log.level=debug
    expect_status 0 "check-config with settings from every source"
    expect_line "$OUT" "race.idle_close_s = 5  # file $conf:2"
    expect_line "$OUT" "leaderboard.top_n = 7  # environment PODIUM_LEADERBOARD_TOP_N"
    expect_line "$OUT" "aws.region = eu-west-1  # environment AWS_REGION"
    expect_line "$OUT" "log.level = debug  # flag --set"
    expect_line "$OUT" "outbox.max = 100000  # default"
    expect_line "$OUT" "aws.imds = false  # default"
    expect_line "$OUT" "# credentials: environment variables AWS_ACCESS_KEY_ID (****MPLE), AWS_SECRET_ACCESS_KEY"
    expect_text "$ERR" "the environment variable PODIUM_STREAM_NAM matches no setting and is ignored"
    expect_text "$ERR" "the configuration is valid"
    if grep -qF -- "$ENV_SECRET" "$OUT" "$ERR"; then
        e2e_fail "check-config printed the secret key of AWS_SECRET_ACCESS_KEY: see $OUT"
    fi

    AWS_ACCESS_KEY_ID="$ENV_KEY_ID" AWS_SECRET_ACCESS_KEY="$ENV_SECRET" \
        check invalid check-config --set outbox.max=5
    expect_status 2 "check-config with outbox.max=5"
    expect_text "$ERR" 'invalid value for outbox.max: "5" (expected an integer from 100 to 10000000) from --set'

    test_url_passwords

    AWS_ACCESS_KEY_ID="$ENV_KEY_ID" AWS_SECRET_ACCESS_KEY="$ENV_SECRET" \
        PODIUM_STREAM_NAM=misspelt check unknown-run run
    expect_status 2 "podium run without stream.name"
    expect_text "$ERR" "the environment variable PODIUM_STREAM_NAM matches no setting and is ignored"
    e2e_log "check-config: sources, masking, an invalid value and an unknown variable"
}

# ---- 2. container credentials -----------------------------------------

test_container() {
    local token_file="$E2E_DIR/container-token"
    printf '%s\n' "$AUTH_TOKEN" >"$token_file"
    start_creds_server container \
        "{\"auth\":\"$AUTH_TOKEN\",\"replies\":[$(creds_reply AKIDCONTAINERCHECK "$SECRET_A" "$TOKEN_A" 3600)]}"
    local log="$E2E_DIR/container-requests.jsonl"
    export AWS_CONTAINER_CREDENTIALS_FULL_URI="http://127.0.0.1:$CREDS_PORT/creds"
    export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE="$token_file"

    check container-source check-config
    expect_status 0 "check-config with container credentials"
    expect_text "$OUT" "# credentials: container credentials from $AWS_CONTAINER_CREDENTIALS_FULL_URI (AWS_CONTAINER_CREDENTIALS_FULL_URI), authorization token from $token_file (not fetched"
    [[ "$(e2e_line_count "$log")" -eq 0 ]] ||
        e2e_fail "check-config without --fetch-credentials sent a request to the container endpoint: see $log"

    check container-fetch check-config --fetch-credentials
    expect_status 0 "check-config --fetch-credentials from the container endpoint"
    expect_text "$OUT" "fetched access key id ****HECK, expiring at "
    expect_text "$OUT" ", with a session token"
    grep -q '"auth":"ok","served":"AKIDCONTAINERCHECK"' "$log" ||
        e2e_fail "the container endpoint got no request with the right Authorization header: see $log"

    printf '%s\n' wrong-token >"$token_file"
    check container-bad-token check-config --fetch-credentials
    expect_status 1 "check-config --fetch-credentials with a wrong authorization token"
    expect_text "$ERR" "container credentials from $AWS_CONTAINER_CREDENTIALS_FULL_URI: GET answered HTTP 401; check the authorization token"
    printf '%s\n' "$AUTH_TOKEN" >"$token_file"

    set_plan container "{\"auth\":\"$AUTH_TOKEN\",\"replies\":[{\"body\":\"not json\"}]}"
    check container-bad-json check-config --fetch-credentials
    expect_status 1 "check-config --fetch-credentials with a reply that is not JSON"
    expect_text "$ERR" "the reply is not a JSON object"

    AWS_CONTAINER_CREDENTIALS_FULL_URI=http://10.11.12.13/creds check container-remote check-config
    expect_status 2 "check-config with a plain http FULL_URI that is not loopback"
    expect_text "$ERR" "uses http:// with host 10.11.12.13, which is not a loopback address"
    unset AWS_CONTAINER_CREDENTIALS_FULL_URI AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE
    e2e_log "container credentials: named without a request, fetched, and three errors"
}

# ---- 3. instance metadata ---------------------------------------------

test_imds() {
    start_creds_server imds "{\"replies\":[$(creds_reply AKIDINSTANCEROLE "$SECRET_A" "$TOKEN_A" 3600)]}"
    local log="$E2E_DIR/imds-requests.jsonl"

    # lib.sh points the endpoint at a closed loopback port for every test,
    # so no test can reach the link-local default.
    check imds-lib check-config --set aws.imds=on
    expect_status 0 "check-config with aws.imds=on"
    expect_text "$OUT" "# credentials: instance metadata (IMDSv2) at http://127.0.0.1:9 (AWS_EC2_METADATA_SERVICE_ENDPOINT)"

    export AWS_EC2_METADATA_SERVICE_ENDPOINT="http://127.0.0.1:$CREDS_PORT"
    check imds-off-check check-config --fetch-credentials
    expect_status 2 "check-config --fetch-credentials with no source and aws.imds off"
    expect_text "$ERR" "no AWS credentials found"
    check imds-off-run run --set stream.name=x --set "store.path=$E2E_DIR/imds.db"
    expect_status 2 "podium run with no source and aws.imds off"
    expect_text "$ERR" "no AWS credentials found"
    [[ "$(e2e_line_count "$log")" -eq 0 ]] ||
        e2e_fail "the instance metadata stand-in got requests although aws.imds is off: see $log"

    check imds-on check-config --fetch-credentials --set aws.imds=on
    expect_status 0 "check-config --fetch-credentials with aws.imds=on"
    expect_text "$OUT" "# credentials: instance metadata (IMDSv2) at $AWS_EC2_METADATA_SERVICE_ENDPOINT (AWS_EC2_METADATA_SERVICE_ENDPOINT): fetched access key id ****ROLE"
    node -e '
        const lines = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map(JSON.parse);
        const steps = lines.map((l) => `${l.method} ${l.path} ${l.auth} ${l.served}`);
        const expected = ["PUT /latest/api/token ok token",
            "GET /latest/meta-data/iam/security-credentials/ ok role",
            "GET /latest/meta-data/iam/security-credentials/podium-role ok AKIDINSTANCEROLE"];
        if (JSON.stringify(steps) !== JSON.stringify(expected)) {
            console.error(`requests ${JSON.stringify(steps)}, expected ${JSON.stringify(expected)}`);
            process.exit(1);
        }' "$log" || e2e_fail "the IMDSv2 requests in $log are not token, role and credentials"
    export AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:9
    e2e_log "instance metadata: no request while off, token, role and credentials when on"
}

# ---- 4. refreshing and rotating in podium run -------------------------

start_iot_server() {
    local port_file="$E2E_DIR/iot.port"
    e2e_start_bg iot-server node -r "$E2E_SOURCE_DIR/tools/force-loopback.cjs" "$IOT_SERVER" \
        --port-file "$port_file" --log "$E2E_DIR/iot-requests.jsonl" \
        --capture "$E2E_DIR/capture.txt" --credentials "$E2E_DIR/iot-credentials.json"
    e2e_wait_for 15 "the IoT server to write its port to $port_file" test -s "$port_file"
    IOT_PORT="$(cat "$port_file")"
    e2e_log "IoT server on 127.0.0.1:$IOT_PORT"
}

# iot_accepts KEY SECRET TOKEN [KEY SECRET TOKEN]...: the credentials that
# the IoT server accepts from now on.
iot_accepts() {
    local list="" separator=""
    while (($# > 0)); do
        list+="$separator{\"accessKeyId\":\"$1\",\"secretAccessKey\":\"$2\",\"sessionToken\":\"$3\"}"
        separator=","
        shift 3
    done
    printf '[%s]\n' "$list" >"$E2E_DIR/iot-credentials.json.tmp"
    mv "$E2E_DIR/iot-credentials.json.tmp" "$E2E_DIR/iot-credentials.json"
}

# simulate_race START_MS: put one race straight to kinesalite with the
# environment credentials of lib.sh.
simulate_race() {
    AWS_ACCESS_KEY_ID="$ENV_KEY_ID" AWS_SECRET_ACCESS_KEY="$ENV_SECRET" \
        "$PODIUM_BIN" simulate --racers 10 --seconds "$SECONDS_PER_RACE" --classes 1 \
        --seed "$1" --start-ms "$1" --stream "$STREAM" \
        --set "kinesis.endpoint=http://127.0.0.1:$KINESIS_PORT" \
        </dev/null >>"$E2E_DIR/simulate.log" 2>&1 ||
        e2e_fail "podium simulate exited with status $?: see $E2E_DIR/simulate.log"
}

# Fail unless, in LOG (JSON lines with "key"), no line after the first one
# signed with NEW is signed with OLD. Prints the counts.
check_key_order() {
    node -e '
        const [file, oldKey, newKey] = process.argv.slice(1);
        const lines = require("fs").readFileSync(file, "utf8").trim().split("\n")
            .map(JSON.parse).filter((l) => l.key);
        const first = lines.findIndex((l) => l.key === newKey);
        if (first < 0) { console.error(`no request signed with ${newKey}`); process.exit(1); }
        const stale = lines.slice(first).filter((l) => l.key === oldKey);
        console.log(`${first} requests before the first one signed with ${newKey}, ` +
                    `${lines.length - first} from it on, ${stale.length} of them with ${oldKey}`);
        if (stale.length > 0) process.exit(1);
    ' "$@"
}

test_refresh_and_rotation() {
    e2e_start_peers
    e2e_create_stream "$STREAM" 2
    e2e_start_fault_proxy kproxy
    iot_accepts AKIDCONTAINERA "$SECRET_A" "$TOKEN_A" AKIDCONTAINERB "$SECRET_B" "$TOKEN_B"
    start_iot_server

    local token_file="$E2E_DIR/run-token"
    printf '%s' "$AUTH_TOKEN" >"$token_file"
    # A expires 8 s after the fetch, so the refresh comes about 4 s in. Its
    # first try fails with a 500, the retry a second later gets B.
    start_creds_server run-creds "{\"auth\":\"$AUTH_TOKEN\",\"replies\":[
        $(creds_reply AKIDCONTAINERA "$SECRET_A" "$TOKEN_A" 8), {\"status\":500},
        $(creds_reply AKIDCONTAINERB "$SECRET_B" "$TOKEN_B" 3600)]}"
    local creds_log="$E2E_DIR/run-creds-requests.jsonl"

    local now_ms
    now_ms="$(date +%s%3N)"
    # The first race lies 5 minutes back, so the second gets another race id.
    simulate_race "$((now_ms - 300000))"

    e2e_log "podium run with container credentials"
    AWS_CONTAINER_CREDENTIALS_FULL_URI="http://127.0.0.1:$CREDS_PORT/creds" \
        AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE="$token_file" \
        e2e_start_bg podium "$PODIUM_BIN" run \
        --set "stream.name=$STREAM" \
        --set "kinesis.endpoint=http://127.0.0.1:$FAULT_PROXY_PORT" \
        --set "store.path=$E2E_DIR/podium.db" \
        --set publish.transport=iot \
        --set "iot.endpoint=http://127.0.0.1:$IOT_PORT" \
        --set race.idle_close_s=3 \
        --set kinesis.poll_interval_ms=200 \
        --set http.listen=127.0.0.1:0 \
        --set log.level=debug
    local podium_pid="$E2E_LAST_PID"

    e2e_wait_for 60 "the credentials server to serve key B" grep -q '"served":"AKIDCONTAINERB"' "$creds_log"
    e2e_wait_for 30 "a Kinesis request signed with key B" grep -q '"key":"AKIDCONTAINERB"' "$E2E_DIR/kproxy-requests.jsonl"
    check_key_order "$E2E_DIR/kproxy-requests.jsonl" AKIDCONTAINERA AKIDCONTAINERB ||
        e2e_fail "a Kinesis request was signed with key A after one was signed with key B: see $E2E_DIR/kproxy-requests.jsonl"
    grep -q '"level":"warn".*refreshing the credentials failed: container credentials from .*answered HTTP 500; keeping the current ones' "$E2E_DIR/podium.log" ||
        e2e_fail "podium logged no warning for the refresh that failed: see $E2E_DIR/podium.log"
    grep -q '"auth":"bad"\|"auth":"none"' "$creds_log" &&
        e2e_fail "a credentials request had no or a wrong Authorization header: see $creds_log"

    e2e_checker wait --stream "$STREAM" --capture "$E2E_DIR/capture.txt" \
        --seconds "$SECONDS_PER_RACE" --idle-s 3 --timeout-s 120 ||
        e2e_fail "not every leaderboard of the first race reached the IoT server: see $E2E_DIR/podium.log"

    e2e_log "rotating to key C out of band"
    set_plan run-creds "{\"auth\":\"$AUTH_TOKEN\",\"replies\":[$(creds_reply AKIDCONTAINERC "$SECRET_C" "$TOKEN_C" 3600)]}"
    iot_accepts AKIDCONTAINERC "$SECRET_C" "$TOKEN_C"
    simulate_race "$now_ms"

    e2e_checker wait --stream "$STREAM" --capture "$E2E_DIR/capture.txt" \
        --seconds "$SECONDS_PER_RACE" --idle-s 3 --timeout-s 120 ||
        e2e_fail "not every leaderboard reached the IoT server after the rotation: see $E2E_DIR/podium.log"
    grep -q '"key":"AKIDCONTAINERB".*"status":403' "$E2E_DIR/iot-requests.jsonl" ||
        e2e_fail "the IoT server never rejected key B after the rotation: see $E2E_DIR/iot-requests.jsonl"
    grep -q '"key":"AKIDCONTAINERC".*"published":true' "$E2E_DIR/iot-requests.jsonl" ||
        e2e_fail "no message was published with key C: see $E2E_DIR/iot-requests.jsonl"
    grep -q 'refused with 401 or 403; fetching the credentials' "$E2E_DIR/podium.log" ||
        e2e_fail "podium did not fetch the credentials again after a 403: see $E2E_DIR/podium.log"

    e2e_pid_alive "$podium_pid" || e2e_fail "podium run exited before SIGTERM: see $E2E_DIR/podium.log"
    kill -TERM "$podium_pid"
    local status=0
    e2e_wait_exit "$podium_pid" 10 "podium run" || status=$?
    [[ $status -eq 0 ]] ||
        e2e_fail "podium run exited with status $status after SIGTERM, expected 0: see $E2E_DIR/podium.log"
    e2e_checker verify --stream "$STREAM" --capture "$E2E_DIR/capture.txt" \
        --seconds "$SECONDS_PER_RACE" ||
        e2e_fail "the leaderboards the IoT server accepted do not match the rules"
    local log
    for log in "$E2E_DIR/kproxy-requests.jsonl" "$E2E_DIR/iot-requests.jsonl"; do
        check_key_order "$log" AKIDCONTAINERA AKIDCONTAINERC &&
            check_key_order "$log" AKIDCONTAINERB AKIDCONTAINERC ||
            e2e_fail "a request was signed with an older key after one was signed with key C: see $log"
    done
    e2e_log "refresh before expiry and recovery after a rotation"
}

# Fail when any output of podium contains a secret.
check_no_secrets() {
    local files=("$E2E_DIR"/podium*.out "$E2E_DIR"/podium*.err "$E2E_DIR/podium.log" "$E2E_DIR/simulate.log")
    local secret
    for secret in "${ALL_SECRETS[@]}"; do
        if grep -lF -- "$secret" "${files[@]}"; then
            e2e_fail "the files above contain the secret '${secret:0:16}...', which podium must never print or log"
        fi
    done
    e2e_log "no secret in ${#files[@]} output and log files of $RUN_COUNT podium commands and podium run"
}

main() {
    e2e_init e2e_credentials
    test_profiles
    test_check_config
    test_container
    test_imds
    test_refresh_and_rotation
    check_no_secrets
    e2e_log "passed"
}

main "$@"
