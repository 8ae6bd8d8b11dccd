/*
 * AWS Signature Version 4, built on OpenSSL's SHA-256 and HMAC. libcurl has
 * its own signer (CURLOPT_AWS_SIGV4), but the one in libcurl 7.88 neither
 * encodes the path a second time for non-S3 services nor sorts query
 * parameters (https://github.com/curl/curl/issues/9717).
 *
 * Reference: https://docs.aws.amazon.com/IAM/latest/UserGuide/
 * create-signed-request.html
 */
#include "common/sigv4.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

/* Headers beyond host, x-amz-date and x-amz-security-token. */
#define SIGV4_MAX_HEADERS 16
/* Maximum canonical request size; real ones are a few hundred bytes. */
#define SIGV4_MAX_CANONICAL (64 * 1024)
/* Query parameters accepted by sigv4_canonical_query(). */
#define SIGV4_MAX_QUERY_PARAMS 32

/* A header in canonical form: lower-case name, trimmed value. */
struct canonical_header {
    char name[64];
    const char *value; /* borrowed from the input */
};

void aws_credentials_clear(struct aws_credentials *creds)
{
    if (creds == NULL)
        return;
    free(creds->access_key_id);
    if (creds->secret_access_key != NULL) {
        explicit_bzero(creds->secret_access_key,
                       strlen(creds->secret_access_key));
        free(creds->secret_access_key);
    }
    if (creds->session_token != NULL) {
        explicit_bzero(creds->session_token, strlen(creds->session_token));
        free(creds->session_token);
    }
    explicit_bzero(creds, sizeof *creds);
}

static bool is_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' ||
           c == '~';
}

int sigv4_uri_encode(struct strbuf *sb, const char *s, size_t n,
                     bool encode_slash)
{
    static const char hex[] = "0123456789ABCDEF";

    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_unreserved(c) || (c == '/' && !encode_slash)) {
            sb_putc(sb, (char)c);
            continue;
        }
        char esc[3] = {'%', hex[c >> 4], hex[c & 15]};
        sb_append(sb, esc, sizeof esc);
    }
    return sb_error(sb);
}

int sigv4_canonical_uri(struct strbuf *sb, const char *wire_path)
{
    /* An empty path is sent as "/", so it is signed as "/". */
    if (wire_path == NULL || wire_path[0] == '\0')
        return sb_putc(sb, '/');
    return sigv4_uri_encode(sb, wire_path, strlen(wire_path), false);
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * Append s[0..n) with its %XX escapes decoded and then encoded the SigV4 way,
 * '/' included. A '+' is taken as a literal plus, not as a space. Returns 0,
 * -EINVAL on a '%' without two hex digits after it, or a strbuf error.
 */
static int reencode_component(struct strbuf *sb, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (n - i < 3)
                return -EINVAL;
            int hi = hex_value(s[i + 1]);
            int lo = hex_value(s[i + 2]);
            if (hi < 0 || lo < 0)
                return -EINVAL;
            c = (char)(hi * 16 + lo);
            i += 2;
        }
        sigv4_uri_encode(sb, &c, 1, true);
    }
    return sb_error(sb);
}

/* One query parameter, name and value in canonical encoding (owned). */
struct query_param {
    char *name;
    char *value;
};

static int compare_params(const void *a, const void *b)
{
    const struct query_param *pa = a, *pb = b;
    int rc = strcmp(pa->name, pb->name);
    return rc != 0 ? rc : strcmp(pa->value, pb->value);
}

/* Split "name[=value]" and store both parts re-encoded in *param. */
static int parse_param(struct query_param *param, const char *s, size_t n)
{
    const char *eq = memchr(s, '=', n);
    size_t name_len = eq != NULL ? (size_t)(eq - s) : n;
    struct strbuf name, value;
    int rc;

    sb_init(&name, SIGV4_MAX_CANONICAL);
    sb_init(&value, SIGV4_MAX_CANONICAL);
    rc = reencode_component(&name, s, name_len);
    if (rc == 0 && eq != NULL)
        rc = reencode_component(&value, eq + 1, n - name_len - 1);
    if (rc != 0) {
        sb_free(&name);
        sb_free(&value);
        return rc;
    }
    param->name = sb_take(&name, NULL);
    param->value = sb_take(&value, NULL);
    if (param->name == NULL || param->value == NULL)
        return -ENOMEM;
    return 0;
}

