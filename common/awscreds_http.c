/*
 * Fetching credentials over HTTP: the container endpoint (one GET with an
 * optional Authorization header) and the instance metadata service,
 * IMDSv2 (PUT /latest/api/token, then GET the role name and the role's
 * credentials with that token). Replies are JSON objects with
 * AccessKeyId, SecretAccessKey, Token and Expiration. Messages quote
 * neither the reply bodies nor the tokens, which may hold secrets.
 */
#include "common/awscreds_internal.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>

#include "common/strbuf.h"

#define FETCH_TIMEOUT_MS 5000
#define FETCH_MAX_REPLY  (64 * 1024)
#define IMDS_TOKEN_PATH  "/latest/api/token"
#define IMDS_ROLE_PATH   "/latest/meta-data/iam/security-credentials/"
#define IMDS_TOKEN_TTL   "x-aws-ec2-metadata-token-ttl-seconds: 21600"
#define MAX_TOKEN_FILE   16384

/* Hosts that may serve container credentials over plain http. */
static const char *const plain_hosts[] = {
    "localhost",      "169.254.170.2", "169.254.170.23",
    "[fd00:ec2::23]", "[::1]",         NULL,
};

/* True for a dotted IPv4 literal in 127.0.0.0/8. */
static bool is_loopback_v4(const char *host, size_t n)
{
    unsigned parts[4];
    char tail;
    char copy[64];
    if (n == 0 || n >= sizeof copy)
        return false;
    memcpy(copy, host, n);
    copy[n] = '\0';
    if (sscanf(copy, "%3u.%3u.%3u.%3u%c", &parts[0], &parts[1], &parts[2],
               &parts[3], &tail) != 4)
        return false;
    for (int i = 0; i < 4; i++) {
        if (parts[i] > 255)
            return false;
    }
    return parts[0] == 127;
}

int awscreds_check_full_uri(const char *uri, char *err, size_t err_len)
{
    const char *authority;
    bool https = false;

    if (strncasecmp(uri, "https://", 8) == 0) {
        https = true;
        authority = uri + 8;
    } else if (strncasecmp(uri, "http://", 7) == 0) {
        authority = uri + 7;
    } else {
        snprintf(err, err_len,
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI is not an http:// or "
                 "https:// URL: set it to the credentials URL of the "
                 "container agent, such as http://127.0.0.1:PORT/PATH");
        return -1;
    }
    size_t n = strcspn(authority, "/?#");
    if (memchr(authority, '@', n) != NULL || strpbrk(uri, " \t\r\n") != NULL) {
        snprintf(err, err_len,
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI (not shown) has user "
                 "info or spaces: remove them");
        return -1;
    }
    /* The host without the port. */
    size_t host_len = n;
    if (authority[0] == '[') {
        const char *close = memchr(authority, ']', n);
        host_len = close != NULL ? (size_t)(close - authority) + 1 : n;
    } else {
        const char *colon = memchr(authority, ':', n);
        if (colon != NULL)
            host_len = (size_t)(colon - authority);
    }
    if (host_len == 0) {
        snprintf(err, err_len,
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI \"%s\" has no host", uri);
        return -1;
    }
    if (https || is_loopback_v4(authority, host_len))
        return 0;
    for (size_t i = 0; plain_hosts[i] != NULL; i++) {
        if (strlen(plain_hosts[i]) == host_len &&
            strncasecmp(plain_hosts[i], authority, host_len) == 0)
            return 0;
    }
    snprintf(err, err_len,
             "AWS_CONTAINER_CREDENTIALS_FULL_URI \"%s\" uses http:// with "
             "host %.*s, which is not a loopback address: use https://, or "
             "http:// with 127.0.0.1, [::1] or localhost (plain http is "
             "allowed only for those and the container agents' addresses)",
             uri, (int)host_len, authority);
    return -1;
}

/* Read "NN" digits from *p into *out. */
static bool digits(const char **p, int count, int *out)
{
    int value = 0;
    for (int i = 0; i < count; i++) {
        if (!isdigit((unsigned char)(*p)[i]))
            return false;
        value = value * 10 + ((*p)[i] - '0');
    }
    *p += count;
    *out = value;
    return true;
}

