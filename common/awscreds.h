/*
 * AWS credentials from the sources that the AWS SDKs try, in their order:
 *   1. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN;
 *   2. the profile AWS_PROFILE ("default" when unset) in the shared
 *      credentials file (AWS_SHARED_CREDENTIALS_FILE, else
 *      ~/.aws/credentials) and the config file (AWS_CONFIG_FILE, else
 *      ~/.aws/config);
 *   3. container credentials: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI
 *      against http://169.254.170.2, else
 *      AWS_CONTAINER_CREDENTIALS_FULL_URI, with the Authorization header
 *      from AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE (read on every fetch) or
 *      AWS_CONTAINER_AUTHORIZATION_TOKEN;
 *   4. the instance metadata service (IMDSv2), only when the caller enables
 *      it, at AWS_EC2_METADATA_SERVICE_ENDPOINT or http://169.254.169.254.
 *
 * A provider keeps the current credentials. Those of sources 3 and 4 carry
 * an expiry time, and the provider fetches new ones before it on the libuv
 * loop, keeping the old ones until then. Secret keys and session tokens
 * never appear in error messages or log lines.
 */
#ifndef PODIUM_COMMON_AWSCREDS_H
#define PODIUM_COMMON_AWSCREDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common/sigv4.h"

enum aws_creds_kind {
    AWS_CREDS_ENV,
    AWS_CREDS_PROFILE,
    AWS_CREDS_CONTAINER,
    AWS_CREDS_IMDS
};

struct aws_creds_options {
    /* NULL-terminated "NAME=value" strings, usually environ. HOME and
     * every AWS_* variable above are read from here. */
    char *const *env;
    /* Whether the instance metadata service may be asked (aws.imds). */
    bool imds;
};

/* The source of the credentials, found without any network request. */
struct aws_creds_source {
    enum aws_creds_kind kind;
    /* What and where, without secrets, for messages and check-config:
     * "profile prod in /root/.aws/credentials". */
    char description[640];
    /* AWS_CREDS_ENV and AWS_CREDS_PROFILE: the credentials (owned). */
    struct aws_credentials creds;
    /* AWS_CREDS_CONTAINER: the URL; AWS_CREDS_IMDS: the endpoint (owned). */
    char *url;
};

/*
 * Find the first source that applies. Returns 0, or -1 with a message in
 * err that names what was wrong, with which value and what to do: no
 * source at all, a profile that does not exist or lacks its secret key, a
 * container URL that is not allowed. Reads files but sends no request.
 */
int aws_creds_find_source(const struct aws_creds_options *opts,
                          struct aws_creds_source *out, char *err,
                          size_t err_len);
void aws_creds_source_clear(struct aws_creds_source *src);

/* The access key id with all but its last 4 characters replaced by '*'
 * ("****MPLE"), for messages. */
void aws_creds_mask_key_id(const char *key_id, char *buf, size_t len);

struct aws_creds_provider;

/*
 * Find the source and get the first credentials. For container and
 * instance metadata credentials this sends the requests and waits for the
 * replies (on a private loop, for at most a few seconds), so call it at
 * start-up, before loop runs. With a loop, the provider refreshes expiring
 * credentials on it; with loop NULL it never refreshes. Returns 0, or -1
 * with a message in err.
 */
int aws_creds_provider_new(uv_loop_t *loop,
                           const struct aws_creds_options *opts,
                           struct aws_creds_provider **out, char *err,
                           size_t err_len);

/* The current credentials, borrowed until the loop runs again. */
const struct aws_credentials *
aws_creds_provider_current(struct aws_creds_provider *p);

/* The source, for messages. */
const struct aws_creds_source *
aws_creds_provider_source(const struct aws_creds_provider *p);

/* Expiry of the current credentials in ms since the epoch, 0 for none. */
int64_t aws_creds_provider_expiry_ms(const struct aws_creds_provider *p);

/*
 * A service returned 401 or 403 for a request signed with the current
 * credentials: they may have been rotated. Sources that can be fetched
 * again are fetched soon, at most once every few seconds.
 */
void aws_creds_provider_rejected(struct aws_creds_provider *p);

/*
 * Stop refreshing, cancel a fetch in flight and free p once its handles
 * are closed; closed_cb (may be NULL) runs then, from the loop. A provider
 * without a loop is freed at once and closed_cb runs before this returns.
 */
void aws_creds_provider_close(struct aws_creds_provider *p,
                              void (*closed_cb)(void *arg), void *arg);

#endif
