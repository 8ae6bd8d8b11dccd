/*
 * Signed AWS calls on top of httpc. Each request carries exactly the headers
 * it signs, plus Authorization and the Content-Length that libcurl adds.
 * Empty "accept:" and "content-type:" lines remove the defaults that libcurl
 * would add otherwise, because an unsigned Content-Type could change how the
 * service reads the body.
 */
#include "common/aws.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>

#include "common/awscreds.h"
#include "common/strbuf.h"

/* Maximum wire path and query length accepted by aws_signed_post(). */
#define AWS_MAX_TARGET 4096
/* Header lines of one request: host, date, token, 2 signed, auth, 2 removed */
#define AWS_MAX_HEADER_LINES 8
/* Maximum length of one header line. AWS fixes no maximum for session
 * tokens, so 8 KiB is an estimate with room to spare. */
#define AWS_MAX_HEADER_LINE 8192

struct aws_client {
    struct httpc *http; /* borrowed */
    struct aws_endpoint ep;
    struct aws_credentials creds;        /* when provider is NULL */
    struct aws_creds_provider *provider; /* borrowed */
    char *target_prefix;
    int64_t (*now_fn)(void);
};

/* State of one call between httpc_start() and its callback. */
struct aws_call {
    aws_reply_cb cb;
    void *arg;
    struct aws_creds_provider *provider; /* notified of 401 and 403 */
};

/* Duplicate s, or return NULL for NULL. Sets *failed on allocation error. */
static char *dup_or_null(const char *s, bool *failed)
{
    if (s == NULL)
        return NULL;
    char *copy = strdup(s);
    if (copy == NULL)
        *failed = true;
    return copy;
}

int aws_credentials_from_env(struct aws_credentials *out)
{
    const char *key_id = getenv("AWS_ACCESS_KEY_ID");
    const char *secret = getenv("AWS_SECRET_ACCESS_KEY");
    const char *token = getenv("AWS_SESSION_TOKEN");
    bool failed = false;

    memset(out, 0, sizeof *out);
    if (key_id == NULL || key_id[0] == '\0' || secret == NULL ||
        secret[0] == '\0')
        return -ENOENT;

    out->access_key_id = dup_or_null(key_id, &failed);
    out->secret_access_key = dup_or_null(secret, &failed);
    out->session_token = dup_or_null(token, &failed);
    if (failed) {
        aws_credentials_clear(out);
        return -ENOMEM;
    }
    return 0;
}

void aws_endpoint_clear(struct aws_endpoint *ep)
{
    if (ep == NULL)
        return;
    free(ep->url);
    free(ep->host);
    free(ep->region);
    free(ep->service);
    memset(ep, 0, sizeof *ep);
}

/* Parts of an endpoint URL, pointing into the URL string. */
struct url_parts {
    const char *scheme; /* "http" or "https", lower-case */
    unsigned default_port;
    const char *host;
    size_t host_len;
    unsigned port; /* 0 when the URL has none */
};

static bool is_host_char(char c, bool bracketed)
{
    if (isalnum((unsigned char)c) || c == '.' || c == '-')
        return true;
    return bracketed && c == ':';
}

/*
 * Split "host[:port]" or "[v6]:port" into parts. Returns NULL, or what is
 * wrong with it for the error message.
 */
static const char *parse_authority(struct url_parts *parts, const char *s,
                                   size_t n)
{
    bool bracketed = n > 0 && s[0] == '[';
    const char *host_end = bracketed ? memchr(s, ']', n) : memchr(s, ':', n);
    const char *end = s + n;

    if (bracketed && host_end == NULL)
        return "an IPv6 address without its closing ']'";
    if (host_end == NULL)
        host_end = end;
    else if (bracketed)
        host_end++;
    parts->host = s;
    parts->host_len = (size_t)(host_end - s);

    size_t inner_start = bracketed ? 1 : 0;
    size_t inner_end = parts->host_len - (bracketed ? 1 : 0);
    if (inner_end <= inner_start)
        return "an empty host";
    for (size_t i = inner_start; i < inner_end; i++) {
        if (!is_host_char(s[i], bracketed))
            return "an invalid character in the host";
    }

    if (host_end == end)
        return NULL;
    if (*host_end != ':' || host_end + 1 == end || end - host_end > 6)
        return "an invalid port";
    unsigned long port = 0;
    for (const char *p = host_end + 1; p < end; p++) {
        if (!isdigit((unsigned char)*p))
            return "an invalid port";
        port = port * 10 + (unsigned long)(*p - '0');
    }
    if (port == 0 || port > 65535)
        return "a port outside 1-65535";
    parts->port = (unsigned)port;
    return NULL;
}

