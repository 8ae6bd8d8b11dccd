/*
 * The credential chain and the provider that keeps credentials current.
 *
 * Refreshing. Credentials with an expiry time are fetched again 5 minutes
 * before it, or halfway to it when they live shorter than 10 minutes, on
 * the caller's loop through an HTTP client of the provider's own. A failed
 * fetch is logged as a warning and tried again after 1, 2, 4 ... at most
 * 60 seconds; the old credentials stay in use meanwhile, also after they
 * expired, because nothing better exists. A 401 or 403 reply
 * (aws_creds_provider_rejected) starts a fetch at once, or once
 * AWS_CREDS_REJECT_GAP_MS have passed since the last one.
 */
#include "common/awscreds_internal.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"

#define AWS_CREDS_LOG            "aws"
#define AWS_CREDS_EARLY_MS       (5 * 60 * 1000)
#define AWS_CREDS_RETRY_MIN_MS   1000
#define AWS_CREDS_RETRY_MAX_MS   60000
#define AWS_CREDS_REJECT_GAP_MS  5000
#define AWS_CREDS_CONTAINER_HOST "http://169.254.170.2"
#define AWS_CREDS_IMDS_DEFAULT   "http://169.254.169.254"

const char *awscreds_getenv(char *const *env, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; env != NULL && env[i] != NULL; i++) {
        if (strncmp(env[i], name, n) == 0 && env[i][n] == '=')
            return env[i] + n + 1;
    }
    return NULL;
}

/* Non-empty value of name, else NULL. */
static const char *env_value(const struct aws_creds_options *opts,
                             const char *name)
{
    const char *value = awscreds_getenv(opts->env, name);
    return value != NULL && value[0] != '\0' ? value : NULL;
}

void aws_creds_mask_key_id(const char *key_id, char *buf, size_t len)
{
    size_t n = key_id != NULL ? strlen(key_id) : 0;
    snprintf(buf, len, "****%s", n > 4 ? key_id + n - 4 : "");
}

void aws_creds_source_clear(struct aws_creds_source *src)
{
    if (src == NULL)
        return;
    aws_credentials_clear(&src->creds);
    free(src->url);
    memset(src, 0, sizeof *src);
}

/* Copy the three strings into creds. Returns 0 or -1. */
static int set_creds(struct aws_credentials *creds, const char *key_id,
                     const char *secret, const char *token)
{
    creds->access_key_id = strdup(key_id);
    creds->secret_access_key = strdup(secret);
    creds->session_token = token != NULL ? strdup(token) : NULL;
    if (creds->access_key_id == NULL || creds->secret_access_key == NULL ||
        (token != NULL && creds->session_token == NULL)) {
        aws_credentials_clear(creds);
        return -1;
    }
    return 0;
}

/* Source 1. Returns 1 when used, 0 when not set, -1 on error. */
static int from_env(const struct aws_creds_options *opts,
                    struct aws_creds_source *out, char *err, size_t err_len)
{
    const char *key_id = env_value(opts, "AWS_ACCESS_KEY_ID");
    const char *secret = env_value(opts, "AWS_SECRET_ACCESS_KEY");
    if (key_id == NULL && secret == NULL)
        return 0;
    if (key_id == NULL || secret == NULL) {
        snprintf(err, err_len,
                 "%s is set but %s is not: set both, or unset %s to take "
                 "the credentials from a profile or the container",
                 key_id != NULL ? "AWS_ACCESS_KEY_ID" : "AWS_SECRET_ACCESS_KEY",
                 key_id != NULL ? "AWS_SECRET_ACCESS_KEY" : "AWS_ACCESS_KEY_ID",
                 key_id != NULL ? "AWS_ACCESS_KEY_ID"
                                : "AWS_SECRET_ACCESS_KEY");
        return -1;
    }
    char masked[32];
    aws_creds_mask_key_id(key_id, masked, sizeof masked);
    out->kind = AWS_CREDS_ENV;
    snprintf(out->description, sizeof out->description,
             "environment variables AWS_ACCESS_KEY_ID (%s), "
             "AWS_SECRET_ACCESS_KEY%s",
             masked,
             env_value(opts, "AWS_SESSION_TOKEN") != NULL
                 ? " and AWS_SESSION_TOKEN"
                 : "");
    if (set_creds(&out->creds, key_id, secret,
                  env_value(opts, "AWS_SESSION_TOKEN")) != 0) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    return 1;
}

