#!/usr/bin/env bash
# Make throw-away certificates for the MQTT over TLS tests, with Debian's
# openssl command. Every key is a new P-256 key, and every certificate is
# valid for 30 days.
#
#   tools/make-test-certs.sh DIR
#
# DIR receives PEM files, each NAME.pem (certificate) with NAME.key:
#   ca                 the test CA
#   server             server certificate for 127.0.0.1: subjectAltName
#                      IP:127.0.0.1 and DNS:localhost, signed by ca
#   server-other-host  server certificate for DNS:other.test only, signed by
#                      ca, to test a host name that does not match
#   client             client certificate podium-test-client, signed by ca
#   other-ca           a second CA that the brokers do not trust
#   other-client       client certificate podium-test-other, signed by
#                      other-ca
#
# The keys are world-readable and DIR is world-traversable, on purpose:
# mosquitto started as root switches to the user "mosquitto" before it
# reads its TLS key file. These keys protect nothing; never use this for a
# real key.
set -euo pipefail

VALID_DAYS=30

die() {
    echo "make-test-certs: $*" >&2
    exit 1
}

# Write the extensions of one certificate kind to FILE.
write_extensions() {
    local kind="$1" file="$2"
    case "$kind" in
    ca)
        cat >"$file" <<EOF
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
        ;;
    server)
        cat >"$file" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = IP:127.0.0.1, DNS:localhost
EOF
        ;;
    server-other-host)
        cat >"$file" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:other.test
EOF
        ;;
    client)
        cat >"$file" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
        ;;
    *) die "unknown certificate kind '$kind'" ;;
    esac
}

new_key() {
    local name="$1"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
        -out "$DIR/$name.key" 2>/dev/null ||
        die "openssl genpkey failed for $DIR/$name.key"
}

# make_ca NAME SUBJECT: a self-signed CA certificate.
make_ca() {
    local name="$1" subject="$2"
    new_key "$name"
    write_extensions ca "$DIR/$name.ext"
    openssl req -new -key "$DIR/$name.key" -subj "$subject" -config /dev/null \
        -out "$DIR/$name.csr" ||
        die "openssl req failed for $name"
    openssl x509 -req -in "$DIR/$name.csr" -signkey "$DIR/$name.key" \
        -days "$VALID_DAYS" -sha256 -set_serial "0x$(openssl rand -hex 8)" \
        -extfile "$DIR/$name.ext" -out "$DIR/$name.pem" 2>/dev/null ||
        die "openssl x509 failed to self-sign $name"
}

# make_leaf NAME KIND SUBJECT ISSUER: a certificate signed by the CA ISSUER.
make_leaf() {
    local name="$1" kind="$2" subject="$3" issuer="$4"
    new_key "$name"
    write_extensions "$kind" "$DIR/$name.ext"
    openssl req -new -key "$DIR/$name.key" -subj "$subject" -config /dev/null \
        -out "$DIR/$name.csr" ||
        die "openssl req failed for $name"
    openssl x509 -req -in "$DIR/$name.csr" -CA "$DIR/$issuer.pem" \
        -CAkey "$DIR/$issuer.key" -days "$VALID_DAYS" -sha256 \
        -set_serial "0x$(openssl rand -hex 8)" -extfile "$DIR/$name.ext" \
        -out "$DIR/$name.pem" 2>/dev/null ||
        die "openssl x509 failed to sign $name with $issuer"
}

main() {
    [[ $# -eq 1 ]] || {
        echo "usage: $0 DIR" >&2
        exit 2
    }
    command -v openssl >/dev/null 2>&1 ||
        die "openssl not found: install the Debian package openssl (apt-get install openssl)"
    DIR="$1"
    mkdir -p "$DIR"
    DIR="$(cd "$DIR" && pwd)"
    chmod 755 "$DIR"

    make_ca ca "/CN=podium test CA"
    make_leaf server server "/CN=localhost" ca
    make_leaf server-other-host server-other-host "/CN=other.test" ca
    make_leaf client client "/CN=podium-test-client" ca
    make_ca other-ca "/CN=podium other test CA"
    make_leaf other-client client "/CN=podium-test-other" other-ca
    rm -f "$DIR"/*.csr "$DIR"/*.ext
    chmod 644 "$DIR"/*.key "$DIR"/*.pem

    # Check the chains, so a test that fails later never blames podium for
    # a certificate this script got wrong.
    openssl verify -CAfile "$DIR/ca.pem" "$DIR/server.pem" "$DIR/client.pem" \
        "$DIR/server-other-host.pem" >/dev/null ||
        die "a certificate in $DIR does not verify against $DIR/ca.pem"
    openssl verify -CAfile "$DIR/other-ca.pem" "$DIR/other-client.pem" >/dev/null ||
        die "$DIR/other-client.pem does not verify against $DIR/other-ca.pem"
}

main "$@"
