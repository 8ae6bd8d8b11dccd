#!/usr/bin/env bash
# Send one signed Kinesis API call to a local endpoint and print the reply.
#
#   tools/kinesis-call.sh PORT ACTION JSON
#   tools/kinesis-call.sh 4567 ListShards '{"StreamName":"race-telemetry"}'
#
# The request is signed with SigV4 for region ${REGION:-us-east-1} and fixed
# test credentials. The access key id is not numeric because kinesalite
# reads a 12-digit key id as an account id. Exits non-zero when curl fails
# or the server replies with an HTTP error; the reply body is printed in
# both cases.
set -euo pipefail

usage() {
    echo "usage: $0 PORT ACTION JSON" >&2
    echo "  example: $0 4567 ListStreams '{}'" >&2
    exit 2
}

main() {
    if [[ $# -ne 3 ]]; then
        usage
    fi
    local port="$1" action="$2" body="$3"
    if ! [[ "$port" =~ ^[0-9]+$ ]]; then
        echo "kinesis-call: invalid port '$port': expected a number" >&2
        exit 2
    fi
    if ! [[ "$action" =~ ^[A-Za-z]+$ ]]; then
        echo "kinesis-call: invalid action '$action': expected an API name such as ListShards" >&2
        exit 2
    fi

    local status=0
    curl -sS --fail-with-body --max-time 30 \
        --aws-sigv4 "aws:amz:${REGION:-us-east-1}:kinesis" \
        --user AKIDEXAMPLE:SECRETEXAMPLE \
        -H 'Content-Type: application/x-amz-json-1.1' \
        -H "X-Amz-Target: Kinesis_20131202.$action" \
        -d "$body" \
        "http://127.0.0.1:$port/" || status=$?
    echo
    if [[ $status -ne 0 ]]; then
        echo "kinesis-call: $action on 127.0.0.1:$port failed (curl exit $status)" >&2
    fi
    return "$status"
}

main "$@"