/* Path of a shared file: the variable, else ~/.aws/NAME. NULL when
 * neither is known. Returns an owned string. */
static char *shared_path(const struct aws_creds_options *opts,
                         const char *variable, const char *name)
{
    const char *path = env_value(opts, variable);
    if (path != NULL)
        return strdup(path);
    const char *home = env_value(opts, "HOME");
    if (home == NULL)
        return NULL;
    size_t size = strlen(home) + strlen(name) + sizeof "/.aws/";
    char *built = malloc(size);
    if (built != NULL)
        snprintf(built, size, "%s/.aws/%s", home, name);
    return built;
}

/* Both files of a profile, the credentials file first. */
struct profile_files {
    char *path[2];
    struct awscreds_profile data[2];
};

static void profile_files_clear(struct profile_files *pf)
{
    for (int i = 0; i < 2; i++) {
        free(pf->path[i]);
        awscreds_profile_clear(&pf->data[i]);
    }
}

/* The first file whose section sets field (an offset into the profile). */
static int pick(const struct profile_files *pf, size_t offset)
{
    for (int i = 0; i < 2; i++) {
        char *const *field =
            (char *const *)((const char *)&pf->data[i] + offset);
        if (*field != NULL)
            return i;
    }
    return -1;
}

#define PICK(pf, member) pick(pf, offsetof(struct awscreds_profile, member))

/* Check what the profile's sections hold and fill out. */
static int use_profile(const struct profile_files *pf, const char *name,
                       struct aws_creds_source *out, char *err, size_t err_len)
{
    int key = PICK(pf, key_id), secret = PICK(pf, secret);
    int token = PICK(pf, token);
    if (key >= 0 && secret < 0) {
        snprintf(err, err_len,
                 "profile \"%s\" in %s (line %u) has aws_access_key_id but "
                 "no aws_secret_access_key: add the secret key to that "
                 "section",
                 name, pf->path[key], pf->data[key].key_line);
        return -1;
    }
    if (key < 0 && secret >= 0) {
        snprintf(err, err_len,
                 "profile \"%s\" in %s (line %u) has aws_secret_access_key "
                 "but no aws_access_key_id: add the access key id to that "
                 "section",
                 name, pf->path[secret], pf->data[secret].secret_line);
        return -1;
    }
    if (key < 0)
        return 0;
    char masked[32];
    aws_creds_mask_key_id(pf->data[key].key_id, masked, sizeof masked);
    out->kind = AWS_CREDS_PROFILE;
    snprintf(out->description, sizeof out->description,
             "profile \"%s\" in %s (aws_access_key_id %s)", name, pf->path[key],
             masked);
    if (set_creds(&out->creds, pf->data[key].key_id, pf->data[secret].secret,
                  token >= 0 ? pf->data[token].token : NULL) != 0) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    return 1;
}

/* Source 2. Returns 1 when used, 0 when not there, -1 on error. */
static int from_profile(const struct aws_creds_options *opts,
                        struct aws_creds_source *out, char *err, size_t err_len)
{
    const char *chosen = env_value(opts, "AWS_PROFILE");
    const char *name = chosen != NULL ? chosen : "default";
    struct profile_files pf = {{NULL, NULL}, {{0}, {0}}};
    int rc = 0;