int sigv4_canonical_query(struct strbuf *sb, const char *wire_query)
{
    struct query_param params[SIGV4_MAX_QUERY_PARAMS] = {{0}};
    size_t count = 0;
    int rc = 0;

    for (const char *p = wire_query; p != NULL && *p != '\0';) {
        size_t n = strcspn(p, "&");
        if (n > 0) {
            if (count == SIGV4_MAX_QUERY_PARAMS) {
                rc = -EINVAL;
                goto cleanup;
            }
            rc = parse_param(&params[count++], p, n);
            if (rc != 0)
                goto cleanup;
        }
        p += n;
        if (*p == '&')
            p++;
    }

    /* Sort by name, then by value, in byte order as SigV4 requires. */
    qsort(params, count, sizeof params[0], compare_params);
    for (size_t i = 0; i < count; i++) {
        if (i > 0)
            sb_putc(sb, '&');
        sb_printf(sb, "%s=%s", params[i].name, params[i].value);
    }
    rc = sb_error(sb);

cleanup:
    for (size_t i = 0; i < count; i++) {
        free(params[i].name);
        free(params[i].value);
    }
    return rc;
}

static void hex_encode(char *out, const unsigned char *bytes, size_t n)
{
    static const char hex[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[bytes[i] >> 4];
        out[2 * i + 1] = hex[bytes[i] & 15];
    }
    out[2 * n] = '\0';
}

/* Write the hex SHA-256 of data into out (65 bytes). */
static void sha256_hex(char out[65], const void *data, size_t n)
{
    unsigned char digest[SHA256_DIGEST_LENGTH];

    SHA256(n > 0 ? data : (const void *)"", n, digest);
    hex_encode(out, digest, sizeof digest);
}

/* HMAC-SHA256 of a NUL-terminated message; returns 0 or -EINVAL. */
static int hmac_sha256(unsigned char out[SHA256_DIGEST_LENGTH], const void *key,
                       size_t key_len, const char *msg)
{
    unsigned int out_len = 0;

    if (key_len > (size_t)INT32_MAX)
        return -EINVAL;
    if (HMAC(EVP_sha256(), key, (int)key_len, (const unsigned char *)msg,
             strlen(msg), out, &out_len) == NULL ||
        out_len != SHA256_DIGEST_LENGTH)
        return -EINVAL;
    return 0;
}

/*
 * Copy value into sb with leading and trailing whitespace removed and inner
 * runs of spaces and tabs collapsed to one space, as canonical headers are.
 */
static void append_trimmed(struct strbuf *sb, const char *value)
{
    bool pending_space = false;
    bool started = false;

    for (const char *p = value; *p != '\0'; p++) {
        if (*p == ' ' || *p == '\t') {
            pending_space = started;
            continue;
        }
        if (pending_space)
            sb_putc(sb, ' ');
        pending_space = false;
        started = true;
        sb_putc(sb, *p);
    }
}

static int tolower_ascii(char c)
{
    return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

/* Check that a header name has only lower-case letters, digits and '-'. */
static bool is_header_name(const char *name)
{
    for (const char *p = name; *p != '\0'; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
              *p == '-'))
            return false;
    }
    return true;
}

static int compare_headers(const void *a, const void *b)
{
    const struct canonical_header *ha = a, *hb = b;
    return strcmp(ha->name, hb->name);
}

/*
 * Fill list with every header to sign: the caller's headers with lower-case
 * names, host, x-amz-date and the session token when there is one, sorted by
 * name. Returns the count, or -EINVAL on a missing, long or duplicate name,
 * or on a caller header that the signer adds itself.
 */
static int collect_headers(struct canonical_header *list,
                           const struct sigv4_input *in, const char *amz_date,
                           const char *token)
{
    size_t count = 0;

    if (in->header_count > SIGV4_MAX_HEADERS ||
        (in->header_count > 0 && in->headers == NULL))
        return -EINVAL;
    for (size_t i = 0; i < in->header_count; i++) {
        const char *name = in->headers[i].name;
        size_t len = name != NULL ? strlen(name) : 0;
        if (len == 0 || len >= sizeof list[0].name ||
            in->headers[i].value == NULL)
            return -EINVAL;
        for (size_t j = 0; j <= len; j++)
            list[count].name[j] = (char)tolower_ascii(name[j]);
        if (!is_header_name(list[count].name) ||
            strpbrk(in->headers[i].value, "\r\n") != NULL)
            return -EINVAL;
        list[count].value = in->headers[i].value;
        count++;
    }

    list[count++] = (struct canonical_header){"host", in->host};
    list[count++] = (struct canonical_header){"x-amz-date", amz_date};
    if (token != NULL)
        list[count++] =
            (struct canonical_header){"x-amz-security-token", token};

    qsort(list, count, sizeof list[0], compare_headers);
    for (size_t i = 1; i < count; i++) {
        if (strcmp(list[i - 1].name, list[i].name) == 0)
            return -EINVAL;
    }
    return (int)count;
}

/*
 * Write the canonical request into sb and the signed header list into
 * out->signed_headers. Returns 0 or -EINVAL.
 */