/*
 * Parse "http(s)://authority[/]". Returns NULL, or what is wrong for the
 * error message. User info is rejected because it would carry a password.
 */
static const char *parse_url(struct url_parts *parts, const char *url)
{
    const char *authority;

    if (strncasecmp(url, "https://", 8) == 0) {
        parts->scheme = "https";
        parts->default_port = 443;
        authority = url + 8;
    } else if (strncasecmp(url, "http://", 7) == 0) {
        parts->scheme = "http";
        parts->default_port = 80;
        authority = url + 7;
    } else {
        return "a scheme other than http:// or https://";
    }

    size_t n = strcspn(authority, "/?#");
    if (memchr(authority, '@', n) != NULL)
        return "user info before the host";
    const char *rest = authority + n;
    if (rest[0] != '\0' && strcmp(rest, "/") != 0)
        return "a path, query or fragment";
    return parse_authority(parts, authority, n);
}

/* Check a region or signing name: lower-case letters, digits and '-'. */
static bool is_name(const char *s)
{
    if (s == NULL || s[0] == '\0')
        return false;
    for (; *s != '\0'; s++) {
        if (!islower((unsigned char)*s) && !isdigit((unsigned char)*s) &&
            *s != '-')
            return false;
    }
    return true;
}

/* Append s[0..n) in lower case, as DNS names compare without case. */
static void append_lower(struct strbuf *sb, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        sb_putc(sb, (char)tolower((unsigned char)s[i]));
}

/* Fill ep->url and ep->host from parsed parts. Returns 0 or -ENOMEM. */
static int build_endpoint(struct aws_endpoint *ep,
                          const struct url_parts *parts)
{
    struct strbuf url, host;

    sb_init(&url, 512);
    sb_init(&host, 512);
    sb_printf(&url, "%s://", parts->scheme);
    append_lower(&url, parts->host, parts->host_len);
    append_lower(&host, parts->host, parts->host_len);
    if (parts->port != 0) {
        sb_printf(&url, ":%u", parts->port);
        if (parts->port != parts->default_port)
            sb_printf(&host, ":%u", parts->port);
    }
    if (sb_error(&url) != 0 || sb_error(&host) != 0) {
        sb_free(&url);
        sb_free(&host);
        return -ENOMEM;
    }
    ep->url = sb_take(&url, NULL);
    ep->host = sb_take(&host, NULL);
    return ep->url != NULL && ep->host != NULL ? 0 : -ENOMEM;
}

int aws_endpoint_init(struct aws_endpoint *ep, const char *url,
                      const char *region, const char *service, char *err,
                      size_t err_len)
{
    struct url_parts parts = {0};
    const char *problem;
    bool failed = false;

    memset(ep, 0, sizeof *ep);
    if (url == NULL || url[0] == '\0') {
        snprintf(err, err_len,
                 "missing endpoint URL: expected "
                 "http(s)://host[:port]");
        return -EINVAL;
    }
    problem = parse_url(&parts, url);
    if (problem != NULL) {
        /* Name the value, except when it may contain a password. */
        bool secret = strchr(url, '@') != NULL;
        snprintf(err, err_len,
                 "invalid endpoint URL \"%s\": it has %s, expected "
                 "http(s)://host[:port] with no path, query or user info",
                 secret ? "(not shown, it contains '@')" : url, problem);
        return -EINVAL;
    }
    if (!is_name(region) || !is_name(service)) {
        snprintf(err, err_len,
                 "invalid region \"%s\" or service \"%s\" for endpoint %s: "
                 "expected lower-case letters, digits and '-'",
                 region != NULL ? region : "", service != NULL ? service : "",
                 url);
        return -EINVAL;
    }

    ep->region = dup_or_null(region, &failed);
    ep->service = dup_or_null(service, &failed);
    if (failed || build_endpoint(ep, &parts) != 0) {
        aws_endpoint_clear(ep);
        snprintf(err, err_len, "out of memory parsing endpoint %s", url);
        return -ENOMEM;
    }
    return 0;
}