    pf.path[0] =
        shared_path(opts, "AWS_SHARED_CREDENTIALS_FILE", "credentials");
    pf.path[1] = shared_path(opts, "AWS_CONFIG_FILE", "config");
    for (int i = 0; rc == 0 && i < 2; i++) {
        if (pf.path[i] != NULL)
            rc = awscreds_read_profile(pf.path[i], name, i == 1, &pf.data[i],
                                       err, err_len);
    }
    if (rc != 0) {
        profile_files_clear(&pf);
        return -1;
    }
    if (!pf.data[0].found && !pf.data[1].found) {
        if (chosen != NULL) {
            snprintf(err, err_len,
                     "AWS_PROFILE is \"%s\", but neither %s nor %s has that "
                     "profile: add a [%s] section to the credentials file "
                     "(or [profile %s] to the config file), or set "
                     "AWS_PROFILE to a profile they have",
                     name, pf.path[0] ? pf.path[0] : "(no credentials file)",
                     pf.path[1] ? pf.path[1] : "(no config file)", name, name);
            rc = -1;
        }
        profile_files_clear(&pf);
        return rc;
    }
    rc = use_profile(&pf, name, out, err, err_len);
    if (rc == 0) {
        int other = pf.data[0].other != NULL ? 0 : 1;
        if (pf.data[other].other != NULL) {
            snprintf(err, err_len,
                     "profile \"%s\" in %s uses %s, which podium does not "
                     "support: give the profile aws_access_key_id and "
                     "aws_secret_access_key, or use another credential "
                     "source",
                     name, pf.path[other], pf.data[other].other);
            rc = -1;
        }
    }
    profile_files_clear(&pf);
    return rc;
}