static int build_canonical_request(struct strbuf *sb,
                                   const struct sigv4_input *in,
                                   const char *token, struct sigv4_output *out)
{
    struct canonical_header list[SIGV4_MAX_HEADERS + 3];
    struct strbuf names;
    int count = collect_headers(list, in, out->amz_date, token);

    if (count < 0)
        return count;

    sb_printf(sb, "%s\n%s\n%s\n", in->method, in->canonical_uri,
              in->canonical_query != NULL ? in->canonical_query : "");
    for (int i = 0; i < count; i++) {
        sb_printf(sb, "%s:", list[i].name);
        append_trimmed(sb, list[i].value);
        sb_putc(sb, '\n');
    }
    sb_putc(sb, '\n');

    sb_init(&names, sizeof out->signed_headers - 1);
    for (int i = 0; i < count; i++)
        sb_printf(&names, i > 0 ? ";%s" : "%s", list[i].name);
    if (sb_error(&names) != 0) {
        sb_free(&names);
        return -EINVAL;
    }
    memcpy(out->signed_headers, names.data, names.len + 1);
    sb_free(&names);

    sb_printf(sb, "%s\n%s", out->signed_headers, out->payload_hash);
    return sb_error(sb) != 0 ? -EINVAL : 0;
}

/*
 * Derive the signing key: HMAC chain over "AWS4" + secret, the date, the
 * region, the service and "aws4_request".
 */
static int derive_signing_key(unsigned char key[SHA256_DIGEST_LENGTH],
                              const char *secret, const char *date,
                              const char *region, const char *service)
{
    char first[256];
    int rc;

    if (snprintf(first, sizeof first, "AWS4%s", secret) >= (int)sizeof first)
        return -EINVAL;
    rc = hmac_sha256(key, first, strlen(first), date);
    explicit_bzero(first, sizeof first);
    if (rc == 0)
        rc = hmac_sha256(key, key, SHA256_DIGEST_LENGTH, region);
    if (rc == 0)
        rc = hmac_sha256(key, key, SHA256_DIGEST_LENGTH, service);
    if (rc == 0)
        rc = hmac_sha256(key, key, SHA256_DIGEST_LENGTH, "aws4_request");
    return rc;
}

static bool input_is_complete(const struct sigv4_input *in,
                              const struct aws_credentials *creds)
{
    return in->method != NULL && in->host != NULL && in->host[0] != '\0' &&
           in->canonical_uri != NULL && in->region != NULL &&
           in->service != NULL &&
           (in->payload != NULL || in->payload_len == 0) &&
           creds->access_key_id != NULL && creds->secret_access_key != NULL;
}

/* Format unix_time as 20260101T000000Z; returns 0 or -EINVAL. */
static int format_amz_date(char out[17], int64_t unix_time)
{
    time_t t = (time_t)unix_time;
    struct tm tm;

    if ((int64_t)t != unix_time || gmtime_r(&t, &tm) == NULL)
        return -EINVAL;
    if (strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm) != 16)
        return -EINVAL;
    return 0;
}

int sigv4_sign(const struct sigv4_input *in,
               const struct aws_credentials *creds, struct sigv4_output *out)
{
    const char *token = NULL;
    char date[9], scope[256], request_hash[65];
    unsigned char key[SHA256_DIGEST_LENGTH], mac[SHA256_DIGEST_LENGTH];
    struct strbuf sb;
    int rc;

    if (!input_is_complete(in, creds))
        return -EINVAL;
    if (format_amz_date(out->amz_date, in->unix_time) != 0)
        return -EINVAL;
    memcpy(date, out->amz_date, 8);
    date[8] = '\0';
    if (creds->session_token != NULL && creds->session_token[0] != '\0')
        token = creds->session_token;
    sha256_hex(out->payload_hash, in->payload, in->payload_len);

    sb_init(&sb, SIGV4_MAX_CANONICAL);
    rc = build_canonical_request(&sb, in, token, out);
    if (rc != 0)
        goto cleanup;
    sha256_hex(request_hash, sb.data, sb.len);

    rc = -EINVAL;
    if (snprintf(scope, sizeof scope, "%s/%s/%s/aws4_request", date, in->region,
                 in->service) >= (int)sizeof scope)
        goto cleanup;
    sb_reset(&sb);
    sb_printf(&sb, "AWS4-HMAC-SHA256\n%s\n%s\n%s", out->amz_date, scope,
              request_hash);
    if (sb_error(&sb) != 0)
        goto cleanup;

    rc = derive_signing_key(key, creds->secret_access_key, date, in->region,
                            in->service);
    if (rc == 0)
        rc = hmac_sha256(mac, key, sizeof key, sb.data);
    if (rc != 0)
        goto cleanup;
    hex_encode(out->signature, mac, sizeof mac);

    rc = -EINVAL;
    if (snprintf(out->authorization, sizeof out->authorization,
                 "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, "
                 "Signature=%s",
                 creds->access_key_id, scope, out->signed_headers,
                 out->signature) >= (int)sizeof out->authorization)
        goto cleanup;
    rc = 0;

cleanup:
    explicit_bzero(key, sizeof key);
    sb_free(&sb);
    return rc;
}