/* Deep-copy an endpoint. Returns 0 or -ENOMEM. */
static int copy_endpoint(struct aws_endpoint *dst,
                         const struct aws_endpoint *src)
{
    bool failed = false;

    dst->url = dup_or_null(src->url, &failed);
    dst->host = dup_or_null(src->host, &failed);
    dst->region = dup_or_null(src->region, &failed);
    dst->service = dup_or_null(src->service, &failed);
    return failed ? -ENOMEM : 0;
}

/* Check an X-Amz-Target part: letters, digits, '_' and '.'. */
static bool is_target_name(const char *s)
{
    if (s == NULL || s[0] == '\0')
        return false;
    for (; *s != '\0'; s++) {
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '.')
            return false;
    }
    return true;
}

struct aws_client *aws_client_new(struct httpc *http,
                                  const struct aws_endpoint *ep,
                                  const struct aws_credentials *creds,
                                  const char *target_prefix,
                                  int64_t (*now_fn)(void))
{
    struct aws_client *client;
    bool failed = false;

    if (http == NULL || ep == NULL || ep->url == NULL || ep->host == NULL ||
        creds == NULL ||
        (creds->provider == NULL &&
         (creds->access_key_id == NULL || creds->secret_access_key == NULL)) ||
        (target_prefix != NULL && !is_target_name(target_prefix)))
        return NULL;
    client = calloc(1, sizeof *client);
    if (client == NULL)
        return NULL;
    client->http = http;
    client->now_fn = now_fn;
    client->provider = creds->provider;

    if (creds->provider == NULL) {
        client->creds.access_key_id =
            dup_or_null(creds->access_key_id, &failed);
        client->creds.secret_access_key =
            dup_or_null(creds->secret_access_key, &failed);
        client->creds.session_token =
            dup_or_null(creds->session_token, &failed);
    }
    client->target_prefix = dup_or_null(target_prefix, &failed);
    if (failed || copy_endpoint(&client->ep, ep) != 0) {
        aws_client_free(client);
        return NULL;
    }
    return client;
}

void aws_client_free(struct aws_client *client)
{
    if (client == NULL)
        return;
    aws_endpoint_clear(&client->ep);
    aws_credentials_clear(&client->creds);
    free(client->target_prefix);
    free(client);
}

/* The credentials to sign with now: the provider's current ones, or the
 * client's own. */
static const struct aws_credentials *
client_creds(const struct aws_client *client)
{
    return client->provider != NULL
               ? aws_creds_provider_current(client->provider)
               : &client->creds;
}

/* String member key of a JSON object, or NULL. */
static const char *member_string(json_t *object, const char *key)
{
    void *iter = json_object_iter_at(object, key);

    return iter != NULL ? json_string_value(json_object_iter_value(iter))
                        : NULL;
}

/*
 * Fill the error fields of a non-2xx reply from a JSON error body such as
 * {"__type":"com.amazonaws.kinesis.v20131202#ExpiredIteratorException",
 *  "message":"..."}. Returns the parsed document (owned, the strings point
 * into it) or NULL when the body is not a JSON object.
 */
static json_t *parse_error_body(struct aws_reply *reply)
{
    json_t *root = json_loadb(reply->body, reply->body_len, 0, NULL);

    if (root == NULL || !json_is_object(root)) {
        json_decref(root);
        return NULL;
    }

    const char *type = member_string(root, "__type");
    if (type != NULL) {
        const char *hash = strrchr(type, '#');
        reply->error_type = hash != NULL ? hash + 1 : type;
    }
    const char *message = member_string(root, "message");
    if (message == NULL)
        message = member_string(root, "Message");
    reply->error_message = message;
    return root;
}

static void on_http_done(void *arg, const struct httpc_response *resp)
{
    struct aws_call *call = arg;
    struct aws_reply reply = {
        .transport = resp->error,
        .transport_text = resp->error_text,
        .status = resp->status,
        .body = resp->body,
        .body_len = resp->body_len,
    };
    json_t *root = NULL;

    if (resp->error == HTTPC_OK && (resp->status < 200 || resp->status > 299))
        root = parse_error_body(&reply);
    /* Rotated credentials show as 401 or 403: let the provider fetch new
     * ones, so that the caller's retry is signed with them. */
    if (resp->error == HTTPC_OK && (resp->status == 401 || resp->status == 403))
        aws_creds_provider_rejected(call->provider);
    call->cb(call->arg, &reply);
    json_decref(root);
    free(call);
}