/* Source 3. Returns 1 when used, 0 when not set, -1 on error. */
static int from_container(const struct aws_creds_options *opts,
                          struct aws_creds_source *out, char *err,
                          size_t err_len)
{
    const char *relative =
        env_value(opts, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
    const char *full = env_value(opts, "AWS_CONTAINER_CREDENTIALS_FULL_URI");
    const char *variable;
    char *url;

    if (relative != NULL) {
        variable = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI";
        if (relative[0] != '/' || strpbrk(relative, " \t\r\n") != NULL) {
            snprintf(err, err_len,
                     "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI \"%s\" is not a "
                     "path: it must start with '/' and contain no spaces",
                     relative);
            return -1;
        }
        size_t size = strlen(relative) + sizeof AWS_CREDS_CONTAINER_HOST;
        url = malloc(size);
        if (url != NULL)
            snprintf(url, size, "%s%s", AWS_CREDS_CONTAINER_HOST, relative);
    } else if (full != NULL) {
        variable = "AWS_CONTAINER_CREDENTIALS_FULL_URI";
        if (awscreds_check_full_uri(full, err, err_len) != 0)
            return -1;
        url = strdup(full);
    } else {
        return 0;
    }
    if (url == NULL) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    const char *token_file =
        env_value(opts, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
    out->kind = AWS_CREDS_CONTAINER;
    out->url = url;
    snprintf(out->description, sizeof out->description,
             "container credentials from %s (%s)%s%s%s", url, variable,
             token_file != NULL ? ", authorization token from " : "",
             token_file != NULL ? token_file : "",
             token_file == NULL &&
                     env_value(opts, "AWS_CONTAINER_AUTHORIZATION_TOKEN")
                 ? ", authorization token from "
                   "AWS_CONTAINER_AUTHORIZATION_TOKEN"
                 : "");
    return 1;
}

/* Source 4. Returns 1 when used, 0 when off, -1 on error. */
static int from_imds(const struct aws_creds_options *opts,
                     struct aws_creds_source *out, char *err, size_t err_len)
{
    const char *disabled = env_value(opts, "AWS_EC2_METADATA_DISABLED");
    if (!opts->imds || (disabled != NULL && strcasecmp(disabled, "true") == 0))
        return 0;
    const char *endpoint = env_value(opts, "AWS_EC2_METADATA_SERVICE_ENDPOINT");
    const char *variable = " (AWS_EC2_METADATA_SERVICE_ENDPOINT)";
    if (endpoint == NULL) {
        endpoint = AWS_CREDS_IMDS_DEFAULT;
        variable = "";
    }
    if ((strncmp(endpoint, "http://", 7) != 0 &&
         strncmp(endpoint, "https://", 8) != 0) ||
        strpbrk(endpoint, "@ \t\r\n?#") != NULL) {
        snprintf(err, err_len,
                 "AWS_EC2_METADATA_SERVICE_ENDPOINT is not an http:// or "
                 "https:// URL without user info or query: set it to "
                 "http://HOST[:PORT], or unset it for %s",
                 AWS_CREDS_IMDS_DEFAULT);
        return -1;
    }
    size_t n = strlen(endpoint);
    while (n > 0 && endpoint[n - 1] == '/')
        n--;
    out->url = strndup(endpoint, n);
    if (out->url == NULL) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    out->kind = AWS_CREDS_IMDS;
    snprintf(out->description, sizeof out->description,
             "instance metadata (IMDSv2) at %s%s", out->url, variable);
    return 1;
}

int aws_creds_find_source(const struct aws_creds_options *opts,
                          struct aws_creds_source *out, char *err,
                          size_t err_len)
{
    int (*const steps[])(const struct aws_creds_options *,
                         struct aws_creds_source *, char *, size_t) = {
        from_env, from_profile, from_container, from_imds};

    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        int rc = steps[i](opts, out, err, err_len);
        if (rc < 0)
            aws_creds_source_clear(out);
        if (rc != 0)
            return rc > 0 ? 0 : -1;
    }
    const char *profile = env_value(opts, "AWS_PROFILE");
    snprintf(err, err_len,
             "no AWS credentials found: set AWS_ACCESS_KEY_ID and "
             "AWS_SECRET_ACCESS_KEY, add the profile \"%s\" to "
             "~/.aws/credentials, set AWS_CONTAINER_CREDENTIALS_FULL_URI, "
             "or on an EC2 instance set aws.imds = on%s",
             profile != NULL ? profile : "default",
             opts->imds ? " (it is on, but AWS_EC2_METADATA_DISABLED is true)"
                        : "");
    return -1;
}

/* ---- the provider ----------------------------------------------------- */

struct aws_creds_provider {
    uv_loop_t *loop; /* NULL: never refreshes */
    struct aws_creds_options opts;
    struct aws_creds_source src;
    struct aws_credentials current;
    int64_t expiry_ms;
    int64_t last_fetch_ms; /* when the last fetch started */
    struct httpc *http;    /* refreshable sources with a loop */
    uv_timer_t timer;
    struct awscreds_fetch *fetch; /* in flight */
    unsigned failures;
    int open_handles;
    bool closing;
    void (*closed_cb)(void *arg);
    void *closed_arg;
};

static bool refreshable(const struct aws_creds_provider *p)
{
    return p->src.kind == AWS_CREDS_CONTAINER || p->src.kind == AWS_CREDS_IMDS;
}

const struct aws_credentials *
aws_creds_provider_current(struct aws_creds_provider *p)
{
    return &p->current;
}

const struct aws_creds_source *
aws_creds_provider_source(const struct aws_creds_provider *p)
{
    return &p->src;
}

int64_t aws_creds_provider_expiry_ms(const struct aws_creds_provider *p)
{
    return p->expiry_ms;
}

/* Format ms since the epoch as UTC ISO 8601. */
static void format_time(int64_t ms, char *buf, size_t len)
{
    time_t seconds = (time_t)(ms / 1000);
    struct tm tm;
    if (gmtime_r(&seconds, &tm) == NULL ||
        strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(buf, len, "?");
}

/* Delay until the next refresh of credentials that expire at expiry_ms. */
static int64_t refresh_delay_ms(int64_t now_ms, int64_t expiry_ms)
{
    int64_t left = expiry_ms - now_ms;
    int64_t delay = left - AWS_CREDS_EARLY_MS;
    if (delay < left / 2)
        delay = left / 2;
    return delay < AWS_CREDS_RETRY_MIN_MS ? AWS_CREDS_RETRY_MIN_MS : delay;
}

static void start_refresh(struct aws_creds_provider *p);

static void on_timer(uv_timer_t *timer)
{
    start_refresh(timer->data);
}

static void schedule(struct aws_creds_provider *p, int64_t delay_ms)
{
    if (p->loop == NULL || p->closing)
        return;
    uv_timer_start(&p->timer, on_timer, (uint64_t)delay_ms, 0);
}

static void take_creds(struct aws_creds_provider *p,
                       struct aws_credentials *creds, int64_t expiry_ms)
{
    aws_credentials_clear(&p->current);
    p->current = *creds;
    memset(creds, 0, sizeof *creds);
    p->expiry_ms = expiry_ms;
}

static void on_refreshed(void *arg, struct aws_credentials *creds,
                         int64_t expiry_ms, const char *err)
{
    struct aws_creds_provider *p = arg;
    int64_t now = log_now_ms();
    char when[32], masked[32];

    p->fetch = NULL;
    if (err == NULL) {
        p->failures = 0;
        take_creds(p, creds, expiry_ms);
        aws_creds_mask_key_id(p->current.access_key_id, masked, sizeof masked);
        format_time(expiry_ms, when, sizeof when);
        log_info(AWS_CREDS_LOG, NULL,
                 "refreshed the credentials from %s: access key id %s, "
                 "expiring at %s",
                 p->src.description, masked,
                 expiry_ms > 0 ? when : "(no expiry)");
        if (expiry_ms > 0)
            schedule(p, refresh_delay_ms(now, expiry_ms));
        return;
    }
    p->failures++;
    int64_t delay = AWS_CREDS_RETRY_MIN_MS;
    for (unsigned i = 1; i < p->failures && delay < AWS_CREDS_RETRY_MAX_MS; i++)
        delay *= 2;
    if (delay > AWS_CREDS_RETRY_MAX_MS)
        delay = AWS_CREDS_RETRY_MAX_MS;
    format_time(p->expiry_ms, when, sizeof when);
    if (p->expiry_ms > 0 && p->expiry_ms <= now)
        log_error(AWS_CREDS_LOG, NULL,
                  "refreshing the credentials failed: %s; the current ones "
                  "expired at %s, so requests fail until a fetch succeeds; "
                  "retrying in %" PRId64 " s",
                  err, when, delay / 1000);
    else
        log_warn(AWS_CREDS_LOG, NULL,
                 "refreshing the credentials failed: %s; keeping the current "
                 "ones, which expire at %s; retrying in %" PRId64 " s",
                 err, p->expiry_ms > 0 ? when : "(no expiry)", delay / 1000);
    schedule(p, delay);
}

static void start_refresh(struct aws_creds_provider *p)
{
    if (p->fetch != NULL || p->closing || p->http == NULL)
        return;
    uv_timer_stop(&p->timer);
    p->last_fetch_ms = log_now_ms();
    log_debug(AWS_CREDS_LOG, NULL, "fetching credentials from %s",
              p->src.description);
    /* A fetch that cannot start has run on_refreshed already. */
    p->fetch =
        awscreds_fetch_start(p->http, &p->src, p->opts.env, on_refreshed, p);
}

void aws_creds_provider_rejected(struct aws_creds_provider *p)
{
    if (p == NULL || !refreshable(p) || p->fetch != NULL || p->closing ||
        p->http == NULL)
        return;
    int64_t since = log_now_ms() - p->last_fetch_ms;
    uint64_t delay = since >= AWS_CREDS_REJECT_GAP_MS
                         ? 0
                         : (uint64_t)(AWS_CREDS_REJECT_GAP_MS - since);
    /* Every rejected request lands here; a fetch already due as soon
     * needs no second line. */
    if (uv_is_active((uv_handle_t *)&p->timer) &&
        uv_timer_get_due_in(&p->timer) <= delay)
        return;
    log_info(AWS_CREDS_LOG, NULL,
             "a request was refused with 401 or 403; fetching the "
             "credentials from %s again%s",
             p->src.description, delay > 0 ? " in a few seconds" : "");
    if (delay == 0)
        start_refresh(p);
    else
        schedule(p, (int64_t)delay);
}

/* State of the first fetch, on a private loop. */
struct first_fetch {
    bool done;
    struct aws_credentials creds;
    int64_t expiry_ms;
    char err[512];
};

static void on_first(void *arg, struct aws_credentials *creds,
                     int64_t expiry_ms, const char *err)
{
    struct first_fetch *ff = arg;
    ff->done = true;
    if (err != NULL) {
        snprintf(ff->err, sizeof ff->err, "%s", err);
        return;
    }
    ff->creds = *creds;
    memset(creds, 0, sizeof *creds);
    ff->expiry_ms = expiry_ms;
}

static void on_private_closed(void *arg)
{
    *(bool *)arg = true;
}

/* Fetch on a private loop and wait. Returns 0, or -1 with err. */
static int fetch_now(struct aws_creds_provider *p, char *err, size_t err_len)
{
    uv_loop_t loop;
    struct httpc *http;
    struct first_fetch ff = {0};
    bool closed = false;

    if (uv_loop_init(&loop) != 0 || httpc_new(&loop, &http) != 0) {
        snprintf(err, err_len, "could not set up an HTTP client");
        return -1;
    }
    p->last_fetch_ms = log_now_ms();
    awscreds_fetch_start(http, &p->src, p->opts.env, on_first, &ff);
    while (!ff.done)
        uv_run(&loop, UV_RUN_ONCE);
    httpc_close(http, on_private_closed, &closed);
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    if (ff.err[0] != '\0') {
        snprintf(err, err_len, "%s", ff.err);
        return -1;
    }
    take_creds(p, &ff.creds, ff.expiry_ms);
    return 0;
}

int aws_creds_provider_new(uv_loop_t *loop,
                           const struct aws_creds_options *opts,
                           struct aws_creds_provider **out, char *err,
                           size_t err_len)
{
    struct aws_creds_provider *p = calloc(1, sizeof *p);
    *out = NULL;
    if (p == NULL) {
        snprintf(err, err_len, "out of memory");
        return -ENOMEM;
    }
    p->opts = *opts;
    if (aws_creds_find_source(opts, &p->src, err, err_len) != 0) {
        free(p);
        return -EINVAL;
    }
    if (!refreshable(p)) {
        p->current = p->src.creds;
        memset(&p->src.creds, 0, sizeof p->src.creds);
    } else if (fetch_now(p, err, err_len) != 0) {
        aws_creds_source_clear(&p->src);
        free(p);
        return -EIO;
    }
    p->loop = loop;
    if (loop != NULL) {
        uv_timer_init(loop, &p->timer);
        /* A refresh to come never keeps a loop alive by itself. */
        uv_unref((uv_handle_t *)&p->timer);
        p->timer.data = p;
        p->open_handles = 1;
        if (refreshable(p)) {
            if (httpc_new(loop, &p->http) != 0) {
                snprintf(err, err_len, "could not set up an HTTP client");
                aws_creds_provider_close(p, NULL, NULL);
                return -ENOMEM;
            }
            p->open_handles++;
            if (p->expiry_ms > 0)
                schedule(p, refresh_delay_ms(log_now_ms(), p->expiry_ms));
        }
    }
    char masked[32];
    aws_creds_mask_key_id(p->current.access_key_id, masked, sizeof masked);
    log_info(AWS_CREDS_LOG, NULL, "AWS credentials from %s: access key id %s",
             p->src.description, masked);
    *out = p;
    return 0;
}

static void free_provider(struct aws_creds_provider *p)
{
    void (*cb)(void *) = p->closed_cb;
    void *arg = p->closed_arg;
    aws_credentials_clear(&p->current);
    aws_creds_source_clear(&p->src);
    free(p);
    if (cb != NULL)
        cb(arg);
}

static void on_part_closed(struct aws_creds_provider *p)
{
    if (--p->open_handles == 0)
        free_provider(p);
}

static void on_timer_closed(uv_handle_t *handle)
{
    on_part_closed(handle->data);
}

static void on_http_closed(void *arg)
{
    on_part_closed(arg);
}

void aws_creds_provider_close(struct aws_creds_provider *p,
                              void (*closed_cb)(void *arg), void *arg)
{
    if (p == NULL) {
        if (closed_cb != NULL)
            closed_cb(arg);
        return;
    }
    p->closing = true;
    p->closed_cb = closed_cb;
    p->closed_arg = arg;
    if (p->fetch != NULL) {
        awscreds_fetch_cancel(p->fetch);
        p->fetch = NULL;
    }
    if (p->loop == NULL) {
        free_provider(p);
        return;
    }
    uv_close((uv_handle_t *)&p->timer, on_timer_closed);
    if (p->http != NULL) {
        httpc_close(p->http, on_http_closed, p);
        p->http = NULL;
    }
}