int awscreds_parse_time(const char *text, int64_t *ms)
{
    struct tm tm = {0};
    int year, mon, day, hour, min, sec, oh = 0, om = 0;
    const char *p = text;
    if (!digits(&p, 4, &year) || *p++ != '-' || !digits(&p, 2, &mon) ||
        *p++ != '-' || !digits(&p, 2, &day) || (*p != 'T' && *p != 't'))
        return -1;
    p++;
    if (!digits(&p, 2, &hour) || *p++ != ':' || !digits(&p, 2, &min) ||
        *p++ != ':' || !digits(&p, 2, &sec))
        return -1;
    int millis = 0;
    if (*p == '.') {
        p++;
        int scale = 100;
        if (!isdigit((unsigned char)*p))
            return -1;
        for (; isdigit((unsigned char)*p); p++) {
            millis += (*p - '0') * scale;
            scale /= 10;
        }
    }
    int sign = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        sign = *p == '+' ? 1 : -1;
        p++;
        if (!digits(&p, 2, &oh) || *p++ != ':' || !digits(&p, 2, &om))
            return -1;
    } else {
        return -1;
    }
    if (*p != '\0' || mon < 1 || mon > 12 || day < 1 || day > 31 || hour > 23 ||
        min > 59 || sec > 60 || year < 1970)
        return -1;
    tm.tm_year = year - 1900;
    tm.tm_mon = mon - 1;
    tm.tm_mday = day;
    tm.tm_hour = hour;
    tm.tm_min = min;
    tm.tm_sec = sec;
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return -1;
    *ms = ((int64_t)t - sign * (oh * 3600 + om * 60)) * 1000 + millis;
    return 0;
}

/* String member of object, NULL when absent or not a string. */
static const char *member(json_t *object, const char *key)
{
    return json_string_value(json_object_get(object, key));
}