/* httpc on_cancel: the caller cancelled, so only the call state goes. */
static void on_http_cancel(void *arg)
{
    free(arg);
}

/* Request fields for send_signed(), besides the client. */
struct signed_request {
    const char *wire_path;              /* percent-encoded, starts with '/' */
    const char *wire_query;             /* without '?'; NULL or "" for none */
    const struct sigv4_header *headers; /* signed and sent; lower-case */
    size_t header_count;
    const void *body;
    size_t body_len;
    long timeout_ms;
    size_t max_response;
};

/* Append one "name: value" line as an owned string. */
static int add_line(char **lines, size_t *count, const char *name,
                    const char *value)
{
    struct strbuf sb;

    if (*count == AWS_MAX_HEADER_LINES)
        return -EINVAL;
    sb_init(&sb, AWS_MAX_HEADER_LINE);
    sb_printf(&sb, "%s:%s%s", name, value[0] != '\0' ? " " : "", value);
    if (sb_error(&sb) != 0) {
        sb_free(&sb);
        return -EINVAL;
    }
    lines[(*count)++] = sb_take(&sb, NULL);
    return 0;
}

/*
 * Build the header lines to send: every signed header, Authorization, and
 * empty "accept:" and "content-type:" lines that stop libcurl from adding
 * its defaults. An empty value removes a header in libcurl.
 */
static int build_header_lines(char **lines, size_t *count,
                              const struct aws_client *client,
                              const struct signed_request *sr,
                              const struct sigv4_output *sig)
{
    const char *token = client_creds(client)->session_token;
    bool has_content_type = false;
    int rc = add_line(lines, count, "host", client->ep.host);

    if (rc == 0)
        rc = add_line(lines, count, "x-amz-date", sig->amz_date);
    if (rc == 0 && token != NULL && token[0] != '\0')
        rc = add_line(lines, count, "x-amz-security-token", token);
    for (size_t i = 0; rc == 0 && i < sr->header_count; i++) {
        const struct sigv4_header *h = &sr->headers[i];
        if (strcasecmp(h->name, "content-type") == 0)
            has_content_type = true;
        rc = add_line(lines, count, h->name, h->value);
    }
    if (rc == 0)
        rc = add_line(lines, count, "authorization", sig->authorization);
    if (rc == 0)
        rc = add_line(lines, count, "accept", "");
    if (rc == 0 && !has_content_type)
        rc = add_line(lines, count, "content-type", "");
    return rc;
}

/* Build the request URL: endpoint, wire path and query. Returns owned. */
static char *build_url(const struct aws_client *client,
                       const struct signed_request *sr)
{
    struct strbuf sb;

    sb_init(&sb, AWS_MAX_TARGET * 2);
    sb_puts(&sb, client->ep.url);
    sb_puts(&sb, sr->wire_path);
    if (sr->wire_query != NULL && sr->wire_query[0] != '\0')
        sb_printf(&sb, "?%s", sr->wire_query);
    if (sb_error(&sb) != 0) {
        sb_free(&sb);
        return NULL;
    }
    return sb_take(&sb, NULL);
}

/* Sign the request with the client's credentials and time. */
static int sign_request(const struct aws_client *client,
                        const struct signed_request *sr,
                        struct sigv4_output *sig)
{
    struct strbuf uri, query;
    int rc;

    sb_init(&uri, AWS_MAX_TARGET * 3);
    sb_init(&query, AWS_MAX_TARGET * 3);
    rc = sigv4_canonical_uri(&uri, sr->wire_path);
    if (rc == 0)
        rc = sigv4_canonical_query(&query, sr->wire_query);
    if (rc == 0) {
        struct sigv4_input in = {
            .method = "POST",
            .host = client->ep.host,
            .canonical_uri = uri.data,
            .canonical_query = query.data != NULL ? query.data : "",
            .headers = sr->headers,
            .header_count = sr->header_count,
            .payload = sr->body,
            .payload_len = sr->body_len,
            .region = client->ep.region,
            .service = client->ep.service,
            .unix_time =
                client->now_fn != NULL ? client->now_fn() : (int64_t)time(NULL),
        };
        rc = sigv4_sign(&in, client_creds(client), sig);
    }
    sb_free(&uri);
    sb_free(&query);
    return rc;
}

