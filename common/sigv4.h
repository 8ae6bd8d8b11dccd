/*
 * AWS Signature Version 4 for HTTP requests, with an injectable time so that
 * tests can compare against signatures computed by an AWS SDK. Non-S3
 * services (Kinesis, IoT data plane) expect the canonical URI to be the wire
 * path percent-encoded a second time; sigv4_canonical_uri() does that.
 */
#ifndef PODIUM_COMMON_SIGV4_H
#define PODIUM_COMMON_SIGV4_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/strbuf.h"

struct aws_creds_provider;

struct aws_credentials {
    char *access_key_id;     /* owned */
    char *secret_access_key; /* owned; never logged */
    char *session_token;     /* owned; NULL or "" means none */
    /* Borrowed; NULL for fixed credentials. When set, the strings above are
     * unused and an aws_client signs each request with the provider's
     * current credentials (common/awscreds.h). */
    struct aws_creds_provider *provider;
};

void aws_credentials_clear(struct aws_credentials *creds);

/* A header to sign and send. Names are lower-case; values are trimmed. */
struct sigv4_header {
    const char *name;
    const char *value;
};

struct sigv4_input {
    const char *method;          /* "POST" */
    const char *host;            /* Host header value, with :port if any */
    const char *canonical_uri;   /* from sigv4_canonical_uri() */
    const char *canonical_query; /* sorted and encoded; "" when none */
    const struct sigv4_header *headers; /* besides host, x-amz-date and
                                           x-amz-security-token */
    size_t header_count;
    const void *payload;
    size_t payload_len;
    const char *region;
    const char *service; /* "kinesis", "iotdata" */
    int64_t unix_time;   /* seconds since the epoch */
};

struct sigv4_output {
    char amz_date[17];        /* 20260101T000000Z */
    char payload_hash[65];    /* hex SHA-256 of the payload */
    char signed_headers[512]; /* "content-type;host;x-amz-date;..." */
    char signature[65];       /* hex */
    char authorization[1024]; /* the Authorization header value */
};

/*
 * Sign a request. The caller sends exactly the headers listed in
 * out->signed_headers: host, x-amz-date (out->amz_date), the input headers
 * and x-amz-security-token when the credentials carry a non-empty token.
 * Returns 0, or -EINVAL when an input is missing or a buffer is too small.
 */
int sigv4_sign(const struct sigv4_input *in,
               const struct aws_credentials *creds, struct sigv4_output *out);

/*
 * Percent-encode s the way SigV4 does: unreserved characters
 * (A-Z a-z 0-9 - _ . ~) are kept, everything else becomes %XX with upper-case
 * hex; '/' is kept unless encode_slash is true. Appends to sb.
 */
int sigv4_uri_encode(struct strbuf *sb, const char *s, size_t n,
                     bool encode_slash);

/*
 * Canonical query string of a wire query ("b=2&a=1", without the '?'): each
 * name and value is decoded and encoded again with sigv4_uri_encode(), and
 * the pairs are sorted by name, then value. A '+' is a literal plus, not a
 * space. Appends to sb. Returns 0, or -EINVAL on a bad %XX escape or more
 * than 32 parameters.
 */
int sigv4_canonical_query(struct strbuf *sb, const char *wire_query);

/*
 * Canonical URI of a wire path that is already percent-encoded, for non-S3
 * services: each segment is encoded once more ("%2F" becomes "%252F").
 */
int sigv4_canonical_uri(struct strbuf *sb, const char *wire_path);

#endif