int awscreds_parse_reply(const char *body, size_t len,
                         struct aws_credentials *creds, int64_t *expiry_ms,
                         char *err, size_t err_len)
{
    json_t *root = json_loadb(body, len, 0, NULL);
    int rc = -1;

    memset(creds, 0, sizeof *creds);
    *expiry_ms = 0;
    if (!json_is_object(root)) {
        snprintf(err, err_len, "the reply is not a JSON object");
        goto out;
    }
    const char *code = member(root, "Code");
    if (code != NULL && strcmp(code, "Success") != 0) {
        snprintf(err, err_len, "the reply has Code \"%.80s\", not Success",
                 code);
        goto out;
    }
    const char *key_id = member(root, "AccessKeyId");
    const char *secret = member(root, "SecretAccessKey");
    const char *token = member(root, "Token");
    const char *expiration = member(root, "Expiration");
    if (key_id == NULL || key_id[0] == '\0' || secret == NULL ||
        secret[0] == '\0') {
        snprintf(err, err_len, "the reply has no %s string",
                 key_id == NULL || key_id[0] == '\0' ? "AccessKeyId"
                                                     : "SecretAccessKey");
        goto out;
    }
    if (json_object_get(root, "Expiration") != NULL &&
        (expiration == NULL || awscreds_parse_time(expiration, expiry_ms))) {
        snprintf(err, err_len,
                 "the reply's Expiration \"%.64s\" is not an ISO 8601 time "
                 "such as 2026-01-01T00:00:00Z",
                 expiration != NULL ? expiration : "(not a string)");
        goto out;
    }
    creds->access_key_id = strdup(key_id);
    creds->secret_access_key = strdup(secret);
    creds->session_token =
        token != NULL && token[0] != '\0' ? strdup(token) : NULL;
    if (creds->access_key_id == NULL || creds->secret_access_key == NULL) {
        aws_credentials_clear(creds);
        snprintf(err, err_len, "out of memory");
        goto out;
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

/* ---- the fetch state machine ------------------------------------------ */

enum fetch_step {
    STEP_CONTAINER,
    STEP_IMDS_TOKEN,
    STEP_IMDS_ROLE,
    STEP_IMDS_CREDS
};

struct awscreds_fetch {
    struct httpc *http;
    struct httpc_call *call;
    enum fetch_step step;
    char *base;       /* container URL or IMDS endpoint */
    char *imds_token; /* secret: never logged */
    char *role;
    char *const *env;
    awscreds_fetch_cb cb;
    void *arg;
};

static void fetch_free(struct awscreds_fetch *f)
{
    free(f->base);
    free(f->imds_token);
    free(f->role);
    free(f);
}

static void fail(struct awscreds_fetch *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void fail(struct awscreds_fetch *f, const char *fmt, ...)
{
    char text[400], err[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    snprintf(err, sizeof err, "%s from %s: %s",
             f->step == STEP_CONTAINER ? "container credentials"
                                       : "instance metadata credentials",
             f->base, text);
    f->cb(f->arg, NULL, 0, err);
    fetch_free(f);
}

/*
 * The container authorization token: the file's contents, re-read now,
 * else the variable. Returns an owned "authorization: ..." line, "" for
 * none, or NULL with err set.
 */
static char *authorization_line(char *const *env, char *err, size_t err_len)
{
    const char *file =
        awscreds_getenv(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
    const char *value =
        awscreds_getenv(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN");
    char *token = NULL;

    if (file != NULL && file[0] != '\0') {
        FILE *in = fopen(file, "r");
        if (in == NULL) {
            snprintf(err, err_len,
                     "cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE %s: "
                     "%s; check that the file exists and is readable",
                     file, strerror(errno));
            return NULL;
        }
        token = calloc(1, MAX_TOKEN_FILE + 1);
        size_t n = token != NULL ? fread(token, 1, MAX_TOKEN_FILE + 1, in) : 0;
        fclose(in);
        if (token == NULL || n > MAX_TOKEN_FILE) {
            snprintf(err, err_len,
                     "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE %s is longer "
                     "than %d bytes",
                     file, MAX_TOKEN_FILE);
            free(token);
            return NULL;
        }
        while (n > 0 && isspace((unsigned char)token[n - 1]))
            token[--n] = '\0';
    } else if (value != NULL && value[0] != '\0') {
        token = strdup(value);
    } else {
        return strdup("");
    }
    if (token == NULL || strpbrk(token, "\r\n") != NULL || token[0] == '\0') {
        snprintf(err, err_len,
                 "the container authorization token from %s is empty or "
                 "has a line break: write the token alone on one line",
                 file != NULL && file[0] != '\0'
                     ? "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
                     : "AWS_CONTAINER_AUTHORIZATION_TOKEN");
        free(token);
        return NULL;
    }
    size_t size = strlen(token) + sizeof "authorization: ";
    char *line = malloc(size);
    if (line != NULL)
        snprintf(line, size, "authorization: %s", token);
    free(token);
    return line;
}

static void on_reply(void *arg, const struct httpc_response *resp);

static void on_cancelled(void *arg)
{
    fetch_free(arg);
}

/* Start the request of the current step. Returns 0, or -1 after fail(). */
static int send_step(struct awscreds_fetch *f)
{
    char url[2048], err[400];
    const char *headers[2];
    size_t header_count = 0;
    char *owned = NULL;
    const char *method = "GET";

    switch (f->step) {
    case STEP_CONTAINER:
        snprintf(url, sizeof url, "%s", f->base);
        owned = authorization_line(f->env, err, sizeof err);
        if (owned == NULL) {
            fail(f, "%s", err);
            return -1;
        }
        if (owned[0] != '\0')
            headers[header_count++] = owned;
        break;
    case STEP_IMDS_TOKEN:
        snprintf(url, sizeof url, "%s%s", f->base, IMDS_TOKEN_PATH);
        headers[header_count++] = IMDS_TOKEN_TTL;
        method = "PUT";
        break;
    case STEP_IMDS_ROLE:
    case STEP_IMDS_CREDS: {
        size_t size = strlen(f->imds_token) + 32;
        owned = malloc(size);
        if (owned != NULL)
            snprintf(owned, size, "x-aws-ec2-metadata-token: %s",
                     f->imds_token);
        headers[header_count++] = owned;
        snprintf(url, sizeof url, "%s%s%s", f->base, IMDS_ROLE_PATH,
                 f->step == STEP_IMDS_CREDS ? f->role : "");
        break;
    }
    }
    headers[header_count++] = "accept: application/json";
    struct httpc_request req = {
        .method = method,
        .url = url,
        .headers = headers,
        .header_count = header_count,
        .timeout_ms = FETCH_TIMEOUT_MS,
        .max_response = FETCH_MAX_REPLY,
        .on_cancel = on_cancelled,
    };
    f->call = owned == NULL && f->step != STEP_IMDS_TOKEN
                  ? NULL
                  : httpc_start(f->http, &req, on_reply, f);
    free(owned);
    if (f->call == NULL) {
        fail(f, "the request could not be started");
        return -1;
    }
    return 0;
}

static const char *step_name(enum fetch_step step)
{
    switch (step) {
    case STEP_CONTAINER:
        return "GET";
    case STEP_IMDS_TOKEN:
        return "PUT " IMDS_TOKEN_PATH;
    case STEP_IMDS_ROLE:
        return "GET " IMDS_ROLE_PATH;
    case STEP_IMDS_CREDS:
        return "GET " IMDS_ROLE_PATH "ROLE";
    }
    return "?";
}

/* Take the IMDS token or role name from a reply body. Returns 0 or -1. */
static int take_line(char **field, const char *body)
{
    size_t n = strcspn(body, "\r\n");
    while (n > 0 && isspace((unsigned char)body[n - 1]))
        n--;
    if (n == 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (!isgraph((unsigned char)body[i]) || body[i] == '/')
            return -1;
    }
    *field = strndup(body, n);
    return *field != NULL ? 0 : -1;
}

static void on_reply(void *arg, const struct httpc_response *resp)
{
    struct awscreds_fetch *f = arg;
    f->call = NULL;

    if (resp->error != HTTPC_OK) {
        fail(f, "%s failed: %s; check that the endpoint is reachable",
             step_name(f->step), resp->error_text);
        return;
    }
    if (resp->status != 200) {
        fail(f, "%s answered HTTP %ld%s", step_name(f->step), resp->status,
             resp->status == 401 || resp->status == 403
                 ? "; check the authorization token"
                 : "");
        return;
    }
    char err[300];
    switch (f->step) {
    case STEP_IMDS_TOKEN:
        if (take_line(&f->imds_token, resp->body) != 0) {
            fail(f, "the token reply is empty or not one word");
            return;
        }
        f->step = STEP_IMDS_ROLE;
        send_step(f);
        return;
    case STEP_IMDS_ROLE:
        if (take_line(&f->role, resp->body) != 0) {
            fail(f, "no IAM role is attached to the instance (the role "
                    "list is empty or not a name): attach an instance "
                    "profile");
            return;
        }
        f->step = STEP_IMDS_CREDS;
        send_step(f);
        return;
    case STEP_CONTAINER:
    case STEP_IMDS_CREDS: {
        struct aws_credentials creds;
        int64_t expiry_ms;
        if (awscreds_parse_reply(resp->body, resp->body_len, &creds, &expiry_ms,
                                 err, sizeof err) != 0) {
            fail(f,
                 "%s; the endpoint must answer {\"AccessKeyId\", "
                 "\"SecretAccessKey\", \"Token\", \"Expiration\"}",
                 err);
            return;
        }
        f->cb(f->arg, &creds, expiry_ms, NULL);
        aws_credentials_clear(&creds);
        fetch_free(f);
        return;
    }
    }
}

struct awscreds_fetch *awscreds_fetch_start(struct httpc *http,
                                            const struct aws_creds_source *src,
                                            char *const *env,
                                            awscreds_fetch_cb cb, void *arg)
{
    if (src->url == NULL ||
        (src->kind != AWS_CREDS_CONTAINER && src->kind != AWS_CREDS_IMDS))
        return NULL;
    struct awscreds_fetch *f = calloc(1, sizeof *f);
    if (f == NULL) {
        cb(arg, NULL, 0, "out of memory");
        return NULL;
    }
    f->http = http;
    f->env = env;
    f->cb = cb;
    f->arg = arg;
    f->base = strdup(src->url);
    f->step =
        src->kind == AWS_CREDS_CONTAINER ? STEP_CONTAINER : STEP_IMDS_TOKEN;
    if (f->base == NULL) {
        fetch_free(f);
        cb(arg, NULL, 0, "out of memory");
        return NULL;
    }
    /* When the request cannot start, send_step() has run cb already. */
    return send_step(f) == 0 ? f : NULL;
}

void awscreds_fetch_cancel(struct awscreds_fetch *f)
{
    if (f != NULL && f->call != NULL)
        httpc_cancel(f->call); /* on_cancelled frees f */
}