/*
 * Sign and start a POST. Returns the call (borrowed, see httpc_start) or
 * NULL when the request could not be built or started.
 */
static struct httpc_call *send_signed(struct aws_client *client,
                                      const struct signed_request *sr,
                                      aws_reply_cb cb, void *arg)
{
    char *lines[AWS_MAX_HEADER_LINES] = {0};
    size_t line_count = 0;
    struct sigv4_output sig;
    struct httpc_call *http_call = NULL;
    struct aws_call *call = NULL;
    char *url = NULL;

    if (cb == NULL || sign_request(client, sr, &sig) != 0 ||
        build_header_lines(lines, &line_count, client, sr, &sig) != 0)
        goto cleanup;
    url = build_url(client, sr);
    call = malloc(sizeof *call);
    if (url == NULL || call == NULL)
        goto cleanup;
    call->cb = cb;
    call->arg = arg;
    call->provider = client->provider;

    struct httpc_request req = {
        .method = "POST",
        .url = url,
        .headers = (const char *const *)lines,
        .header_count = line_count,
        .body = sr->body,
        .body_len = sr->body_len,
        .timeout_ms = sr->timeout_ms,
        .max_response = sr->max_response,
        .on_cancel = on_http_cancel,
    };
    http_call = httpc_start(client->http, &req, on_http_done, call);

cleanup:
    if (http_call == NULL)
        free(call);
    for (size_t i = 0; i < line_count; i++)
        free(lines[i]);
    free(url);
    return http_call;
}

struct httpc_call *aws_json_call(struct aws_client *client, const char *action,
                                 const char *body, size_t body_len,
                                 long timeout_ms, size_t max_response,
                                 aws_reply_cb cb, void *arg)
{
    char target[256];

    if (client->target_prefix == NULL || !is_target_name(action))
        return NULL;
    if (snprintf(target, sizeof target, "%s.%s", client->target_prefix,
                 action) >= (int)sizeof target)
        return NULL;

    struct sigv4_header headers[] = {
        {"content-type", "application/x-amz-json-1.1"},
        {"x-amz-target", target},
    };
    struct signed_request sr = {
        .wire_path = "/",
        .headers = headers,
        .header_count = 2,
        .body = body,
        .body_len = body_len,
        .timeout_ms = timeout_ms,
        .max_response = max_response,
    };
    return send_signed(client, &sr, cb, arg);
}

/*
 * Check that s is already percent-encoded: only unreserved characters,
 * sub-delimiters, ':', '@', '/', '?' (query only) and %XX escapes.
 */
static bool is_wire_encoded(const char *s, bool query)
{
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '%') {
            if (!isxdigit((unsigned char)s[1]) ||
                !isxdigit((unsigned char)s[2]))
                return false;
            s += 2;
            continue;
        }
        if (!isalnum(c) && strchr("-._~!$&'()*+,;=:@/", c) == NULL &&
            !(query && c == '?'))
            return false;
    }
    return true;
}

struct httpc_call *aws_signed_post(struct aws_client *client,
                                   const char *wire_path, const char *query,
                                   const char *content_type, const void *body,
                                   size_t body_len, long timeout_ms,
                                   aws_reply_cb cb, void *arg)
{
    struct sigv4_header headers[] = {{"content-type", content_type}};

    if (wire_path == NULL || wire_path[0] != '/' ||
        strlen(wire_path) > AWS_MAX_TARGET ||
        !is_wire_encoded(wire_path, false))
        return NULL;
    if (query != NULL &&
        (strlen(query) > AWS_MAX_TARGET || !is_wire_encoded(query, true)))
        return NULL;
    if (content_type != NULL && strpbrk(content_type, "\r\n") != NULL)
        return NULL;

    struct signed_request sr = {
        .wire_path = wire_path,
        .wire_query = query,
        .headers = headers,
        .header_count = content_type != NULL ? 1 : 0,
        .body = body,
        .body_len = body_len,
        .timeout_ms = timeout_ms,
        .max_response = AWS_SIGNED_POST_MAX_RESPONSE,
    };
    return send_signed(client, &sr, cb, arg);
}
